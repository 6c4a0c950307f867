"""Asynchronous vs synchronous training throughput, and where the asynchronous mode loses time.

    python bench/bench_async.py [--steps 20] [--max-new-tokens 64] [--quick] [--out runs/bench_async]
    python bench/bench_async.py --workloads long --max-new-tokens 256 --steps 30

Each workload is trained twice for the same number of steps, `mode=sync` (generate, then train, in one
process) and `mode=async` (a rollout process generates while the learner trains, max_staleness 4, the
`wait` policy), evaluation off. Workloads:
- `demo`: the demo preset as shipped (SFT'd embedded model, 8 new tokens: generation is a small share);
- `long`: the same architecture with random weights, which rarely emits EOS, so every response runs to
  `--max-new-tokens`: generation is a large share of the step, as with reasoning responses.
Printed per run: wall seconds per step (between consecutive steps, publication and logging included), the
learner's step T, the generation time of one batch G, the learner's wait for a batch, the weight
publication time, staleness and response tokens/s. Then, per workload:
- the pure-overlap bound (G+T)/max(G,T) from the sync run's own G and T, async/sync and async/bound;
- the thread split: on this machine the async learner and the rollout process share the cores (the
  learner gets `nproc - rollout threads`), so T and G each slow down; `bound at split` =
  (G_sync + T_sync) / max(G_async, T_async) is what perfect overlap could reach with the slowed phases;
- the learner's per-step overheads that overlap cannot hide (publication, waiting), and the CPU time the
  dispatcher thread takes in the learner's process per step (Linux: from /proc; it shares the learner's
  core and GIL).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
from benchlib import emit, print_machine, quick_default

from asympo.config import TrainConfig, apply_overrides
from asympo.presets import preset_dict
from asympo.train import resolve_model_path, train


class PublishTimer:
    """Times the learner-side `publish` of the local backends (snapshot, shared memory, queue put) by
    wrapping the classes' method in this process; restores it on exit."""

    def __init__(self):
        self.times: list[float] = []
        self._saved = []

    def __enter__(self):
        from asympo.runtime import local

        # getattr: a renamed backend class leaves publish untimed (NaN) rather than breaking the benchmark.
        for cls in filter(None, (getattr(local, n, None) for n in ("InlineBackend", "ProcessBackend"))):
            orig = cls.publish

            def timed(backend, state, version, _orig=orig):
                t0 = time.perf_counter()
                _orig(backend, state, version)
                self.times.append(time.perf_counter() - t0)

            self._saved.append((cls, orig))
            cls.publish = timed
        return self

    def __exit__(self, *exc):
        for cls, orig in self._saved:
            cls.publish = orig


def dispatcher_cpu_s() -> float:
    """CPU seconds used so far by the backend's dispatcher thread in this process (NaN where unknown)."""
    for t in threading.enumerate():
        if t.name == "asympo-dispatch" and t.native_id is not None:
            try:
                fields = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return float("nan")
            # utime and stime are fields 14 and 15 of stat (11 and 12 after the command name).
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def random_model_dir(root: Path, max_positions: int) -> str:
    """The embedded architecture with random weights, saved as an HF directory (no EOS bias: long responses)."""
    from asympo.models.tiny import TinyModelConfig, build_tiny_model, save_pretrained
    from asympo.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_model(replace(TinyModelConfig(), max_position_embeddings=max_positions), tok)
    return str(save_pretrained(model, tok, root / "random_model"))


def run(mode: str, sets: list[str], out: Path, threads: int | None = None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cfg = TrainConfig.from_dict(
        apply_overrides(preset_dict("demo"), [f"out={json.dumps(str(out))}", f"mode={mode}", *sets])
    )
    stamps: list[float] = []
    dispatch_cpu: list[float] = []

    def on_event(ev: dict) -> None:
        if ev.get("event") == "step":
            stamps.append(time.monotonic())
            dispatch_cpu.append(dispatcher_cpu_s())

    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # sync only: async runs set their own split in train()
    with PublishTimer() as pub:
        t0 = time.monotonic()
        train(cfg, progress=False, callbacks=[on_event])
        wall = time.monotonic() - t0
    learner_threads = torch.get_num_threads()
    torch.set_num_threads(threads_before)  # train() lowers it for async runs
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    skip = min(3, len(recs) - 2)  # start-up steps (worker start, first weights, allocator)
    # Means, not medians: the per-step decomposition (train + wait + publish + other) must add up.
    med = statistics.mean
    intervals = [b - a for a, b in zip(stamps[skip:], stamps[skip + 1 :])]
    cpu = dispatch_cpu[skip:]
    dispatch_cpu_s = (cpu[-1] - cpu[0]) / (len(cpu) - 1) if len(cpu) > 1 else float("nan")
    return {
        "mode": mode,
        "s_per_step": med(intervals),
        "train_s": med(r["time/train"] for r in recs[skip:]),
        "gen_s": med(r["time/generate"] for r in recs[skip:]),
        "wait_s": med(r["time/wait"] for r in recs[skip:]),
        "publish_s": med(pub.times[skip:]) if len(pub.times) > skip else float("nan"),
        "staleness_mean": statistics.mean(r["staleness/mean"] for r in recs),
        "response_tokens": med(r["batch/response_tokens"] for r in recs[skip:]),
        "tokens_per_s": med(r["batch/response_tokens"] for r in recs[skip:]) / med(intervals),
        "learner_threads": learner_threads,
        "dispatch_cpu_s": dispatch_cpu_s,
        "wall_s": wall,
    }


def weight_load_s(model_dir: str, repeats: int = 5) -> float:
    """What a rollout worker pays per new version to load it into its engine (measured here, in-process,
    because the worker runs in a spawned process this script cannot instrument)."""
    from asympo.engines.torch import TorchEngine
    from asympo.runtime.sync import snapshot

    engine = TorchEngine.from_pretrained(model_dir, device="cpu")
    state = snapshot(engine.model.state_dict(), share_memory=True)
    times = []
    for v in range(1, repeats + 1):
        t0 = time.perf_counter()
        engine.load_weights(state, v)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=quick_default(), help="smoke-test sizes")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 20; quick 6)")
    ap.add_argument(
        "--max-new-tokens", type=int, default=None, help="response length of `long` (default 64; quick 32)"
    )
    ap.add_argument("--workloads", default="demo,long", help="comma-separated: demo, long")
    ap.add_argument("--prompts-per-step", type=int, default=None, help="default: the preset's 16 (quick 8)")
    ap.add_argument(
        "--sync-threads",
        type=int,
        default=None,
        help="torch threads of the sync run (default: torch's, all cores, as `asympo train` runs it); "
        "on an oversubscribed machine 1 thread can be many times faster",
    )
    ap.add_argument("--out", default="runs/bench_async")
    args = ap.parse_args()
    steps = args.steps or (6 if args.quick else 20)
    max_new = args.max_new_tokens or (32 if args.quick else 64)
    prompts = args.prompts_per_step or (8 if args.quick else 16)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not workloads or set(workloads) - {"demo", "long"}:
        ap.error(f"--workloads takes demo and/or long, got {args.workloads!r}")

    info = print_machine()
    resolve_model_path(TrainConfig.from_dict(preset_dict("demo")), progress=False)  # SFT cached, not timed
    out = Path(args.out)
    common = [
        f"steps={steps}",
        "eval.every=0",
        "eval.limit=1",
        "eval.n=1",
        "report=false",
        "checkpoint_every=0",
        f"rollout.prompts_per_step={prompts}",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in workloads:
            sets = list(common)
            load_s = float("nan")
            if w == "long":
                model_dir = random_model_dir(Path(tmp), max_positions=64 + max_new)
                sets += [f"model.path={json.dumps(model_dir)}", f"rollout.max_new_tokens={max_new}"]
                load_s = weight_load_s(model_dir)
            res = {
                "sync": run("sync", sets, out / w / "sync", threads=args.sync_threads),
                "async": run("async", sets, out / w / "async"),
            }
            s, a = res["sync"], res["async"]
            G, T = s["gen_s"], s["train_s"]
            bound = (G + T) / max(G, T)
            split_bound = (G + T) / max(a["gen_s"], a["train_s"])
            speedup = s["s_per_step"] / a["s_per_step"]
            print(
                f"\n[{w}] {prompts} prompts x 8, max_new_tokens {max_new if w == 'long' else 8}, {steps} steps"
            )
            print(
                f"{'mode':<6} {'s/step':>7} {'T train':>8} {'G gen':>7} {'wait':>7} {'publish':>8}"
                f" {'stale':>6} {'resp tok':>8} {'tok/s':>7} {'learner thr':>11}"
            )
            for r in (s, a):
                print(
                    f"{r['mode']:<6} {r['s_per_step']:>7.3f} {r['train_s']:>8.3f} {r['gen_s']:>7.3f}"
                    f" {r['wait_s']:>7.3f} {r['publish_s']:>8.4f} {r['staleness_mean']:>6.2f}"
                    f" {r['response_tokens']:>8.0f} {r['tokens_per_s']:>7.0f} {r['learner_threads']:>11d}"
                )
            print(
                f"G={G:.3f} s, T={T:.3f} s (sync); bound (G+T)/max(G,T) = {bound:.2f}x; "
                f"async/sync = {speedup:.2f}x; async/bound = {speedup / bound:.2f}"
            )
            print(
                f"thread split: T async/sync {a['train_s'] / T:.2f}x, G async/sync {a['gen_s'] / G:.2f}x; "
                f"bound at split (G+T)/max(G_async,T_async) = {split_bound:.2f}x; "
                f"async/bound-at-split = {speedup / split_bound:.2f}"
            )
            print(
                f"learner overheads per async step: publish {a['publish_s'] * 1000:.1f} ms, "
                f"wait {a['wait_s'] * 1000:.0f} ms, other (logging, dispatch) "
                f"{(a['s_per_step'] - a['train_s'] - a['wait_s'] - a['publish_s']) * 1000:.0f} ms; "
                f"dispatcher thread CPU {a['dispatch_cpu_s'] * 1000:.1f} ms/step"
                + (f"; worker weight load {load_s * 1000:.1f} ms/version" if load_s == load_s else "")
            )
            rows.append(
                {
                    "workload": w,
                    "prompts_per_step": prompts,
                    "max_new_tokens": max_new if w == "long" else 8,
                    "sync": s,
                    "async": a,
                    "G": G,
                    "T": T,
                    "bound": bound,
                    "async/sync": speedup,
                    "async/bound": speedup / bound,
                    "bound_at_split": split_bound,
                    "async/bound_at_split": speedup / split_bound,
                    "worker_weight_load_s": load_s,
                }
            )
    emit("async", {"machine": info, "quick": args.quick, "steps": steps, "rows": rows})


if __name__ == "__main__":
    main()
