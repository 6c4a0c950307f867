"""Behavior-free learner step: what skipping the behavior log-prob pass saves.

    python bench/bench_learner_step.py [--quick] [--device auto] [--repeats 7]
    python bench/bench_learner_step.py --hidden-size 1024 --layers 16 --vocab 151936 --device cuda

Same model (a random Llama of the embedded architecture), same batch, three step variants timed in
turn (interleaved, median of `--repeats`):
- `asympo`: one optimiser step on the current log-probs only (what an asympo run pays);
- `grpo+recompute`: a no-grad forward of the same model over the same batch to get the behavior
  log-probs (what verl does by default: its `old_log_prob` pass), then the grpo step that uses them;
- `grpo (sampler logp)`: the grpo step alone, with the behavior log-probs given (as if the engine had
  returned them): separates the recompute pass from the cost of the objective itself.
Two workloads: short responses (the demo's shape) and long ones (512+ tokens). The ratio asympo /
grpo+recompute is the headline (target <= 0.8). The learner's gradient-split diagnostic (an extra
backward every `grad_split_every` steps) is off by default here, as it costs both sides alike.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import torch
from benchlib import emit, interleaved, median, print_machine, quick_default, random_model, resolve_device

from asympo.learner import Learner, LearnerConfig, collate
from asympo.logprobs import causal_lm_logprobs
from asympo.runtime.records import Batch, RolloutGroup, Sample


def make_batch(
    groups: int, group_size: int, prompt_len: int, response_len: int, vocab: int, seed: int
) -> Batch:
    """`groups` groups of random token sequences with mixed 0/1 rewards (every group has a signal)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g in range(groups):
        samples = []
        for i in range(group_size):
            ids = torch.randint(3, vocab, (prompt_len + response_len,), generator=gen).tolist()
            samples.append(
                Sample(
                    prompt_ids=ids[:prompt_len],
                    response_ids=ids[prompt_len:],
                    text="",
                    reward=float(i % 2),
                    finish_reason="length",
                    policy_version=0,
                )
            )
        out.append(RolloutGroup(g, f"p{g}", "", 0, 0, samples))
    return Batch(out, learner_version=0)


def with_behavior_logp(batch: Batch, logp: torch.Tensor) -> Batch:
    """A copy of `batch` whose samples carry `logp` [B, L-1] (collate's alignment) as behavior log-probs."""
    groups, row = [], 0
    for g in batch.groups:
        samples = []
        for s in g.samples:
            P, R = len(s.prompt_ids), len(s.response_ids)
            blp = logp[row, P - 1 : P - 1 + R].tolist()
            samples.append(dataclasses.replace(s, behavior_logp=blp))
            row += 1
        groups.append(dataclasses.replace(g, samples=samples))
    return Batch(groups, batch.learner_version)


def learner_config(objective: str, args) -> LearnerConfig:
    return LearnerConfig(
        objective=objective,
        lr=1e-5,
        grad_split_every=args.grad_split_every,
        micro_batch_size=args.micro_batch_size,
    )


def run_workload(name: str, args, device: str, prompt_len: int, response_len: int, groups: int) -> dict:
    model = random_model(
        vocab=args.vocab,
        hidden_size=args.hidden_size,
        layers=args.layers,
        max_positions=prompt_len + response_len + 8,
        device=device,
        dtype=getattr(torch, args.dtype),
    )
    batch = make_batch(groups, args.group_size, prompt_len, response_len, args.vocab, seed=0)
    learners = {
        "asympo": Learner(copy.deepcopy(model), learner_config("asympo", args), pad_id=0, device=device),
        "grpo+recompute": Learner(
            copy.deepcopy(model), learner_config("grpo", args), pad_id=0, device=device
        ),
        "grpo (sampler logp)": Learner(model, learner_config("grpo", args), pad_id=0, device=device),
    }

    def recompute_logp(learner: Learner) -> torch.Tensor:
        """The behavior pass: a no-grad forward of the model being trained, before its step."""
        samples = [s for g in batch.groups for s in g.samples]
        ids, attn, _, _ = collate(samples, 0, device)
        mb = learner.cfg.micro_batch_size or len(samples)
        with torch.no_grad():
            parts = [
                causal_lm_logprobs(learner.model, ids[i : i + mb], attn[i : i + mb])[0]
                for i in range(0, len(samples), mb)
            ]
        return torch.cat(parts).cpu()  # [B, L-1]

    given = with_behavior_logp(batch, recompute_logp(learners["grpo (sampler logp)"]))

    def grpo_recompute():
        lrn = learners["grpo+recompute"]
        lrn.step(with_behavior_logp(batch, recompute_logp(lrn)))

    variants = {
        "asympo": lambda: learners["asympo"].step(batch),
        "grpo+recompute": grpo_recompute,
        "grpo (sampler logp)": lambda: learners["grpo (sampler logp)"].step(given),
    }
    interleaved(variants, 1, device)  # warm-up (allocator, optimiser state)
    times = interleaved(variants, args.repeats, device)
    med = {k: median(v) for k, v in times.items()}
    B = groups * args.group_size
    row = {
        "workload": name,
        "responses": B,
        "prompt_tokens": prompt_len,
        "response_tokens": response_len,
        **{f"s/{k}": v for k, v in med.items()},
        "asympo/grpo+recompute": med["asympo"] / med["grpo+recompute"],
        "asympo/grpo": med["asympo"] / med["grpo (sampler logp)"],
    }
    print(
        f"{name:<6} {B:>4} x {prompt_len:>3}+{response_len:<4} {med['asympo']:>9.3f} {med['grpo+recompute']:>15.3f}"
        f" {med['grpo (sampler logp)']:>12.3f} {row['asympo/grpo+recompute']:>15.2f}x {row['asympo/grpo']:>12.2f}x"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=quick_default(), help="smoke-test sizes")
    ap.add_argument("--device", default="auto", help="auto (cuda when visible) | cpu | cuda")
    ap.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16)")
    ap.add_argument("--hidden-size", type=int, default=None, help="default 256, 1024 on a GPU (quick: 64)")
    ap.add_argument("--layers", type=int, default=None, help="default 4 (quick: 2)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--long-tokens", type=int, default=None, help="response length of the long workload")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (median kept)")
    ap.add_argument("--micro-batch-size", type=int, default=0, help="learner micro-batch (0 = whole batch)")
    ap.add_argument("--grad-split-every", type=int, default=0, help="the learner's pos/neg gradient split")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    big = device != "cpu"
    args.hidden_size = args.hidden_size or (64 if args.quick else (1024 if big else 256))
    args.layers = args.layers or (2 if args.quick else 4)
    args.repeats = args.repeats or (3 if args.quick else 7)
    long_tokens = args.long_tokens or (512 if args.quick or not big else 1024)
    # (name, prompt tokens, response tokens, groups)
    workloads = [
        ("short", 16, 8, 2 if args.quick else 16),
        ("long", 64, long_tokens, 1 if args.quick else (8 if big else 2)),
    ]
    info = print_machine()
    print(
        f"model: random llama, hidden {args.hidden_size}, {args.layers} layers, vocab {args.vocab}, "
        f"{args.dtype}, device {device}; group size {args.group_size}; median of {args.repeats} interleaved rounds"
    )
    print(
        f"{'work':<6} {'batch (resp x P+R)':>18} {'asympo s':>9} {'grpo+recompute s':>15}"
        f" {'grpo s':>12} {'asympo/recompute':>16} {'asympo/grpo':>13}"
    )
    rows = [run_workload(n, args, device, p, r, g) for n, p, r, g in workloads]
    emit("learner_step", {"machine": info, "device": device, "quick": args.quick, "rows": rows})


if __name__ == "__main__":
    main()
