"""Asynchronous vs synchronous training throughput on this machine (same process, same config).

    python bench/bench_async.py [--steps 30] [--out runs/bench_async]

Runs the demo preset twice for the same number of steps — `mode=sync` (generate, then train) and
`mode=async` (a rollout process generates while the learner trains, max_staleness 4) — and prints the
wall time per step of each, the speed-up sync/async, and the pure-overlap bound (G+T)/max(G,T) computed
from the sync run's own generation (G) and training (T) times. Evaluation is off so only RL steps count.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from asympo.config import TrainConfig, apply_overrides
from asympo.presets import preset_dict
from asympo.train import resolve_model_path, train


def run(mode: str, steps: int, out: Path) -> tuple[float, list[dict]]:
    if out.exists():
        shutil.rmtree(out)
    sets = [
        f"out={json.dumps(str(out))}",
        f"steps={steps}",
        f"mode={mode}",
        "eval.every=0",
        "eval.limit=1",
        "eval.n=1",
        "report=false",
        "checkpoint_every=0",
    ]
    cfg = TrainConfig.from_dict(apply_overrides(preset_dict("demo"), sets))
    t0 = time.monotonic()
    train(cfg, progress=False)
    wall = time.monotonic() - t0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return wall, recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="runs/bench_async")
    args = ap.parse_args()
    resolve_model_path(TrainConfig.from_dict(preset_dict("demo")))  # SFT warm-up cached, not timed
    out = Path(args.out)
    results = {}
    for mode in ("sync", "async"):
        wall, recs = run(mode, args.steps, out / mode)
        skip = min(3, len(recs) - 1)  # start-up steps
        step_times = [b["time/train"] + b["time/wait"] for b in recs[skip:]]
        results[mode] = {
            "wall_s": wall,
            "s_per_step": statistics.mean(step_times),
            "gen_s": statistics.mean(b["time/generate"] for b in recs[skip:]),
            "train_s": statistics.mean(b["time/train"] for b in recs[skip:]),
            "staleness_mean": statistics.mean(b["staleness/mean"] for b in recs),
            "tokens_per_s": statistics.mean(b["throughput/tokens_per_s"] for b in recs[skip:]),
        }
    s, a = results["sync"], results["async"]
    bound = (s["gen_s"] + s["train_s"]) / max(s["gen_s"], s["train_s"])
    for mode, r in results.items():
        print(
            f"{mode:5s}: {r['s_per_step']:.3f} s/step  (generate {r['gen_s']:.3f} s, train {r['train_s']:.3f} s, "
            f"staleness {r['staleness_mean']:.2f}, {r['tokens_per_s']:.0f} response tokens/s, wall {r['wall_s']:.0f} s)"
        )
    print(
        f"speed-up async/sync: {s['s_per_step'] / a['s_per_step']:.2f}x  (pure-overlap bound (G+T)/max(G,T) = {bound:.2f}x)"
    )


if __name__ == "__main__":
    main()
