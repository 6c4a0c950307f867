"""Learner precision and memory: what bf16 weights lose at a small learning rate, and what memory costs.

    python bench/bench_precision.py [--device cuda] [--hidden-size 768 --layers 12] [--steps 20]
        [--groups 16 --group-size 8 --response-len 1024] [--max-tokens 16384]

Builds a random model of the embedded architecture (no download) and a synthetic batch of
groups × group-size responses of `--response-len` tokens with 0/1 rewards, then:

1. trains `--steps` learner steps at lr 1e-6 from the same weights in fp32, bf16-mixed (fp32 master weights,
   bf16 autocast) and bf16-pure, and prints each one's master-weight update norm relative to fp32 and the
   share of weights that changed at all;
2. (CUDA only) runs one bf16-mixed step with and without gradient checkpointing, with the token budget,
   and prints the peak GPU memory of each (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from make_random_model import scaled_config

from asympo.learner import Learner, LearnerConfig
from asympo.models.tiny import build_tiny_model, count_parameters
from asympo.models.tokenizer import build_char_tokenizer
from asympo.runtime.records import Batch, RolloutGroup, Sample


def make_model(args):
    cfg = scaled_config(args.hidden_size, args.layers, args.response_len + 64, seed=0)
    return build_tiny_model(cfg, build_char_tokenizer())


def make_batch(args, vocab: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    groups = []
    for k in range(args.groups):
        prompt = torch.randint(4, vocab, (32,), generator=g).tolist()
        samples = []
        for i in range(args.group_size):
            n = int(torch.randint(args.response_len // 2, args.response_len + 1, (1,), generator=g))
            resp = torch.randint(4, vocab, (n,), generator=g).tolist()
            samples.append(Sample(prompt, resp, "", float(i % 2), "stop", 0))
        groups.append(RolloutGroup(k, f"p{k}", "", 0, 0, samples))
    return Batch(groups, 0)


def updates(args, precision: str) -> tuple[float, float, list[torch.Tensor], float]:
    model = make_model(args)
    cfg = LearnerConfig(
        objective="asympo",
        lr=1e-6,
        precision=precision,
        grad_split_every=0,
        log_entropy=False,
        max_tokens_per_micro_batch=args.max_tokens,
    )
    learner = Learner(model, cfg, pad_id=0, device=args.device)
    start = [p.detach().float().clone() for p in learner.model.parameters()]
    t0 = time.monotonic()
    for step in range(args.steps):
        learner.step(make_batch(args, model.config.vocab_size, seed=step))
    wall = time.monotonic() - t0
    deltas = [p.detach().float() - s for p, s in zip(learner.model.parameters(), start)]
    norm = math.sqrt(sum(float(d.square().sum()) for d in deltas))
    share = sum(int((d != 0).sum()) for d in deltas) / sum(d.numel() for d in deltas)
    return norm, share, deltas, wall


def peak_memory(args, **overrides) -> float:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = make_model(args)
    cfg = LearnerConfig(objective="asympo", lr=1e-6, precision="bf16-mixed", grad_split_every=0, **overrides)
    learner = Learner(model, cfg, pad_id=0, device=args.device)
    learner.step(make_batch(args, model.config.vocab_size, seed=0))
    peak = torch.cuda.max_memory_allocated() / 2**30
    del learner, model
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--response-len", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=0, help="learner.max_tokens_per_micro_batch")
    args = parser.parse_args()
    print(f"model: {count_parameters(make_model(args)) / 1e6:.1f}M parameters, device {args.device}")
    ref_norm, ref_share, ref_deltas, wall = updates(args, "fp32")
    print(f"fp32        update norm {ref_norm:.3e}  changed {ref_share:6.1%}  ({wall:.1f}s)")
    for precision in ("bf16-mixed", "bf16-pure"):
        norm, share, deltas, wall = updates(args, precision)
        cos = sum(float((a * b).sum()) for a, b in zip(deltas, ref_deltas)) / max(1e-30, norm * ref_norm)
        print(
            f"{precision:11s} update norm {norm:.3e}  changed {share:6.1%}  "
            f"norm/fp32 {norm / ref_norm:.3f}  cosine to fp32 {cos:.3f}  ({wall:.1f}s)"
        )
    if torch.device(args.device).type == "cuda":
        plain = peak_memory(args)
        ckpt = peak_memory(args, gradient_checkpointing=True)
        both = peak_memory(
            args, gradient_checkpointing=True, max_tokens_per_micro_batch=args.max_tokens or 16384
        )
        print(
            f"peak GPU memory, one bf16-mixed step: {plain:.2f} GiB plain, {ckpt:.2f} GiB gradient "
            f"checkpointing, {both:.2f} GiB checkpointing + token budget"
        )


if __name__ == "__main__":
    main()
