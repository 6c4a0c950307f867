"""Trainable parameters and the learner's static memory for Qwen3 0.6B-8B, full fine-tuning vs LoRA.

Builds each model's shape from its config on the `meta` device (no weights, no download), wraps it with
the LoRA settings docs/models.md recommends, and counts parameters exactly. Memory is the static part
(weights, gradients, AdamW moments; activations, the KV cache and the rollout engine's copy come on top):

- full fine-tuning, `learner.precision=bf16-mixed`: fp32 weights + fp32 grads + two fp32 Adam moments
  = 16 bytes per parameter;
- LoRA: the frozen base in `model.dtype` (bf16, 2 bytes per parameter; it gets no updates, so it needs
  no fp32 master copy) + 16 bytes per adapter parameter.

    python bench/lora_memory.py            # prints a markdown table (docs/models.md quotes it)
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from asympo.lora import LoraSettings, wrap_lora

# Shapes of the released Qwen3 checkpoints (their config.json).
QWEN3 = {
    "Qwen3-0.6B": dict(
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        intermediate_size=3072,
        tie_word_embeddings=True,
    ),
    "Qwen3-1.7B": dict(
        hidden_size=2048,
        num_hidden_layers=28,
        num_attention_heads=16,
        intermediate_size=6144,
        tie_word_embeddings=True,
    ),
    "Qwen3-4B": dict(
        hidden_size=2560,
        num_hidden_layers=36,
        num_attention_heads=32,
        intermediate_size=9728,
        tie_word_embeddings=True,
    ),
    "Qwen3-8B": dict(
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        intermediate_size=12288,
        tie_word_embeddings=False,
    ),
}
RANK = {"Qwen3-0.6B": 16, "Qwen3-1.7B": 16, "Qwen3-4B": 32, "Qwen3-8B": 64}
GiB = 1024**3


def main() -> None:
    print("| model | params | full FT static (GiB) | LoRA r | adapter params | LoRA static (GiB) |")
    print("|---|---|---|---|---|---|")
    for name, shape in QWEN3.items():
        cfg = Qwen3Config(vocab_size=151936, num_key_value_heads=8, head_dim=128, **shape)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        total = sum(p.numel() for p in model.parameters())
        r = RANK[name]
        wrapped = wrap_lora(model, LoraSettings(r=r, alpha=2 * r))
        adapter = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        full_gib = 16 * total / GiB
        lora_gib = (2 * total + 16 * adapter) / GiB
        print(
            f"| {name} | {total / 1e9:.2f}B | {full_gib:.1f} | {r} | {adapter / 1e6:.1f}M | {lora_gib:.1f} |"
        )


if __name__ == "__main__":
    main()
