"""Per (objective, staleness) of a study: the loss-term balance and the peak NLL of the positive responses.

    python bench/study_diagnostics.py runs/study-staleness

For each cell it reads metrics.jsonl and takes
- the median over steps of |loss/neg| / |loss/pos| (how much the negative terms outweigh the positive ones;
  ASymPO makes it 1 by construction), and
- the largest nll/pos over training (a policy pushed off its own correct answers shows as a spike),
then prints the mean over the group's seeds. docs/results.md quotes these numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path


def cell_stats(cell: Path) -> tuple[float, float]:
    ratios, nll_pos = [], []
    for line in (cell / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        pos, neg = rec.get("loss/pos"), rec.get("loss/neg")
        if pos and neg is not None and math.isfinite(pos) and math.isfinite(neg):
            ratios.append(abs(neg) / abs(pos))
        if rec.get("nll/pos") is not None and math.isfinite(rec["nll/pos"]):
            nll_pos.append(rec["nll/pos"])
    return (
        statistics.median(ratios) if ratios else math.nan,
        max(nll_pos) if nll_pos else math.nan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", type=Path, help="a study directory (with cells/)")
    args = parser.parse_args()
    cells = sorted((args.study / "cells").glob("*/cell.json"))
    if not cells:
        parser.error(f"{args.study} has no cells/*/cell.json: pass the --out of an `asympo study` run")
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for info_file in cells:
        info = json.loads(info_file.read_text())
        if (info_file.parent / "metrics.jsonl").exists():
            key = (info["objective"], info["staleness"], info.get("lr"))
            groups[key].append(cell_stats(info_file.parent))
    print(
        f"{'objective':28s} {'d':>3s} {'lr':>8s} {'seeds':>5s} {'|loss/neg|/|loss/pos|':>22s} {'max nll/pos':>12s}"
    )
    for (objective, d, lr), stats in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)
    ):
        ratio = statistics.fmean(s[0] for s in stats)
        peak = statistics.fmean(s[1] for s in stats)
        lr_text = "" if lr is None else f"{lr:g}"
        print(f"{objective:28s} {d:3d} {lr_text:>8s} {len(stats):5d} {ratio:22.2f} {peak:12.2f}")


if __name__ == "__main__":
    main()
