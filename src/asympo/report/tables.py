"""The report's tables: one `Table` model, rendered as HTML (report.html) or Markdown (summary.md), and the
numbers in them, computed apart from any markup so that both pages quote the same values."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np

from asympo.report.data import ResultRow, RunData, StudyData, Summary, summarize
from asympo.study import FINAL_FRACTION, final_tail

DIAGNOSTICS = ("nll/pos", "nll/neg", "grad/norm_pos", "grad/norm_neg", "policy/entropy", "len/pos", "len/neg",
               "nll/len_corr", "*/neg_weight", "*/weight_cv")  # fmt: skip
"""Per-step metrics whose end-of-training values (mean of the last 10% of steps) the study summaries
tabulate; the `*/name` pseudo-keys (an objective's namespaced metrics) are described in `DESCRIBED`."""
DESCRIBED = {"*/neg_weight": "Effective negative weight", "*/weight_cv": "Spread of the per-response weights"}
END = f"(mean of the last {int(FINAL_FRACTION * 100)}% of steps)"


@dataclass(frozen=True)
class Table:
    """Headers and rows of values; the first `key_columns` columns are left-aligned labels. The HTML
    element id is `table-<id>` (tests and links find a table by it)."""

    headers: list[str]
    rows: list[list[Any]]
    key_columns: int = 1
    id: str = ""

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


def fmt(value: Any) -> str:
    """Numbers to at most 4 significant digits (NaN → "—"); anything else via JSON / str."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        value = float(value)
        if not math.isfinite(value):
            return "—" if math.isnan(value) else str(value)
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


# ------------------------------------------------------------------------------------------------ runs


def run_overview(run: RunData) -> Table:
    """Headline facts of a run: (label, formatted value) rows."""
    facts: list[list[str]] = [["steps logged", str(len(run))]]
    if len(run):
        facts.append(["step range", f"{run.steps[0]} – {run.steps[-1]}"])
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
    if (counts := run.staleness_counts).sum() > 0:
        facts.append(["staleness mean / max", f"{run.staleness_mean:.2f} / {np.nonzero(counts)[0].max()}"])
    elif run.staleness_hist is None and run.has("staleness/mean"):
        top = np.nanmax(run.series("staleness/max")) if run.has("staleness/max") else math.nan
        facts.append(
            ["staleness mean / max", f"{fmt(np.nanmean(run.series('staleness/mean')))} / {fmt(top)}"]
        )
    if run.has("grad/clipped"):
        clipped = run.series("grad/clipped")
        share = f"{np.nanmean(clipped):.0%} ({int(np.nansum(clipped))} of {int(np.isfinite(clipped).sum())})"
        facts.append(["steps with gradient clipping active", share])
    return Table(["", "value"], facts + [[f"summary: {k}", fmt(v)] for k, v in run.summary.items()])


def metrics_table(run: RunData) -> Table:
    """One row per logged scalar: key, last, final mean (last 10% of steps), min, max, finite count."""
    rows = []
    for key, values in run.scalars.items():
        finite = values[np.isfinite(values)]
        stats = [finite[-1], run.final(key), finite.min(), finite.max()] if len(finite) else ["—"] * 4
        rows.append([key, *(fmt(v) for v in stats), f"{len(finite)}/{len(values)}"])
    headers = ["metric", "last", f"mean of last {int(FINAL_FRACTION * 100)}% of steps", "min", "max"]
    return Table([*headers, "finite steps"], rows, id="metrics")


def evals_table(run: RunData) -> Table:
    labels = sorted({k for e in run.evals for k in e.pass_k})
    rows = [[e.step, e.pass1, *(e.pass_k.get(k, math.nan) for k in labels), e.n] for e in run.evals]
    return Table(["step", "pass@1", *labels, "n"], rows, id="evals")


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
    """The flattened configs of several cells as (key → value shared by all, key → its distinct values in
    first-seen order where they vary)."""
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


def column(rows: list[ResultRow], name: str) -> Summary:
    """Mean ± std over seeds of a results.csv column (NaN for values that are not numbers)."""
    return summarize([r.number(name) for r in rows])


def collapse_text(rows: list[ResultRow]) -> str:
    """Seeds marked collapsed / seeds whose collapse is known ("?" for rows rebuilt from cells)."""
    known = [r.collapsed for r in rows if r.collapsed is not None]
    return f"{sum(known)}/{len(known)}" if known else "?"


def pivot(groups: dict, text: Callable[[list], str], id: str = "") -> Table:
    """Objective rows × staleness columns of `StudyData.groups`, each entry `text(the group's items)`."""
    levels = sorted({level for _, level in groups})
    entries: dict[str, dict[int, str]] = {}
    for (series, level), items in groups.items():
        entries.setdefault(series.label(), {})[level] = text(items)
    rows = [[label, *(by.get(level, "") for level in levels)] for label, by in entries.items()]
    return Table(["objective", *(f"staleness {lv}" for lv in levels)], rows, id=id)


def column_pivot(study: StudyData, name: str, collapsed: str | None = None) -> Table:
    """`pivot` of a results.csv column; with `collapsed`, the collapsed seeds follow in brackets, as
    "(k/n{collapsed})"."""

    def text(rows: list[ResultRow]) -> str:
        value = column(rows, name).format()
        return value if collapsed is None else f"{value} ({collapse_text(rows)}{collapsed})"

    return pivot(study.groups(study.rows), text, "pivot")


def groups_table(study: StudyData) -> Table:
    lr, extras = ["lr"] if study.varies_lr else [], study.extra_columns
    headers = ["objective", *lr, "staleness", "seeds", "final pass@1", "final reward", "collapsed", *extras]
    rows = []
    for (series, level), group in study.groups(study.rows).items():
        pass1, reward, *more = (column(group, k).format() for k in ("final_pass1", "final_reward", *extras))
        lr = [series.lr] if study.varies_lr else []
        rows.append([series.objective, *lr, level, len(group), pass1, reward, collapse_text(group), *more])
    return Table(headers, rows, id="groups")


def diagnostic_tables(study: StudyData) -> list[tuple[str, Table]]:
    """(heading, table) per diagnostic some cell logged: the best evaluation, the share of steps with
    gradient clipping active, and the end-of-training value of each of `DIAGNOSTICS`, as mean ± std over
    each group's seeds. Keys a cell never logged (an older run, another objective) show as "—"."""
    logged = [c for c in study.cells if c.run is not None]
    runs = [c.run for c in logged]
    specs = [
        ("Best held-out pass@1 at any evaluation (start included)",
         lambda run: max(filter(math.isfinite, run.eval_pass1), default=math.nan), bool(runs)),
        ("Share of steps with gradient clipping active (mean of grad/clipped over the run)",
         lambda run: summarize(run.series("grad/clipped")).mean, any(run.has("grad/clipped") for run in runs)),
    ]  # fmt: skip
    for key in DIAGNOSTICS:
        names = sorted({run.key(key) for run in runs if run.has(key)})
        what = f"{DESCRIBED[key]} ({', '.join(names)})" if key in DESCRIBED else key
        specs.append(
            (f"{what} at the end of training {END}", lambda run, key=key: run.final(key), bool(names))
        )
    groups = study.groups(logged)
    return [
        (heading, pivot(groups, lambda cells, value=value: summarize([value(c.run) for c in cells]).format()))
        for heading, value, present in specs
        if present
    ]


def study_markdown(study: StudyData) -> str:
    """`summary.md` of a study: final held-out pass@1, final reward and the extra columns, per group."""
    if not study.rows:
        return f"# Study {study.path.name}\n\nNo results yet.\n"
    seeds = ", ".join(map(str, sorted({r.seed for r in study.rows})))
    parts = [
        f"# Study {study.path.name}",
        f"{len(study.rows)} cells; seeds {seeds}. Every entry is the mean ± sample standard deviation (ddof=1) "
        "over seeds.",
        "## Final held-out pass@1 (collapsed seeds / seeds)",
        column_pivot(study, "final_pass1", collapsed="").markdown(),
        f"## Final training reward {END}",
        column_pivot(study, "final_reward").markdown(),
    ]
    for key in study.extra_columns:
        if key != "wall_s":
            parts += [f"## {key}", column_pivot(study, key).markdown()]
    for heading, table in diagnostic_tables(study):
        parts += [f"## {heading}", table.markdown()]
    if (walls := column(study.rows, "wall_s")).n:
        total = walls.mean * walls.n
        parts.append(
            f"Cell wall time: {total / 60:.1f} min in all (sum over cells, not the study's elapsed time)."
        )
    return "\n\n".join(parts) + "\n"
