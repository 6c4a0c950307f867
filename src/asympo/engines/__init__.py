"""Samplers behind one protocol: `torch` (any HF causal LM, the CPU default), `vllm` (GPU), `openai` (any
OpenAI-compatible server, text only). See `asympo.engines.base` for the protocol and the log-prob convention.

`asympo.engines.base.ENGINES` is the one registry of engine names. The engine classes are imported on first
use (`from asympo.engines import TorchEngine` still works), so validating a config or building an OpenAI
engine never imports transformers, and the vllm module is not loaded until it is asked for.
"""

import importlib
from typing import TYPE_CHECKING, Any

from asympo.engines.base import ENGINES, Completion, Engine, SamplingParams, engine_class, make_engine

if TYPE_CHECKING:
    from asympo.engines.openai import OpenAIEngine
    from asympo.engines.torch import TorchEngine
    from asympo.engines.vllm import VLLMEngine

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
_CLASSES = {spec.cls: spec.module for spec in ENGINES.values()}


def __getattr__(name: str) -> Any:
    if name not in _CLASSES:
        raise AttributeError(f"module 'asympo.engines' has no attribute {name!r}")
    return getattr(importlib.import_module(_CLASSES[name]), name)
