"""How stale the samples of a study's cells really were, from each cell's logged `staleness/hist`.

    python bench/study_staleness.py runs/study-async-arithmetic

For each staleness bound D of the study: the share of samples exactly D versions old, their mean staleness,
the mean staleness a fixed delay of D gives over the same steps (min(v, D) at step v: the reference the
fixed-delay studies had), the share of steps whose batch mixes samples of different versions, and the
learner's mean seconds per step spent waiting for data, training and (for the rollout side) generating.
docs/results.md (section 5 and the `async` study) quotes its output.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path


def cell_staleness(cell: Path) -> dict[str, float]:
    """Share at the bound, mean staleness (and a fixed delay's over the same steps), share of steps with
    mixed versions and mean per-step times of one finished cell."""
    bound = json.loads((cell / "cell.json").read_text())["staleness"]
    hist: collections.Counter[int] = collections.Counter()
    times = collections.defaultdict(list)
    steps = mixed = 0
    for line in (cell / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        step_hist = rec.get("staleness/hist") or []
        for age, count in enumerate(step_hist):
            hist[age] += count
        if step_hist:
            steps += 1
            mixed += sum(count > 0 for count in step_hist) > 1
        for key in ("time/wait", "time/train", "time/generate"):
            if rec.get(key) is not None:
                times[key].append(rec[key])
    n = sum(hist.values())
    if not n:
        raise SystemExit(f"{cell}: no staleness/hist logged")
    return {
        "bound": bound,
        "at_bound": hist[bound] / n,
        "mean": sum(age * c for age, c in hist.items()) / n,
        "fixed_mean": statistics.mean(min(v, bound) for v in range(steps)),
        "mixed": mixed / steps,
        **{key: statistics.mean(v) for key, v in times.items()},
    }


def _avg(cells: list[dict[str, float]], key: str) -> float:
    values = [c[key] for c in cells if key in c]
    return statistics.mean(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", type=Path, help="a study directory (its cells/ subdirectory is read)")
    args = parser.parse_args()
    by_bound = collections.defaultdict(list)
    for cell in sorted((args.study / "cells").iterdir()):
        if (cell / "summary.json").is_file():
            stats = cell_staleness(cell)
            by_bound[stats["bound"]].append(stats)
    if not by_bound:
        raise SystemExit(f"{args.study}: no finished cells")
    print(
        "bound  cells  share at bound  mean staleness  fixed-delay mean  mixed steps  wait s/step  "
        "train s/step  generate s/step"
    )
    keys = ("at_bound", "mean", "fixed_mean", "mixed", "time/wait", "time/train", "time/generate")
    for bound, cells in sorted(by_bound.items()):
        share, mean, fixed, mixed, wait, train, gen = (_avg(cells, k) for k in keys)
        print(
            f"{bound:5d}  {len(cells):5d}  {share:14.3f}  {mean:14.2f}  {fixed:16.2f}  {mixed:11.3f}  "
            f"{wait:11.3f}  {train:12.3f}  {gen:15.3f}"
        )


if __name__ == "__main__":
    main()
