"""Rollout throughput with 1 and 2 rollout workers (local processes and Ray): where this machine's cores stop.

    python bench/bench_scaling.py [--quick] [--workers 1,2] [--backends local,ray] [--max-new-tokens 64]

The rollout side alone, as `asympo train` builds it (`asympo.train.make_backend`, mode=async): the
learner is replaced by an instant one that takes each batch and publishes a "new" version (the same
weights) at once, so the number is what the rollout side can deliver, the ceiling of any learner. Model:
the embedded architecture with random weights (responses run to `--max-new-tokens`), 1 torch thread per
worker. Printed: responses/s and response tokens/s per configuration (median over batches after the
first), and the speed-up of 2 workers over 1 for each backend. With N cores, workers beyond N (and the
learner's own process) compete for them: the speed-up from 1 to 2 workers tells how much of a second
core the machine actually gives.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench_async import random_model_dir
from benchlib import emit, print_machine, quick_default

from asympo.config import TrainConfig, apply_overrides
from asympo.engines.base import SamplingParams
from asympo.presets import preset_dict
from asympo.runtime.backend import WorkerSpec
from asympo.train import load_task, make_backend, make_scheduler


def throughput(backend_name: str, workers: int, model_dir: str, args) -> dict:
    from transformers import AutoModelForCausalLM

    sets = [
        "mode=async",
        f"backend={backend_name}",
        f"model.path={json.dumps(model_dir)}",
        f"rollout.num_workers={workers}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.max_prompts_per_call={args.prompts}",
        "rollout.threads=1",
    ]
    cfg = TrainConfig.from_dict(apply_overrides(preset_dict("demo"), sets))
    problems = load_task(cfg.task, cfg.task.train_split)
    scheduler = make_scheduler(cfg, problems)
    spec = WorkerSpec(
        engine="torch",
        model_path=model_dir,
        sampling=SamplingParams(temperature=1.0, max_new_tokens=cfg.rollout.max_new_tokens),
        reward=cfg.task.reward_name,
        engine_kwargs={"device": "cpu"},
        threads=1,
    )
    state = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    backend = make_backend(cfg, spec, scheduler)
    rates, tok_rates = [], []
    try:
        backend.start(state, 0)
        version = 0
        last = None
        for _ in range(args.batches + 1):
            batch = backend.next_batch(version, cfg.rollout.prompts_per_step)
            now = time.monotonic()
            if last is not None:  # the first batch pays the workers' start-up
                n = sum(len(g.samples) for g in batch.groups)
                toks = sum(len(s.response_ids) for g in batch.groups for s in g.samples)
                rates.append(n / (now - last))
                tok_rates.append(toks / (now - last))
            last = now
            version += 1
            backend.publish(state, version)
    finally:
        backend.close()
        if backend_name == "ray":
            import ray

            ray.shutdown()
    return {
        "backend": backend_name,
        "workers": workers,
        "responses_per_s": statistics.median(rates),
        "tokens_per_s": statistics.median(tok_rates),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=quick_default(), help="smoke-test sizes")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--backends", default="local,ray", help="local and/or ray (ray is skipped if missing)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (quick 32)")
    ap.add_argument(
        "--prompts", type=int, default=None, help="prompts per batch (x8 responses; default 8, quick 4)"
    )
    ap.add_argument(
        "--batches", type=int, default=None, help="timed batches per configuration (default 8; quick 3)"
    )
    args = ap.parse_args()
    args.max_new_tokens = args.max_new_tokens or (32 if args.quick else 64)
    args.prompts = args.prompts or (4 if args.quick else 8)
    args.batches = args.batches or (3 if args.quick else 8)
    counts = [int(x) for x in args.workers.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(backends) - {"local", "ray"}:
        ap.error(f"--backends takes local and/or ray, got {args.backends!r}")
    if "ray" in backends:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            print("ray: not installed, skipped (pip install 'asympo[ray]')")
            backends.remove("ray")
    info = print_machine()
    print(
        f"rollout only (instant learner): {args.prompts} prompts x 8 responses x {args.max_new_tokens} tokens "
        f"per batch, random embedded model, 1 thread per worker, median of {args.batches} batches"
    )
    print(f"{'backend':<8} {'workers':>7} {'responses/s':>12} {'tokens/s':>9} {'x vs 1':>7}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model_dir(Path(tmp), max_positions=64 + args.max_new_tokens)
        for b in backends:
            base = None
            for w in counts:
                r = throughput(b, w, model_dir, args)
                base = base or r["responses_per_s"]
                r["speedup_vs_first"] = r["responses_per_s"] / base
                rows.append(r)
                print(
                    f"{b:<8} {w:>7} {r['responses_per_s']:>12.1f} {r['tokens_per_s']:>9.0f}"
                    f" {r['speedup_vs_first']:>6.2f}x"
                )
    emit(
        "scaling", {"machine": info, "quick": args.quick, "max_new_tokens": args.max_new_tokens, "rows": rows}
    )


if __name__ == "__main__":
    main()
