"""Tiny HF models built inside the tests (no hub access)."""

from __future__ import annotations

import torch


def tiny_qwen2(vocab: int = 61, *, tie: bool = False, seed: int = 0, **config):
    """A 2-layer Qwen2 with hidden size 32, randomly initialised from `seed`; `config` sets further
    Qwen2Config fields (e.g. pad_token_id)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        **config,
    )
    return Qwen2ForCausalLM(cfg)
