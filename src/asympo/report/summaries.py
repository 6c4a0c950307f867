"""The numbers the report's tables show, computed apart from their HTML so they can be tested as numbers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asympo.report.runs import RunData
from asympo.report.stats import Summary, summarize
from asympo.report.studies import StudyData

FINAL_FRACTION = 0.1
"""'Final' metric values in the run table average the last 10% of the logged steps (at least one)."""


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


def group_results(study: StudyData) -> list[GroupResult]:
    """Group results.csv rows over seeds, in the study's objective order, then lr, then staleness."""
    order = {objective: i for i, objective in enumerate(study.objectives)}
    with_lr = len(study.result_lrs) > 1
    groups: dict[tuple, list] = {}
    for row in study.rows:
        groups.setdefault((row.objective, row.staleness, row.lr if with_lr else None), []).append(row)
    extra_keys = [k for k in study.columns if any(isinstance(r.extra.get(k), float) for r in study.rows)]
    out = []
    for (objective, staleness, lr), rows in groups.items():
        known = [r.collapsed for r in rows if r.collapsed is not None]
        out.append(
            GroupResult(
                objective=objective,
                staleness=staleness,
                lr=lr,
                seeds=sorted(r.seed for r in rows),
                pass1=summarize([r.final_pass1 for r in rows]),
                reward=summarize([r.final_reward for r in rows]),
                collapsed=sum(known),
                collapse_known=len(known),
                extra={k: summarize([_num(r.extra.get(k)) for r in rows]) for k in extra_keys},
            )
        )
    return sorted(out, key=lambda g: (order.get(g.objective, 1 << 30), g.lr or 0.0, g.staleness))


def run_overview(run: RunData) -> list[tuple[str, str]]:
    """Headline facts of a run as (label, formatted value) pairs."""
    facts: list[tuple[str, str]] = [("steps logged", str(len(run)))]
    if len(run):
        facts.append(("step range", f"{int(run.steps[0])} – {int(run.steps[-1])}"))
    if run.has("policy_version"):
        facts.append(("last policy version", fmt(run.last("policy_version"))))
    if run.has("reward/mean"):
        facts.append(
            ("final train reward", f"{fmt(final_mean(run, 'reward/mean'))} (mean of last {_tail(run)} steps)")
        )
    if run.evals:
        first, last = run.evals[0], run.evals[-1]
        best = max(run.evals, key=lambda e: e.pass1 if math.isfinite(e.pass1) else -math.inf)
        span = f"{fmt(first.pass1)} (step {first.step}) → {fmt(last.pass1)} (step {last.step})"
        facts.append(("held-out pass@1 first → last", span))
        facts.append(("best held-out pass@1", f"{fmt(best.pass1)} (step {best.step})"))
    if run.staleness_hist is not None:
        counts = run.staleness_hist.sum(axis=0)
        if counts.sum() > 0:
            mean = float((np.arange(len(counts)) * counts).sum() / counts.sum())
            facts.append(("staleness mean / max", f"{mean:.2f} / {int(np.nonzero(counts)[0].max())}"))
    elif run.has("staleness/mean"):
        mean, top = np.nanmean(run.series("staleness/mean")), run.last("staleness/max")
        if run.has("staleness/max"):
            top = np.nanmax(run.series("staleness/max"))
        facts.append(("staleness mean / max", f"{fmt(mean)} / {fmt(top)}"))
    for key, value in run.summary.items():
        facts.append((f"summary: {key}", fmt(value)))
    return facts


def metric_rows(run: RunData) -> list[list[str]]:
    """One row per logged scalar: key, last, mean of the final 10% of steps, min, max, finite count."""
    rows = []
    for key, values in run.scalars.items():
        finite = values[np.isfinite(values)]
        if not len(finite):
            rows.append([key, "—", "—", "—", "—", f"0/{len(values)}"])
            continue
        rows.append(
            [
                key,
                fmt(finite[-1]),
                fmt(final_mean(run, key)),
                fmt(finite.min()),
                fmt(finite.max()),
                f"{len(finite)}/{len(values)}",
            ]
        )
    return rows


def final_mean(run: RunData, key: str) -> float:
    """Mean of the finite values of `key` over the last FINAL_FRACTION of the steps."""
    tail = run.series(key)[-_tail(run) :]
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if len(tail) else math.nan


def _tail(run: RunData) -> int:
    return max(1, math.ceil(len(run) * FINAL_FRACTION))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → {"a.b.c": leaf}; lists stay leaves."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_split(configs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Split the flattened configs of several cells into keys shared by all and keys that vary.

    Returns (common key → value, varying key → its distinct values in first-seen order).
    """
    flats = [flatten(c) for c in configs if c]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    common, varying = {}, {}
    for key in keys:
        distinct: dict[str, Any] = {}
        for f in flats:
            value = f.get(key, "<absent>")
            distinct.setdefault(json.dumps(value, sort_keys=True, default=str), value)
        if len(distinct) == 1:
            common[key] = next(iter(distinct.values()))
        else:
            varying[key] = list(distinct.values())
    return common, varying


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
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _num(value: Any) -> float:
    return value if isinstance(value, float) else math.nan
