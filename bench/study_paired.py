"""Paired seed-by-seed comparisons in a study: how far each cell moved from its start, and how far each
objective ended from a reference objective at the same seed and staleness.

    python bench/study_paired.py runs/study-reasoning            # reference: naive
    python bench/study_paired.py runs/study-aggregation --reference "naive(agg=seq-mean-token-mean)"

The seeds of one study share the SFT start and, at a given seed, the same prompts, so the difference
between two objectives at one seed is less noisy than the difference of their means: this prints, per
objective and staleness, the mean change of final held-out pass@1 from the start (± its standard error over
seeds), the mean paired difference to the reference (± standard error) and in how many seeds the objective
ended ahead of the reference. docs/results.md ("Second scale") quotes its output.
"""

from __future__ import annotations

import argparse
import collections
import math
import statistics
from pathlib import Path

from asympo.report.data import load_study


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); NaN for one value)."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, se


def paired_rows(study, reference: str = "naive", seeds: list[int] | None = None) -> list[dict]:
    """One dict per objective and staleness of `study` (`asympo.report.data.StudyData`): `moved` and `vs`
    as (mean, standard error) over seeds of final - start pass@1 and of final - reference's final at the
    same seed (None for the reference itself), `ahead` the seeds where it ended above the reference."""
    if study.varies_lr:
        raise SystemExit(f"{study.path}: the study varies the learning rate; pair within one rate instead")
    rows = [r for r in study.rows if seeds is None or r.seed in seeds]
    final = {(r.objective, r.staleness, r.seed): r.final_pass1 for r in rows}
    start = {(r.objective, r.staleness, r.seed): r.extra.get("start_pass1", math.nan) for r in rows}
    if not any(o == reference for o, _, _ in final):
        raise SystemExit(f"{study.path}: no objective labelled {reference!r}; pass --reference")
    cells = collections.defaultdict(list)
    for objective, staleness, seed in final:
        cells[objective, staleness].append(seed)
    out = []
    for key in sorted(cells, key=lambda k: (k[1], study.objectives.index(k[0]))):
        seeds = sorted(cells[key])
        paired = [
            final[(*key, s)] - final[reference, key[1], s] for s in seeds if (reference, key[1], s) in final
        ]
        vs = None if key[0] == reference or not paired else mean_se(paired)
        out.append(
            {
                "objective": key[0],
                "staleness": key[1],
                "seeds": len(seeds),
                "moved": mean_se([final[(*key, s)] - start[(*key, s)] for s in seeds]),
                "vs": vs,
                "ahead": None if vs is None else (sum(p > 0 for p in paired), len(paired)),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", type=Path, help="a study directory (its results.csv is read)")
    parser.add_argument("--reference", default="naive", help="the objective label to compare against")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="only these seeds (e.g. those another study has)"
    )
    args = parser.parse_args()
    rows = paired_rows(load_study(args.study), args.reference, args.seeds)
    print(
        f"{'objective':<36} {'d':>3} {'seeds':>5}  {'final - start':>15}  {'vs ' + args.reference:>22}  ahead"
    )
    for r in rows:
        vs = "" if r["vs"] is None else "{:+.3f} ± {:.3f}".format(*r["vs"])
        ahead = "" if r["ahead"] is None else "{}/{}".format(*r["ahead"])
        moved = "{:+.3f} ± {:.3f}".format(*r["moved"])
        print(f"{r['objective']:<36} {r['staleness']:>3} {r['seeds']:>5}  {moved:>15}  {vs:>22}  {ahead}")


if __name__ == "__main__":
    main()
