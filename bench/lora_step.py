"""Learner step time and peak memory: full fine-tuning against LoRA, on one random Qwen3-shaped model.

    python bench/lora_step.py --hidden 256 --layers 4 --device cpu          # seconds on CPU
    python bench/lora_step.py --hidden 1024 --layers 28 --device cuda --response-tokens 1024

Builds the model from its config (no download), trains `--steps` learner steps on a synthetic batch
(`--prompts` x `--group` responses of `--response-tokens` tokens, half of them rewarded) and prints one
JSON line per setting: median step seconds after one warm-up step, trainable parameters, and the peak
CUDA memory on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def make_batch(vocab: int, prompts: int, group: int, prompt_tokens: int, response_tokens: int, seed: int):
    from asympo.runtime.records import Batch, RolloutGroup, Sample

    gen = torch.Generator().manual_seed(seed)
    groups = []
    for g in range(prompts):
        prompt = torch.randint(3, vocab, (prompt_tokens,), generator=gen).tolist()
        samples = [
            Sample(
                prompt,
                torch.randint(3, vocab, (response_tokens,), generator=gen).tolist(),
                "",
                float(i % 2),
                "stop",
                0,
            )
            for i in range(group)
        ]
        groups.append(RolloutGroup(g, f"p{g}", "", 0, 0, samples))
    return Batch(groups, 0)


def main() -> None:
    from transformers import AutoModelForCausalLM, Qwen3Config

    from asympo.learner import Learner, LearnerConfig
    from asympo.lora import LoraSettings, wrap_lora

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--response-tokens", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="weights of the model (LoRA: the frozen base)")
    args = ap.parse_args()

    cfg = Qwen3Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 128) * 2,
        num_key_value_heads=max(1, args.hidden // 128),
        head_dim=64,
        intermediate_size=3 * args.hidden,
        tie_word_embeddings=True,
    )
    batch = make_batch(args.vocab, args.prompts, args.group, args.prompt_tokens, args.response_tokens, 0)
    for mode in ("full", "lora"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, args.dtype))
        if mode == "lora":
            model = wrap_lora(model, LoraSettings(r=args.rank, alpha=2 * args.rank))
        learner = Learner(
            model, LearnerConfig(lr=1e-5, grad_split_every=0, log_entropy=False), pad_id=0, device=args.device
        )
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps + 1):
            t0 = time.perf_counter()
            learner.step(batch)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rec = {
            "mode": mode,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in learner.params),
            "step_s": round(statistics.median(times[1:]), 4),
        }
        if args.device.startswith("cuda"):
            rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        print(json.dumps(rec), flush=True)
        del learner, model


if __name__ == "__main__":
    main()
