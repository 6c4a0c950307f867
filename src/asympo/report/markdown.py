"""The study's tables as Markdown (`DIR/summary.md`), for docs and pull requests: the same numbers as the
HTML report (`summaries.group_results`), so a results page quotes generated tables, never hand-typed ones."""

from __future__ import annotations

import math

import numpy as np

from asympo.report.stats import Summary, summarize
from asympo.report.studies import StudyData
from asympo.report.summaries import GroupResult, final_mean, group_results

DIAGNOSTICS = ("nll/pos", "nll/neg", "grad/norm_pos", "grad/norm_neg", "policy/entropy")
"""Per-step metrics whose end-of-training values (mean of the last 10% of steps) summary.md tabulates."""


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; `|` inside a cell is escaped."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def _label(g: GroupResult, with_lr: bool) -> str:
    return f"{g.objective} lr={g.lr:g}" if with_lr and g.lr is not None else g.objective


def pivot_table(groups: list[GroupResult], with_lr: bool, value: str = "pass1") -> str:
    """Objective rows × staleness columns: mean ± std over seeds of `value` (pass1, reward or an extra
    column), with the collapsed seeds in brackets for pass1."""
    levels = sorted({g.staleness for g in groups})
    cells: dict[str, dict[int, str]] = {}
    for g in groups:
        s: Summary = (
            getattr(g, value) if value in ("pass1", "reward") else g.extra.get(value, Summary(0, 0, 0))
        )
        text = s.format()
        if value == "pass1":
            text += f" ({g.collapse_text()})"
        cells.setdefault(_label(g, with_lr), {})[g.staleness] = text
    rows = [[label, *(by.get(level, "") for level in levels)] for label, by in cells.items()]
    return md_table(["objective", *(f"staleness {lv}" for lv in levels)], rows)


def cell_table(study: StudyData, with_lr: bool, value) -> str:
    """Objective rows × staleness columns of `value(run) -> float` over each group's cells (mean ± std
    over seeds); empty when no cell has logs."""
    groups: dict[str, dict[int, list[float]]] = {}
    sort_keys: dict[str, tuple] = {}
    order = {o: k for k, o in enumerate(study.objectives)}
    for cell in study.cells:
        if cell.run is None:
            continue
        i = cell.info
        lr = i.lr if with_lr else None
        label = f"{i.objective} lr={lr:g}" if lr is not None else i.objective
        sort_keys[label] = (order.get(i.objective, 1 << 30), lr or 0.0)
        groups.setdefault(label, {}).setdefault(i.staleness, []).append(value(cell.run))
    if not groups:
        return ""
    labels = sorted(groups, key=sort_keys.__getitem__)
    levels = sorted({lv for by in groups.values() for lv in by})
    rows = [[lb, *(summarize(groups[lb].get(lv, [])).format() for lv in levels)] for lb in labels]
    return md_table(["objective", *(f"staleness {lv}" for lv in levels)], rows)


def _best_eval(run) -> float:
    p = run.eval_pass1
    return float(np.nanmax(p)) if len(p) and np.isfinite(p).any() else math.nan


def study_markdown(study: StudyData) -> str:
    """`summary.md` of a study: final held-out pass@1, final reward and the extra columns, per group."""
    groups = group_results(study)
    if not groups:
        return f"# Study {study.path.name}\n\nNo results yet.\n"
    with_lr = len(study.result_lrs) > 1
    seeds = sorted({s for g in groups for s in g.seeds})
    parts = [
        f"# Study {study.path.name}",
        f"{len(study.rows)} cells; seeds {', '.join(map(str, seeds))}. Every entry is the mean ± sample "
        "standard deviation (ddof=1) over seeds.",
        "## Final held-out pass@1 (collapsed seeds / seeds)",
        pivot_table(groups, with_lr, "pass1"),
        "## Final training reward (mean of the last 10% of steps)",
        pivot_table(groups, with_lr, "reward"),
    ]
    for key in groups[0].extra:
        if key == "wall_s":
            continue
        parts += [f"## {key}", pivot_table(groups, with_lr, key)]
    best = cell_table(study, with_lr, _best_eval)
    if best:
        parts += ["## Best held-out pass@1 at any evaluation (start included)", best]
    for key in DIAGNOSTICS:
        if not any(c.run is not None and np.isfinite(c.run.series(key)).any() for c in study.cells):
            continue
        table = cell_table(study, with_lr, lambda run, key=key: final_mean(run, key))
        if table:
            parts += [f"## {key} at the end of training (mean of the last 10% of steps)", table]
    walls = [g.extra["wall_s"] for g in groups if "wall_s" in g.extra and g.extra["wall_s"].n]
    if walls:
        total = sum(w.mean * w.n for w in walls)
        parts.append(
            f"Cell wall time: {total / 60:.1f} min in all (sum over cells, not the study's elapsed time)."
        )
    return "\n\n".join(parts) + "\n"
