"""asympo: asynchronous RL post-training for language models without behavior-policy information."""

__version__ = "0.1.0"
