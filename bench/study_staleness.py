"""How stale the samples of a study's cells really were, from each cell's logged `staleness/hist`.

    python bench/study_staleness.py runs/study-async-arithmetic

For each staleness bound D of the study: the share of samples exactly D versions old, their mean staleness,
and the learner's mean seconds per step spent waiting for data, training and (for the rollout side)
generating. docs/results.md section 5 quotes its output.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path


def cell_staleness(cell: Path) -> dict[str, float]:
    """Share at the bound, mean staleness and mean per-step times of one finished cell."""
    bound = json.loads((cell / "cell.json").read_text())["staleness"]
    hist: collections.Counter[int] = collections.Counter()
    times = collections.defaultdict(list)
    for line in (cell / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for age, count in enumerate(rec.get("staleness/hist") or []):
            hist[age] += count
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
    print("bound  cells  share at bound  mean staleness  wait s/step  train s/step  generate s/step")
    for bound, cells in sorted(by_bound.items()):
        share, mean, wait, train, gen = (
            _avg(cells, k) for k in ("at_bound", "mean", "time/wait", "time/train", "time/generate")
        )
        print(
            f"{bound:5d}  {len(cells):5d}  {share:14.3f}  {mean:14.2f}  {wait:11.3f}  {train:12.3f}  {gen:15.3f}"
        )


if __name__ == "__main__":
    main()
