"""The report's tables: one `Table` model, rendered as HTML (report.html) or Markdown (summary.md), and the
numbers in them, computed apart from any markup so that both pages quote the same values."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np

from asympo.report.data import RunData, Series, StudyData, Summary, summarize
from asympo.study import FINAL_FRACTION, final_tail

DIAGNOSTICS = {
    "nll/pos": "",
    "nll/neg": "",
    "grad/norm_pos": "",
    "grad/norm_neg": "",
    "policy/entropy": "",
    "len/pos": "",
    "len/neg": "",
    "nll/len_corr": "",
    "*/neg_weight": "Effective negative weight",
    "*/weight_cv": "Spread of the per-response weights",
}
"""Per-step metrics whose end-of-training values (mean of the last 10% of steps) the study summaries
tabulate, with a description for the `*/name` pseudo-keys (an objective's namespaced metrics)."""


@dataclass(frozen=True)
class Table:
    """Headers and rows of values; the first `key_columns` columns are left-aligned labels."""

    headers: list[str]
    rows: list[list[Any]]
    key_columns: int = 1
    id: str = ""
    """The HTML element id is `table-<id>` (tests and links find a table by it)."""

    def html(self) -> str:
        def cells(values: list, tag: str) -> str:
            key = ' class="key"'
            return "".join(
                f"<{tag}{key if i < self.key_columns else ''}>{escape(fmt(v))}</{tag}>"
                for i, v in enumerate(values)
            )

        ident = f' id="table-{escape(self.id)}"' if self.id else ""
        body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in self.rows)
        return (
            f"<table{ident}><thead><tr>{cells(self.headers, 'th')}</tr></thead><tbody>{body}</tbody></table>"
        )

    def markdown(self) -> str:
        def line(values: list) -> str:
            return "| " + " | ".join(fmt(v).replace("|", "\\|") for v in values) + " |"

        return "\n".join([line(self.headers), line(["---"] * len(self.headers)), *map(line, self.rows)])


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers to at most `digits` significant digits (NaN → "—"); anything else via JSON / str."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        value = float(value)
        if not math.isfinite(value):
            return "—" if math.isnan(value) else str(value)
        return f"{value:.{digits}g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


# ------------------------------------------------------------------------------------------------ runs


def run_overview(run: RunData) -> Table:
    """Headline facts of a run: (label, formatted value) rows."""
    facts: list[list[str]] = [["steps logged", str(len(run))]]
    if len(run):
        facts.append(["step range", f"{int(run.steps[0])} – {int(run.steps[-1])}"])
    if run.has("policy_version"):
        facts.append(["last policy version", fmt(run.last("policy_version"))])
    if run.has("reward/mean"):
        tail = final_tail(len(run))
        steps = f"last {tail} steps" if tail > 1 else "last step"
        facts.append(["final train reward", f"{fmt(run.final('reward/mean'))} (mean of {steps})"])
    if run.evals:
        first, last = run.evals[0], run.evals[-1]
        best = max(run.evals, key=lambda e: e.pass1 if math.isfinite(e.pass1) else -math.inf)
        span = f"{fmt(first.pass1)} (step {first.step}) → {fmt(last.pass1)} (step {last.step})"
        facts.append(["held-out pass@1 first → last", span])
        facts.append(["best held-out pass@1", f"{fmt(best.pass1)} (step {best.step})"])
    if run.staleness_hist is not None:
        counts = run.staleness_hist.sum(axis=0)
        if counts.sum() > 0:
            mean = float((np.arange(len(counts)) * counts).sum() / counts.sum())
            facts.append(["staleness mean / max", f"{mean:.2f} / {int(np.nonzero(counts)[0].max())}"])
    elif run.has("staleness/mean"):
        top = (
            np.nanmax(run.series("staleness/max")) if run.has("staleness/max") else run.last("staleness/max")
        )
        facts.append(
            ["staleness mean / max", f"{fmt(np.nanmean(run.series('staleness/mean')))} / {fmt(top)}"]
        )
    if run.has("grad/clipped"):
        clipped = run.series("grad/clipped")
        n = int(np.isfinite(clipped).sum())
        facts.append(
            [
                "steps with gradient clipping active",
                f"{np.nanmean(clipped):.0%} ({int(np.nansum(clipped))} of {n})",
            ]
        )
    facts += [[f"summary: {key}", fmt(value)] for key, value in run.summary.items()]
    return Table(["", "value"], facts)


def metrics_table(run: RunData) -> Table:
    """One row per logged scalar: key, last, final mean (last 10% of steps), min, max, finite count."""
    rows = []
    for key, values in run.scalars.items():
        finite = values[np.isfinite(values)]
        stats = [finite[-1], run.final(key), finite.min(), finite.max()] if len(finite) else ["—"] * 4
        rows.append([key, *(fmt(v) for v in stats), f"{len(finite)}/{len(values)}"])
    pct = int(FINAL_FRACTION * 100)
    return Table(
        ["metric", "last", f"mean of last {pct}% of steps", "min", "max", "finite steps"], rows, id="metrics"
    )


def evals_table(run: RunData) -> Table:
    labels = sorted({k for e in run.evals for k in e.pass_k})
    rows = [[e.step, e.pass1, *(e.pass_k.get(k, math.nan) for k in labels), e.n] for e in run.evals]
    return Table(["step", "pass@1", *labels, "n"], rows, id="evals")


def config_table(config: dict[str, Any]) -> Table:
    # Both columns left-aligned: config values are mostly names and paths, not numbers to compare.
    return Table(["key", "value"], [list(kv) for kv in flatten(config).items()], key_columns=2, id="config")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → {"a.b.c": leaf}; lists stay leaves."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_split(configs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Split the flattened configs of several cells into keys shared by all and keys that vary.

    Returns (common key → value, varying key → its distinct values in first-seen order).
    """
    flats = [flatten(c) for c in configs if c]
    common, varying = {}, {}
    for key in dict.fromkeys(k for f in flats for k in f):
        distinct: dict[str, Any] = {}
        for f in flats:
            value = f.get(key, "<absent>")
            distinct.setdefault(json.dumps(value, sort_keys=True, default=str), value)
        if len(distinct) == 1:
            common[key] = next(iter(distinct.values()))
        else:
            varying[key] = list(distinct.values())
    return common, varying


# --------------------------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class GroupResult:
    """Results of one (objective, staleness[, lr]) group of seeds."""

    objective: str
    staleness: int
    lr: float | None
    seeds: list[int]
    pass1: Summary
    reward: Summary
    collapsed: int
    """Seeds whose row says collapsed=True."""
    collapse_known: int
    """Seeds whose collapse is known (rows rebuilt from cells leave it unknown)."""
    extra: dict[str, Summary] = field(default_factory=dict)
    """Mean ± std of every numeric extra column of results.csv (e.g. start_pass1)."""

    def collapse_text(self) -> str:
        return f"{self.collapsed}/{self.collapse_known}" if self.collapse_known else "?"

    @property
    def series(self) -> Series:
        return Series(self.objective, self.lr)


def group_results(study: StudyData) -> list[GroupResult]:
    """Group results.csv rows over seeds, in the study's objective order, then lr, then staleness."""
    with_lr = len(study.result_lrs) > 1
    groups: dict[tuple, list] = {}
    for row in study.rows:
        groups.setdefault((row.objective, row.staleness, row.lr if with_lr else None), []).append(row)
    extra_keys = [k for k in study.columns if any(isinstance(r.extra.get(k), float) for r in study.rows)]
    out = []
    for (objective, staleness, lr), rows in groups.items():
        known = [r.collapsed for r in rows if r.collapsed is not None]
        extra = {
            k: summarize([v if isinstance(v := r.extra.get(k), float) else math.nan for r in rows])
            for k in extra_keys
        }
        out.append(
            GroupResult(
                objective, staleness, lr, sorted(r.seed for r in rows),
                summarize([r.final_pass1 for r in rows]), summarize([r.final_reward for r in rows]),
                sum(known), len(known), extra,
            )
        )  # fmt: skip
    return sorted(out, key=lambda g: (study.rank(g.series), g.staleness))


def _pivot(entries: list[tuple[tuple, str, int, str]], id: str = "") -> Table:
    """Objective rows × staleness columns from (sort key, row label, staleness, text) entries."""
    levels = sorted({e[2] for e in entries})
    cells: dict[str, dict[int, str]] = {}
    for _, label, level, text in sorted(entries, key=lambda e: e[0]):
        cells.setdefault(label, {})[level] = text
    rows = [[label, *(by.get(level, "") for level in levels)] for label, by in cells.items()]
    return Table(["objective", *(f"staleness {lv}" for lv in levels)], rows, id=id)


def pivot(groups: list[GroupResult], value: str = "pass1", collapsed: str = "") -> Table:
    """Objective rows × staleness columns: mean ± std over seeds of `value` (pass1, reward or an extra
    column); for pass1 the collapsed seeds follow in brackets, as "(k/n{collapsed})"."""
    entries = []
    for i, g in enumerate(groups):  # groups come sorted: keep their row order
        s = getattr(g, value) if value in ("pass1", "reward") else g.extra.get(value, Summary(0, 0, 0))
        text = s.format() + (f" ({g.collapse_text()}{collapsed})" if value == "pass1" else "")
        entries.append(((i,), g.series.label(), g.staleness, text))
    return _pivot(entries, id="pivot")


def groups_table(groups: list[GroupResult], with_lr: bool) -> Table:
    extra_keys = list(groups[0].extra)
    lr = ["lr"] if with_lr else []
    headers = [
        "objective",
        *lr,
        "staleness",
        "seeds",
        "final pass@1",
        "final reward",
        "collapsed",
        *extra_keys,
    ]
    rows = [
        [g.objective, *([g.lr] if with_lr else []), g.staleness, len(g.seeds), g.pass1.format(),
         g.reward.format(), g.collapse_text(), *(g.extra[k].format() for k in extra_keys)]
        for g in groups
    ]  # fmt: skip
    return Table(headers, rows, id="groups")


def cell_pivot(study: StudyData, with_lr: bool, value) -> Table | None:
    """Objective rows × staleness columns of `value(run) -> float` over each group's cells (mean ± std
    over seeds); None when no cell has logs."""
    groups: dict[tuple, list[float]] = {}
    for cell in study.cells:
        if cell.run is not None:
            series = Series(cell.objective, cell.lr if with_lr else None)
            key = (study.rank(series), series.label(), cell.staleness)
            groups.setdefault(key, []).append(value(cell.run))
    entries = [(rank, label, level, summarize(vs).format()) for (rank, label, level), vs in groups.items()]
    return _pivot(entries) if entries else None


def _best_eval(run: RunData) -> float:
    p = run.eval_pass1
    return float(np.nanmax(p)) if len(p) and np.isfinite(p).any() else math.nan


def _clipped_share(run: RunData) -> float:
    clipped = run.series("grad/clipped")
    return float(np.nanmean(clipped)) if np.isfinite(clipped).any() else math.nan


def diagnostic_tables(study: StudyData) -> list[tuple[str, Table]]:
    """(heading, table) per diagnostic some cell logged: the best evaluation, the share of steps with
    gradient clipping active, and the end-of-training value of each of `DIAGNOSTICS`. Keys a cell never
    logged (an older run, another objective) show as "—"."""
    with_lr = len(study.result_lrs) > 1
    logged = [c.run for c in study.cells if c.run is not None]
    specs = [("Best held-out pass@1 at any evaluation (start included)", _best_eval, bool(logged))]
    specs.append(
        ("Share of steps with gradient clipping active (mean of grad/clipped over the run)", _clipped_share,
         any(run.has("grad/clipped") for run in logged))
    )  # fmt: skip
    for key, what in DIAGNOSTICS.items():
        names = sorted({run.key(key) for run in logged if run.has(key)})
        heading = f"{what + ' (' + ', '.join(names) + ')' if what else key} at the end of training"
        specs.append((heading + f" (mean of the last {int(FINAL_FRACTION * 100)}% of steps)",
                      lambda run, key=key: run.final(key), bool(names)))  # fmt: skip
    return [(heading, cell_pivot(study, with_lr, value)) for heading, value, present in specs if present]


def study_markdown(study: StudyData) -> str:
    """`summary.md` of a study: final held-out pass@1, final reward and the extra columns, per group."""
    groups = group_results(study)
    if not groups:
        return f"# Study {study.path.name}\n\nNo results yet.\n"
    seeds = sorted({s for g in groups for s in g.seeds})
    parts = [
        f"# Study {study.path.name}",
        f"{len(study.rows)} cells; seeds {', '.join(map(str, seeds))}. Every entry is the mean ± sample "
        "standard deviation (ddof=1) over seeds.",
        "## Final held-out pass@1 (collapsed seeds / seeds)",
        pivot(groups, "pass1").markdown(),
        "## Final training reward (mean of the last 10% of steps)",
        pivot(groups, "reward").markdown(),
    ]
    for key in groups[0].extra:
        if key != "wall_s":
            parts += [f"## {key}", pivot(groups, key).markdown()]
    for heading, table in diagnostic_tables(study):
        parts += [f"## {heading}", table.markdown()]
    walls = [g.extra["wall_s"] for g in groups if "wall_s" in g.extra and g.extra["wall_s"].n]
    if walls:
        total = sum(w.mean * w.n for w in walls)
        parts.append(
            f"Cell wall time: {total / 60:.1f} min in all (sum over cells, not the study's elapsed time)."
        )
    return "\n\n".join(parts) + "\n"
