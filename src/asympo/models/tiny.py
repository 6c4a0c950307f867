"""The embedded model: a tiny Qwen2, Qwen3 or Llama built from a config (no downloads), saved in HF format.

Being a stock HF architecture is the point: everything that works here (the torch engine, the learner's
log-probs, checkpoints, `from_pretrained`) works unchanged on a real model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ARCHS", "SIZES", "TinyModelConfig", "build_tiny_model", "count_parameters", "save_pretrained"]

ARCHS = ("llama", "qwen2", "qwen3")


@dataclass
class TinyModelConfig:
    """Shape of the embedded model. The defaults give about 0.8M parameters."""

    arch: str = "llama"
    """HF architecture: "llama", "qwen2" or "qwen3" (load a qwen directory's tokenizer with
    `asympo.models.load_tokenizer`, see its module docstring)."""
    hidden_size: int = 128
    """Width of the residual stream; divisible by num_heads."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention); divides num_heads."""
    intermediate_size: int = 256
    """Width of the MLP (SwiGLU)."""
    max_position_embeddings: int = 256
    """Longest sequence (prompt + response) the model is built for."""
    rope_theta: float = 10000.0
    """RoPE base."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the LM head (saves vocab x hidden parameters)."""
    init_seed: int = 0
    """Seed of the weight initialisation."""
    init_std: float = 0.02
    """Standard deviation of the initial weights (HF `initializer_range`). Tests use a large value so that
    an untrained model's outputs depend strongly on its input."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"TinyModelConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TinyModelConfig.{name} must be an int >= 1, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TinyModelConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("TinyModelConfig: the head dimension hidden_size/num_heads must be even (RoPE)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"TinyModelConfig.num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})"
            )
        if self.max_position_embeddings < 8:
            raise ValueError(
                f"TinyModelConfig.max_position_embeddings must be >= 8, got {self.max_position_embeddings}"
            )
        if not self.init_std > 0:
            raise ValueError(f"TinyModelConfig.init_std must be > 0, got {self.init_std}")
        if not self.rope_theta > 0:
            raise ValueError(f"TinyModelConfig.rope_theta must be > 0, got {self.rope_theta}")

    def hf_config(self, vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> Any:
        """The transformers config object for this shape and a tokenizer's special ids."""
        from transformers import LlamaConfig, Qwen2Config, Qwen3Config

        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[self.arch]
        # Qwen3 takes an explicit head_dim (its real checkpoints decouple it from hidden/heads).
        extra = {"head_dim": self.hidden_size // self.num_heads} if self.arch == "qwen3" else {}
        return cls(
            **extra,
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.init_std,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )


SIZES: dict[str, dict] = {
    # The arithmetic demo's model (the defaults): about 0.6M parameters.
    "demo": {},
    # The reasoning task's model: about 1.6M parameters, with room for a ~130-character prompt and a
    # ~130-character worked solution. Sized so one RL study cell fits in about two minutes on 2 CPU cores.
    "reasoning": {
        "hidden_size": 192,
        "num_layers": 4,
        "num_heads": 6,
        "num_kv_heads": 2,
        "intermediate_size": 512,
        "max_position_embeddings": 320,
    },
}
"""Named shapes: `TinyModelConfig(**SIZES[name])`."""


def build_tiny_model(cfg: TinyModelConfig, tokenizer: Any) -> torch.nn.Module:
    """A freshly initialised `AutoModelForCausalLM` (float32, eval mode) sized for `tokenizer`."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    hf_cfg = cfg.hf_config(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    # Seed only the initialisation, leaving the caller's global RNG as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def save_pretrained(model: torch.nn.Module, tokenizer: Any, path: str | os.PathLike) -> Path:
    """Save model (safetensors) and tokenizer side by side, so `from_pretrained(path)` loads both."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
