"""Two runs of the same study grid, cell by cell: how many cells ended exactly as before, and how far the
others moved.

    python bench/study_rerun.py old-run/ runs/study-async          # directories holding a results.csv

Fixed-delay cells are deterministic, so a rerun must reproduce them exactly; real asynchronous cells are not
bit-reproducible (which samples the learner gets depends on timing), and this measures how far that goes. For
each staleness bound: the cells present in both runs, how many have the same final held-out pass@1 and final
reward to the last bit, and the mean and largest absolute change of final pass@1. docs/results.md (the
`async` study) quotes its output.
"""

from __future__ import annotations

import argparse
import collections
import operator
from pathlib import Path

from asympo.report.data import load_study


def rerun_rows(before, after) -> list[dict]:
    """One dict per staleness bound of the cells (objective, staleness, seed, lr) both `StudyData` hold:
    `cells`, `identical` (final pass@1 and final reward both equal), `mean_abs` and `max_abs` change of
    final pass@1 (0.0 when every cell is identical)."""
    key = operator.attrgetter("objective", "staleness", "seed", "lr")
    old = {key(r): r for r in before.rows}
    by_bound = collections.defaultdict(list)
    for r in after.rows:
        if (o := old.get(key(r))) is not None:
            by_bound[r.staleness].append((o, r))
    out = []
    for bound in sorted(by_bound):
        pairs = by_bound[bound]
        diffs = [abs(n.final_pass1 - o.final_pass1) for o, n in pairs]
        same = sum(o.final_pass1 == n.final_pass1 and o.final_reward == n.final_reward for o, n in pairs)
        out.append(
            {
                "staleness": bound,
                "cells": len(pairs),
                "identical": same,
                "mean_abs": sum(diffs) / len(diffs),
                "max_abs": max(diffs),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path, help="the first run's study directory (its results.csv)")
    parser.add_argument("after", type=Path, help="the rerun's study directory")
    args = parser.parse_args()
    rows = rerun_rows(load_study(args.before), load_study(args.after))
    if not rows:
        raise SystemExit("the two studies have no cell in common (same objective, staleness, seed, lr)")
    print(f"{'bound':>5} {'cells':>5} {'identical':>9}  {'mean |change| pass@1':>20}  {'max |change|':>12}")
    for r in rows:
        print(
            f"{r['staleness']:>5} {r['cells']:>5} {r['identical']:>9}  {r['mean_abs']:>20.3f}  "
            f"{r['max_abs']:>12.3f}"
        )


if __name__ == "__main__":
    main()
