"""The plots of a study: final pass@1 against staleness (and learning rate), and per-objective curves.

Error bars are mean ± one sample standard deviation (ddof=1) over seeds, with each seed drawn as a dot
(a cross when the study marked that seed collapsed), so a reader sees the spread as well as the summary.
Curves are the mean over seeds at each step (a band of ± one std across seeds), one panel per staleness.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullFormatter

from asympo.report.figures import RAW_ALPHA, Plot, empty_note, legend, new_figure, palette, save, wants_log
from asympo.report.runs import RunData
from asympo.report.stats import align, auto_window, nan_mean_std, smooth, summarize
from asympo.report.studies import ResultRow, StudyData

EVAL_KEY = "pass@1 (held-out)"
"""Pseudo-key of the held-out pass@1 curve, read from each cell's eval.jsonl instead of metrics.jsonl."""


@dataclass(frozen=True)
class Curve:
    """A per-objective curve figure: which metric, which file, and the words around it."""

    key: str
    stem: str
    title: str
    ylabel: str
    caption: str


# Drawn in this order; a curve whose key no cell logged is skipped.
CURVES = (
    Curve(EVAL_KEY, "curves_pass1", "Held-out pass@1", "held-out pass@1", "Held-out pass@1 during training"),
    Curve("reward/mean", "curves_reward", "Training reward", "batch-mean reward", "Training reward"),
    Curve(
        "nll/ratio", "curves_nll_ratio", "nll/ratio (neg / pos)", "nll/ratio",
        "The scale-imbalance diagnostic: mean NLL of negative- over positive-advantage responses",
    ),
    Curve("nll/pos", "curves_nll_pos", "nll/pos", "mean token NLL", "Mean NLL of positive-advantage responses"),
    Curve("nll/neg", "curves_nll_neg", "nll/neg", "mean token NLL", "Mean NLL of negative-advantage responses"),
    Curve("grad/norm", "curves_grad_norm", "grad/norm", "L2 norm", "Total gradient norm"),
    Curve(
        "grad/norm_pos", "curves_grad_norm_pos", "grad/norm_pos", "L2 norm",
        "Gradient norm of the positive-advantage terms alone",
    ),
    Curve(
        "grad/norm_neg", "curves_grad_norm_neg", "grad/norm_neg", "L2 norm",
        "Gradient norm of the negative-advantage terms alone",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Series:
    """One line in a study plot: an objective, and its learning rate when the study varies it."""

    objective: str
    lr: float | None

    def label(self, with_lr: bool) -> str:
        return f"{self.objective} lr={self.lr:g}" if with_lr and self.lr is not None else self.objective


def plot_study(study: StudyData, out_dir: Path, window: int | None = None) -> list[Plot]:
    """Write every plot the study's data supports into `out_dir`."""
    colors = palette(study.objectives)
    plots = []
    if study.rows:
        plots.append(final_vs_staleness_plot(study, out_dir, colors))
        if len(study.result_lrs) > 1:
            plots.append(final_vs_lr_plot(study, out_dir, colors))
    for curve in CURVES:
        if any(_curve_of(cell.run, curve.key) is not None for cell in study.cells):
            plots.append(_curves_plot(study, out_dir, colors, curve, window))
    return plots


def _with_lr(study: StudyData, source: str) -> bool:
    """Whether lines must be split by learning rate: final plots follow results.csv, curves the cells."""
    return len(study.result_lrs if source == "results" else study.cell_lrs) > 1


def _series_of(objective: str, lr: float | None, with_lr: bool) -> Series:
    return Series(objective, lr if with_lr else None)


def _linestyles(study: StudyData) -> dict[float | None, str]:
    styles = ["-", "--", ":", "-."]
    return {
        lr: styles[i % len(styles)]
        for i, lr in enumerate([None, *sorted({*study.result_lrs, *study.cell_lrs})])
    }


def final_vs_staleness_plot(study: StudyData, out_dir: Path, colors: dict[str, str]) -> Plot:
    with_lr = _with_lr(study, "results")
    groups: dict[Series, dict[int, list[ResultRow]]] = defaultdict(lambda: defaultdict(list))
    for row in study.rows:
        groups[_series_of(row.objective, row.lr, with_lr)][row.staleness].append(row)
    levels = study.staleness_levels
    span = (max(levels) - min(levels)) or 1.0
    fig, axes = new_figure(1, 2, panel=(6.2, 4.2))
    styles = _linestyles(study)
    starts = [r.extra.get("start_pass1") for r in study.rows]
    starts = [s for s in starts if isinstance(s, float) and math.isfinite(s)]
    for ax, field, ylabel in (
        (axes[0, 0], "final_pass1", "final held-out pass@1"),
        (axes[0, 1], "final_reward", "final training reward"),
    ):
        for i, (series, by_level) in enumerate(groups.items()):
            # Spread the objectives a little along x so that their error bars do not overlap.
            offset = (i - (len(groups) - 1) / 2) * 0.015 * span
            color = colors[series.objective]
            xs, means, stds = [], [], []
            for level in sorted(by_level):
                values = [getattr(r, field) for r in by_level[level]]
                s = summarize(values)
                if s.n == 0:
                    continue
                xs.append(level + offset)
                means.append(s.mean)
                stds.append(s.std if s.n > 1 else 0.0)
                for r, v in zip(by_level[level], values):
                    ax.plot(
                        level + offset,
                        v,
                        "x" if r.collapsed else ".",
                        color=color,
                        alpha=0.45,
                        markersize=6 if r.collapsed else 5,
                    )
            ax.errorbar(
                xs,
                means,
                yerr=stds,
                color=color,
                marker="o",
                capsize=3,
                linewidth=1.6,
                linestyle=styles.get(series.lr, "-"),
                label=series.label(with_lr),
            )
        if field == "final_pass1" and starts:
            ax.axhline(np.mean(starts), color="gray", linestyle="--", linewidth=1, label="start (mean)")
        ax.set_xticks(levels)
        ax.set_xlabel("staleness (versions)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.capitalize()} vs staleness")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    return Plot(
        save(fig, out_dir / "final_vs_staleness.png"),
        "Final pass@1 vs staleness",
        "Mean ± one sample std (ddof=1) over seeds; dots are single seeds, crosses seeds marked collapsed. "
        "Objectives are shifted slightly along x so that their bars do not overlap.",
    )


def final_vs_lr_plot(study: StudyData, out_dir: Path, colors: dict[str, str]) -> Plot:
    levels = sorted({r.staleness for r in study.rows})
    nrows, ncols = _grid(len(levels))
    fig, axes = new_figure(nrows, ncols, panel=(5.0, 3.8), sharey=True)
    for ax, level in zip(axes.flat, levels):
        by_obj: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in study.rows:
            if r.staleness == level and r.lr is not None:
                by_obj[r.objective][r.lr].append(r.final_pass1)
        for objective, by_lr in by_obj.items():
            lrs = sorted(by_lr)
            summaries = [summarize(by_lr[lr]) for lr in lrs]
            ax.errorbar(
                lrs,
                [s.mean for s in summaries],
                yerr=[s.std if s.n > 1 else 0.0 for s in summaries],
                color=colors[objective],
                marker="o",
                capsize=3,
                label=objective,
            )
        ax.set_xscale("log")
        tested = sorted({lr for by_lr in by_obj.values() for lr in by_lr})
        ax.set_xticks(tested, labels=[f"{lr:g}" for lr in tested])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final held-out pass@1")
        ax.set_title(f"staleness {level}")
        legend(ax, loc="best")
    for ax in list(axes.flat)[len(levels) :]:
        ax.set_visible(False)
    return Plot(
        save(fig, out_dir / "final_vs_lr.png"),
        "Final pass@1 vs learning rate",
        "Learning-rate sensitivity: mean ± one sample std over seeds of the final held-out pass@1, per objective.",
    )


def _curve_of(run: RunData | None, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps [S], values [S]) of `key` in a cell's run, None when it has no finite value."""
    if run is None:
        return None
    curve = (run.eval_steps, run.eval_pass1) if key == EVAL_KEY else (run.steps, run.series(key))
    return curve if np.isfinite(curve[1]).any() else None


def _curves_plot(
    study: StudyData, out_dir: Path, colors: dict[str, str], spec: Curve, window: int | None
) -> Plot:
    with_lr = _with_lr(study, "cells")
    styles = _linestyles(study)
    levels = study.staleness_levels
    nrows, ncols = _grid(len(levels))
    # One staleness level (an lr sweep): one wide panel, so many legend entries still leave room for it.
    panel = (7.2, 4.6) if len(levels) == 1 else (4.6, 3.4)
    fig, axes = new_figure(nrows, ncols, panel=panel, sharey=True)
    curves: dict[tuple[int, Series], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for cell in study.cells:
        curve = _curve_of(cell.run, spec.key)
        if curve is not None:
            series = _series_of(cell.info.objective, cell.info.lr, with_lr)
            curves[(cell.info.staleness, series)].append(curve)
    # Legend and drawing order follow the study's objective order, not the cells' directory names.
    rank = {objective: i for i, objective in enumerate(study.objectives)}
    curves = dict(sorted(curves.items(), key=lambda kv: (rank[kv[0][1].objective], kv[0][1].lr or 0.0)))
    all_values = []
    for ax, level in zip(axes.flat, levels):
        drawn = False
        for (lvl, series), group in curves.items():
            if lvl != level:
                continue
            steps, matrix = align(group)
            mean, std = nan_mean_std(matrix)
            w = 1 if spec.key == EVAL_KEY else (window or auto_window(len(steps)))  # evaluations are few
            m, s = smooth(mean, w), smooth(std, w)
            color = colors[series.objective]
            if w > 1:  # the unsmoothed seed mean, faint, under the smoothed line
                finite = np.isfinite(mean)
                ax.plot(steps[finite], mean[finite], color=color, alpha=RAW_ALPHA * 0.8, linewidth=0.7)
            ax.plot(
                steps,
                m,
                color=color,
                linewidth=1.6,
                linestyle=styles.get(series.lr, "-"),
                label=series.label(with_lr),
                marker="o" if spec.key == EVAL_KEY else None,
                markersize=3,
            )
            if len(group) > 1:
                ax.fill_between(steps, m - s, m + s, color=color, alpha=0.12, linewidth=0)
            all_values.append(matrix)
            drawn = True
        if not drawn:
            empty_note(ax, "no data")
        ax.set_title(f"staleness {level}")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(spec.ylabel)
    for ax in list(axes.flat)[len(levels) :]:
        ax.set_visible(False)
    if spec.key == "nll/ratio" or spec.key.startswith("grad/"):
        if wants_log(*all_values):
            for ax in axes.flat:
                ax.set_yscale("log")
        if spec.key == "nll/ratio":
            for ax in axes.flat:
                ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    handles, labels = _unique_handles(axes)
    if len(labels) > 8:  # a long legend goes under the panels, in columns, instead of squeezing them
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(4, -(-len(labels) // 3)), fontsize="small"
        )
    else:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.suptitle(f"{spec.title} per objective (mean over seeds)")
    smoothing = (
        "" if spec.key == EVAL_KEY else " Bold: smoothed with a centred moving average; faint: unsmoothed."
    )
    return Plot(
        save(fig, out_dir / f"{spec.stem}.png"),
        spec.title,
        f"{spec.caption}, one panel per staleness: the mean over seeds at each step (band: ± one std across "
        f"seeds).{smoothing}",
    )


def _grid(panels: int) -> tuple[int, int]:
    """Rows × columns for one panel per staleness level: at most three across, four as 2 × 2."""
    ncols = 2 if panels == 4 else min(3, panels)
    return -(-panels // ncols), ncols


def _unique_handles(axes: np.ndarray) -> tuple[list, list[str]]:
    seen: dict[str, object] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen)
