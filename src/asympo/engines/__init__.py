"""Samplers behind one protocol: `torch` (any HF causal LM, the CPU default), `vllm` (GPU), `openai` (any
OpenAI-compatible server, text only). See `asympo.engines.base` for the protocol and the log-prob convention.
"""

from asympo.engines.base import ENGINES, Completion, Engine, SamplingParams, engine_class, make_engine
from asympo.engines.openai import OpenAIEngine
from asympo.engines.torch import TorchEngine
from asympo.engines.vllm import VLLMEngine  # imports vllm only when an engine is built

__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "OpenAIEngine",
    "SamplingParams",
    "TorchEngine",
    "VLLMEngine",
    "engine_class",
    "make_engine",
]
