"""The embedded model: a character-level tokenizer and a tiny HF-architecture causal LM."""

from asympo.models.tiny import TinyModelConfig, build_tiny_model, count_parameters, save_pretrained
from asympo.models.tokenizer import build_char_tokenizer, load_tokenizer

__all__ = [
    "TinyModelConfig",
    "build_char_tokenizer",
    "build_tiny_model",
    "count_parameters",
    "load_tokenizer",
    "save_pretrained",
]
