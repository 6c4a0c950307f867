"""The report's PNGs: a run's reward, NLL of positives and negatives, staleness, response lengths,
per-response weights, losses, gradients and time (all but reward and staleness declared as `RunFigure`s);
a study's final pass@1 against staleness (and learning rate) and its per-objective curves (`CURVES`).

Figures are built with `matplotlib.figure.Figure` directly and saved through the Agg canvas, so the
report never switches the global pyplot backend of the process that calls it (a notebook, a trainer).
A plot whose keys the data never logged is skipped, so a run of any objective (or a user objective with
its own metrics) gets the plots its data supports; run keys no plot claims go to an "other metrics" grid.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from asympo.report.data import RunData, Series, StudyData, align, auto_window, nan_mean_std, smooth, summarize

DPI, RAW_ALPHA, STEP_LABEL, OTHERS_PER_FIGURE = 100, 0.25, "optimiser step", 12
# Fixed colours for the keys that appear together in several plots, so that "pos" is always green.
KEY_COLORS = {"pos": "tab:green", "neg": "tab:red", "total": "tab:blue", "ratio": "tab:purple",
              "time/generate": "tab:orange", "time/wait": "tab:gray", "throughput/tokens_per_s": "tab:green",
              "nll/len_corr": "tab:purple", "weight_min": "tab:green", "weight_max": "tab:red",
              "staleness/max": "tab:red"}  # fmt: skip
REWARD_COLOR, EVAL_COLOR = "tab:blue", "tab:orange"
DASHED = {"time/wait", "staleness/max"}
"""Keys drawn dashed: they often coincide with another line of their panel (in a synchronous run)."""
UNSMOOTHED = {"staleness/max"}
"""Keys drawn as logged: a moving average of per-step maxima is no maximum."""


@dataclass(frozen=True)
class Plot:
    """A PNG written by the report and the words shown with it."""

    path: Path
    title: str
    caption: str


def new_figure(panels=1, ncols=1, *, panel=(6.4, 3.4), **subplot_kw) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of `panels` panels of `panel` inches each, `ncols` across (the last
    row's unused ones hidden); axes as a 2-D array."""
    nrows = -(-panels // ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    for i, ax in enumerate(axes.flat):
        ax.grid(alpha=0.3)
        ax.set_visible(i < panels)
    return fig, axes


def save(fig: Figure, path: Path, title: str, caption: str) -> Plot:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return Plot(path, title, caption)


def line(ax: Axes, x, y, *, label: str, color: str, window: int) -> bool:
    """Plot y against x: the raw values as a faint line, the smoothed curve (labelled) on top.

    Returns False, drawing nothing, when y has no finite value. Unsmoothed, it draws markers when there
    are few points, so that a single evaluation or a two-step run is still visible.
    """
    x, y = np.asarray(x), np.asarray(y, dtype=np.float64)
    finite = np.isfinite(y)
    if not finite.any():
        return False
    style = "--" if label in DASHED else "-"
    if window > 1 and label not in UNSMOOTHED:
        ax.plot(x[finite], y[finite], color=color, alpha=RAW_ALPHA, linewidth=0.8, linestyle=style)
        ax.plot(x, smooth(y, window), color=color, linewidth=1.8, label=label, linestyle=style)
    else:
        marker = "o" if finite.sum() <= 20 else None
        ax.plot(x[finite], y[finite], color=color, linewidth=1.6, label=label, marker=marker, markersize=3,
                linestyle=style)  # fmt: skip
    return True


def wants_log(*arrays: np.ndarray) -> bool:
    """True when all finite values are positive and span more than 30× (a log axis reads better)."""
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    return bool(len(values) >= 2 and (values > 0).all() and values.max() / values.min() > 30)


def legend(ax: Axes) -> None:
    """A legend only when something is labelled (an empty legend warns)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", framealpha=0.8)


def empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


# ------------------------------------------------------------------------------------------------- run

SPO_DEFAULT_NEG_SCALE = 0.5
"""`asympo.objectives.spo`'s default `neg_scale` (read here without importing torch; a test keeps it equal)."""
NEG_WEIGHT = "*/neg_weight"
"""Pseudo-key: `<objective>/neg_weight`, whatever the objective's metric prefix (see `RunData.series`)."""


@dataclass(frozen=True)
class Panel:
    """One axes of a run figure: a line per logged key, coloured by `key_color`; reference lines
    `hlines` (y, legend label) when it has data; a log y axis if `log_if_wide` and the values are positive
    and span more than 30x."""

    keys: tuple[str, ...]
    title: str
    ylabel: str
    hlines: tuple[tuple[float, str], ...] = ()
    log_if_wide: bool = False


@dataclass(frozen=True)
class RunFigure:
    """A run PNG of one or more panels of `size` inches each; skipped when none of its keys was logged."""

    stem: str
    title: str
    caption: str
    panels: tuple[Panel, ...]
    rows: int = 1
    size: tuple[float, float] = (8.0, 3.6)


def key_color(key: str) -> str:
    return KEY_COLORS.get(key) or KEY_COLORS.get(key.rsplit("/", 1)[-1].removeprefix("norm_"), "tab:blue")


def smoothing_words(window: int) -> str:
    if window <= 1:
        return "Lines join the per-step values (no smoothing)."
    return f"Faint: raw per step; bold: centred moving average over {window} steps."


def run_figures(run: RunData, window: int) -> list[RunFigure]:
    """The declarative run plots (reward and staleness have their own functions)."""
    learner = run.config.get("learner") if isinstance(run.config.get("learner"), dict) else {}
    clip = learner.get("max_grad_norm")
    is_positive = isinstance(clip, int | float) and not isinstance(clip, bool) and clip > 0
    clip_line = ((float(clip), f"clip threshold ({clip:g})"),) if is_positive else ()
    neg_lines: tuple[tuple[float, str], ...] = ((1.0, "equal weight (1)"),)
    if learner.get("objective") == "spo":
        hparams = learner.get("hparams") if isinstance(learner.get("hparams"), dict) else {}
        scale = hparams.get("neg_scale", SPO_DEFAULT_NEG_SCALE)
        neg_lines += ((float(scale), f"spo neg_scale ({scale:g})"),)
    smooth_words = smoothing_words(window)
    return [
        RunFigure(
            "nll", "NLL of positive and negative responses",
            "Mean per-response token NLL under the current policy of positive- and negative-advantage "
            "responses, and their ratio. In the first study (docs/results.md) the failure under staleness "
            "showed as a rising nll/pos (the policy pushed off its own correct answers), with reward "
            "oscillations and rising entropy; nll/ratio did not rise for the objective that collapsed, and it "
            "rises during healthy learning too, because learning lowers nll/pos. Gaps are steps whose batch "
            "had no response of that sign. " + smooth_words,
            (Panel(("nll/pos", "nll/neg"), "Current-policy NLL of positive vs negative responses",
                   "mean token NLL"),
             Panel(("nll/ratio",), "nll/ratio = nll/neg / nll/pos", "nll/ratio", ((1.0, "equal (1)"),),
                   log_if_wide=True)),
            rows=2, size=(8.0, 3.0),
        ),
        RunFigure(
            "lengths", "Response lengths",
            "Mean length in tokens of positive- and negative-advantage responses, and the correlation across "
            "the batch's responses between a response's length and its mean token NLL (0: per-token NLL does "
            "not depend on length). Per-response normalisation matters when these differ. " + smooth_words,
            (Panel(("len/pos", "len/neg"), "Mean response length by advantage sign", "tokens"),
             Panel(("nll/len_corr",), "Correlation of response length and NLL", "Pearson r",
                   ((0.0, "none (0)"),))),
            rows=2, size=(8.0, 3.0),
        ),
        RunFigure(
            "weights", "Per-response weights",
            "For objectives with per-response weights w_i (asympo: 1/l_i): the effective negative weight, "
            "mean w_i on negative- over positive-advantage responses (spo's is its neg_scale, drawn as a "
            "reference when the run is spo); the spread of the weights (std / mean) and their range. "
            + smooth_words,
            (Panel((NEG_WEIGHT,), "Effective negative weight", "mean w (neg) / mean w (pos)", neg_lines),
             Panel(("*/weight_cv",), "Weight spread", "std / mean"),
             Panel(("*/weight_min", "*/weight_max"), "Weight range", "w_i", log_if_wide=True)),
            size=(4.4, 3.4),
        ),
        RunFigure(
            "loss", "Loss terms",
            "Signed contributions of positive- and negative-advantage responses to the loss, and the total. "
            + smooth_words,
            (Panel(("loss/pos", "loss/neg", "loss/total"),
                   "Loss: signed contributions of positive and negative advantages", "loss (minimised)",
                   ((0.0, ""),)),),
        ),
        RunFigure(
            "grad", "Gradient norms",
            "Gradient norm before clipping, with the clipping threshold; norm_pos / norm_neg are the norms of "
            "the positive- and negative-advantage terms alone, when the objective logs them. "
            + smooth_words,
            (Panel(("grad/norm", "grad/norm_pos", "grad/norm_neg"),
                   "Gradient norms (total, and of the positive / negative terms)", "L2 norm", clip_line,
                   log_if_wide=True),),
        ),
        RunFigure(
            "time", "Time and throughput",
            "Per-step wall time of generation, training and waiting for rollouts (in asynchronous runs "
            "generation overlaps training, so these do not add up to the step time), and training "
            "throughput.",
            (Panel(("time/generate", "time/train", "time/wait"), "Seconds per step", "seconds"),
             Panel(("throughput/tokens_per_s",), "Throughput", "tokens / s")),
            size=(5.4, 3.6),
        ),
    ]  # fmt: skip


def plot_run(run: RunData, out_dir: Path, window: int | None = None) -> list[Plot]:
    """Write every plot the run's data supports into `out_dir`; `window` smooths (default: auto)."""
    window = window or auto_window(len(run))
    # The declared figures, nll first, around the two drawn by their own functions: reward, nll, staleness, ...
    nll, *rest = (figure_plot(run, out_dir, window, spec) for spec in run_figures(run, window))
    plots = [reward_plot(run, out_dir, window), nll, staleness_plot(run, out_dir, window), *rest]
    return [p for p in plots if p is not None] + other_metrics_plots(run, out_dir, window)


def figure_plot(run: RunData, out_dir: Path, window: int, spec: RunFigure) -> Plot | None:
    if not any(run.has(k) for panel in spec.panels for k in panel.keys):
        return None
    n = len(spec.panels)
    fig, axes = new_figure(n, n // spec.rows, panel=spec.size, sharex=spec.rows > 1)
    for ax, panel in zip(axes.flat, spec.panels):
        draw_panel(ax, run, panel, window)
    for ax in axes[-1]:
        ax.set_xlabel(STEP_LABEL)
    return save(fig, out_dir / f"{spec.stem}.png", spec.title, spec.caption)


def draw_panel(ax: Axes, run: RunData, panel: Panel, window: int) -> None:
    drawn = [k for k in panel.keys if line(ax, run.steps, run.series(k), label=run.key(k),
                                           color=key_color(run.key(k)), window=window)]  # fmt: skip
    if drawn:
        for y, label in panel.hlines:
            ax.axhline(y, color="gray", linestyle=":", linewidth=1, label=label or None)
        if panel.log_if_wide and wants_log(*(run.series(k) for k in drawn)):
            ax.set_yscale("log")
    else:
        empty_note(ax, "not logged: " + ", ".join(run.key(k) for k in panel.keys))
    ax.set(title=panel.title, ylabel=panel.ylabel)
    legend(ax)


def reward_plot(run: RunData, out_dir: Path, window: int) -> Plot | None:
    if not run.has("reward/mean") and not run.evals:
        return None
    fig, axes = new_figure(panel=(8.0, 4.0))
    ax = axes[0, 0]
    ax.set(xlabel=STEP_LABEL, ylabel="reward", title="Training reward and held-out pass@1")
    x, mean = run.steps, run.series("reward/mean")
    line(ax, x, mean, label="train reward (batch mean)", color=REWARD_COLOR, window=window)
    # Held-out accuracy shares the axis when rewards live in [0, 1] (the exact-answer tasks); otherwise
    # it gets its own, so neither scale is squeezed.
    finite = mean[np.isfinite(mean)]
    same_axis = len(finite) == 0 or (finite.min() >= -0.05 and finite.max() <= 1.05)
    if run.has("reward/std"):
        m, s = smooth(mean, window), smooth(run.series("reward/std"), window)
        lo, hi = (m - s, m + s) if not same_axis else (np.clip(m - s, 0, 1), np.clip(m + s, 0, 1))
        ax.fill_between(x, lo, hi, color=REWARD_COLOR, alpha=0.12, label="± batch std")
    eval_ax = ax if same_axis else ax.twinx()
    if run.evals:
        eval_ax.plot(run.eval_steps, run.eval_pass1, "o-", color=EVAL_COLOR, linewidth=1.4, markersize=5,
                     label="held-out pass@1")  # fmt: skip
        for i, label in enumerate(sorted({k for e in run.evals for k in e.pass_k})):
            points = [(e.step, e.pass_k[label]) for e in run.evals if label in e.pass_k]
            eval_ax.plot(
                *zip(*points), "s--", color=f"C{(i + 3) % 10}", markersize=4, linewidth=1, label=label
            )
        eval_ax.set_ylabel("reward / held-out accuracy" if same_axis else "held-out accuracy")
    if same_axis:
        legend(ax)
    else:
        handles = [*ax.get_legend_handles_labels()[0], *eval_ax.get_legend_handles_labels()[0]]
        ax.legend(handles=handles, fontsize="small")
    return save(
        fig,
        out_dir / "reward.png",
        "Reward",
        "Batch-mean training reward (band: ± the within-batch reward std, within [0, 1] for rewards in "
        f"[0, 1]) and held-out pass@1 at each evaluation. {smoothing_words(window)}",
    )


STALENESS_PANEL = Panel(("staleness/mean", "staleness/max"), "Staleness per step", "staleness (versions)")


def staleness_plot(run: RunData, out_dir: Path, window: int) -> Plot | None:
    hist, has_series = run.staleness_hist, run.has("staleness/mean") or run.has("staleness/max")
    if hist is None and not has_series:
        return None
    panels = int(hist is not None) + int(has_series)
    fig, axes = new_figure(panels, panels, panel=(5.4, 3.6))
    ax_iter = iter(axes.flat)
    if hist is not None:
        ax = next(ax_iter)
        counts = run.staleness_counts
        total = counts.sum()
        levels = np.arange(len(counts))
        ax.bar(levels, counts / total if total > 0 else counts, color="tab:cyan", edgecolor="tab:blue")
        # At least levels 0..2 on the axis: a synchronous run's single bar would otherwise fill the panel.
        ax.set_xlim(-0.6, max(len(levels) - 1, 2) + 0.6)
        mean = run.staleness_mean
        ax.axvline(mean, color="tab:red", linestyle="--", linewidth=1.2, label=f"mean {mean:.2f}")
        ax.set(xlabel="staleness (learner version − sample version)", ylabel="fraction of trained samples",
               title=f"Staleness histogram ({int(total)} samples, {len(run)} steps)")  # fmt: skip
        if len(levels) <= 20:
            ax.set_xticks(np.arange(max(len(levels), 3)))
        legend(ax)
    if has_series:
        ax = next(ax_iter)
        draw_panel(ax, run, STALENESS_PANEL, window)
        ax.set_xlabel(STEP_LABEL)
    return save(
        fig,
        out_dir / "staleness.png",
        "Staleness",
        "Staleness = learner version at the optimiser step − the policy version that generated the sample. "
        "Histogram: the per-step staleness/hist counts summed over all steps.",
    )


def other_metrics_plots(run: RunData, out_dir: Path, window: int) -> list[Plot]:
    """Every other logged scalar (entropy, KL, user-objective metrics, ...) in a grid of small panels."""
    panels = [STALENESS_PANEL, *(panel for spec in run_figures(run, 1) for panel in spec.panels)]
    claimed = {"reward/mean", "reward/std", *(run.key(k) for panel in panels for k in panel.keys)}
    keys = [k for k in run.scalars if k not in claimed and run.has(k)]
    plots = []
    for page, start in enumerate(range(0, len(keys), OTHERS_PER_FIGURE)):
        chunk = keys[start : start + OTHERS_PER_FIGURE]
        fig, axes = new_figure(len(chunk), min(3, len(chunk)), panel=(4.2, 2.8))
        for ax, key in zip(axes.flat, chunk):
            line(ax, run.steps, run.series(key), label=key, color="tab:blue", window=window)
            ax.set_title(key, fontsize="medium")
            ax.set_xlabel(STEP_LABEL, fontsize="small")
        stem, title = ("", "") if page == 0 else (f"_{page + 1}", f" ({page + 1})")
        caption = "Every other scalar the run logged: " + ", ".join(chunk) + "."
        plots.append(save(fig, out_dir / f"other_metrics{stem}.png", f"Other metrics{title}", caption))
    return plots


# ----------------------------------------------------------------------------------------------- study

EVAL_KEY = "pass@1 (held-out)"
"""Pseudo-key of the held-out pass@1 curve, read from each cell's eval.jsonl instead of metrics.jsonl."""


@dataclass(frozen=True)
class Curve:
    """A per-objective curve figure: which metric, which file, and the words around it: `note` says what
    the first study (docs/results.md) found about it; `hline` is a dotted reference line (1 for a ratio
    of equals, 0 for a correlation); `log_if_wide` asks for a log y axis when all values are positive and
    span more than 30x."""

    key: str
    stem: str
    title: str
    ylabel: str
    caption: str
    note: str = ""
    hline: float | None = None
    log_if_wide: bool = False


# Drawn in this order; a curve whose key no cell logged is skipped.
CURVES = (
    Curve(EVAL_KEY, "curves_pass1", "Held-out pass@1", "held-out pass@1", "Held-out pass@1 during training"),
    Curve("reward/mean", "curves_reward", "Training reward", "batch-mean reward", "Training reward",
          "In docs/results.md failure under staleness showed as oscillations of it."),
    Curve("nll/pos", "curves_nll_pos", "nll/pos", "mean token NLL",
          "Mean NLL of positive-advantage responses",
          "In docs/results.md its rise above the starting value was the clearest sign of failure under "
          "staleness."),
    Curve("nll/neg", "curves_nll_neg", "nll/neg", "mean token NLL",
          "Mean NLL of negative-advantage responses"),
    Curve("nll/ratio", "curves_nll_ratio", "nll/ratio (neg / pos)", "nll/ratio",
          "Mean NLL of negative- over positive-advantage responses",
          "It rises as learning lowers nll/pos, and in docs/results.md it did not rise for the objective that "
          "collapsed under staleness.", 1.0, True),
    Curve("policy/entropy", "curves_entropy", "policy/entropy", "mean token entropy",
          "Policy entropy on the trained responses",
          "In docs/results.md it rose with failure under staleness."),
    Curve("len/pos", "curves_len_pos", "len/pos", "tokens", "Mean length of positive-advantage responses"),
    Curve("len/neg", "curves_len_neg", "len/neg", "tokens", "Mean length of negative-advantage responses"),
    Curve("nll/len_corr", "curves_nll_len_corr", "nll/len_corr", "Pearson r",
          "Correlation of response length and mean token NLL across each batch's responses", "", 0.0),
    Curve(NEG_WEIGHT, "curves_neg_weight", "Effective negative weight", "mean w (neg) / mean w (pos)",
          "Mean per-response weight on negative- over positive-advantage responses (<objective>/neg_weight,"
          " logged by objectives with per-response weights; spo's is its neg_scale)", "", 1.0),
    Curve("grad/norm", "curves_grad_norm", "grad/norm", "L2 norm", "Total gradient norm", "", None, True),
    Curve("grad/norm_pos", "curves_grad_norm_pos", "grad/norm_pos", "L2 norm",
          "Gradient norm of the positive-advantage terms alone", "", None, True),
    Curve("grad/norm_neg", "curves_grad_norm_neg", "grad/norm_neg", "L2 norm",
          "Gradient norm of the negative-advantage terms alone", "", None, True),
)  # fmt: skip


def plot_study(study: StudyData, out_dir: Path, window: int | None = None) -> list[Plot]:
    """Write every plot the study's data supports into `out_dir`."""
    cmap = matplotlib.colormaps["tab10" if len(study.objectives) <= 10 else "tab20"]
    colors = {o: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, o in enumerate(study.objectives)}
    lrs = [None, *sorted({*study.result_lrs, *study.cell_lrs})]
    styles = {lr: ["-", "--", ":", "-."][i % 4] for i, lr in enumerate(lrs)}  # line style per learning rate
    plots = []
    if study.rows:
        plots.append(final_vs_staleness_plot(study, out_dir, colors, styles))
        if study.varies_lr:
            plots.append(final_vs_lr_plot(study, out_dir, colors))
    curves = (curves_plot(study, out_dir, colors, styles, curve, window) for curve in CURVES)
    return plots + [p for p in curves if p is not None]


def errorbar(ax: Axes, xs: list, summaries: list, **kw) -> None:
    """Mean ± one sample std of each summary (no bar for a single seed)."""
    ax.errorbar(xs, [s.mean for s in summaries], yerr=[s.std if s.n > 1 else 0.0 for s in summaries],
                marker="o", capsize=3, **kw)  # fmt: skip


def final_vs_staleness_plot(study: StudyData, out_dir: Path, colors: dict, styles: dict) -> Plot:
    # The final plots split by the results' learning rates, the curves by the cells'.
    # Series in the order of results.csv (not `StudyData.groups`' order): the legend follows the file.
    groups: dict[Series, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for row in study.rows:
        groups[Series(row.objective, row.lr if study.varies_lr else None)][row.staleness].append(row)
    levels = study.staleness_levels
    span = (max(levels) - min(levels)) or 1.0
    fig, axes = new_figure(2, 2, panel=(6.2, 4.2))
    start = summarize([r.number("start_pass1") for r in study.rows]).mean
    finals = {"final_pass1": "final held-out pass@1", "final_reward": "final training reward"}
    for ax, (field, ylabel) in zip(axes.flat, finals.items()):
        for i, (series, by_level) in enumerate(groups.items()):
            # Spread the objectives a little along x so that their error bars do not overlap.
            offset = (i - (len(groups) - 1) / 2) * 0.015 * span
            color = colors[series.objective]
            xs, summaries = [], []
            for level in sorted(by_level):
                values = [getattr(r, field) for r in by_level[level]]
                if (s := summarize(values)).n == 0:
                    continue
                xs.append(level + offset)
                summaries.append(s)
                for r, v in zip(by_level[level], values):
                    marker, size = ("x", 6) if r.collapsed else (".", 5)
                    ax.plot(level + offset, v, marker, color=color, alpha=0.45, markersize=size)
            errorbar(ax, xs, summaries, color=color, linewidth=1.6, linestyle=styles.get(series.lr, "-"),
                     label=series.label())  # fmt: skip
        if field == "final_pass1" and math.isfinite(start):
            ax.axhline(start, color="gray", linestyle="--", linewidth=1, label="start (mean)")
        ax.set_xticks(levels)
        ax.set(xlabel="staleness (versions)", ylabel=ylabel, title=f"{ylabel.capitalize()} vs staleness")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return save(
        fig,
        out_dir / "final_vs_staleness.png",
        "Final pass@1 vs staleness",
        "Mean ± one sample std (ddof=1) over seeds; dots are single seeds, crosses seeds marked collapsed. "
        "Objectives are shifted slightly along x so that their bars do not overlap.",
    )


def final_vs_lr_plot(study: StudyData, out_dir: Path, colors: dict) -> Plot:
    levels = sorted({r.staleness for r in study.rows})
    fig, axes = new_figure(*per_level(levels), panel=(5.0, 3.8), sharey=True)
    for ax, level in zip(axes.flat, levels):
        by_obj: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in study.rows:
            if r.staleness == level and r.lr is not None:
                by_obj[r.objective][r.lr].append(r.final_pass1)
        for objective, by_lr in by_obj.items():
            lrs = sorted(by_lr)
            errorbar(ax, lrs, [summarize(by_lr[lr]) for lr in lrs], color=colors[objective], label=objective)
        ax.set_xscale("log")
        tested = sorted({lr for by_lr in by_obj.values() for lr in by_lr})
        ax.set_xticks(tested, labels=[f"{lr:g}" for lr in tested])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="learning rate", ylabel="final held-out pass@1", title=f"staleness {level}")
        legend(ax)
    return save(
        fig,
        out_dir / "final_vs_lr.png",
        "Final pass@1 vs learning rate",
        "Learning-rate sensitivity: mean ± one sample std over seeds of the final held-out pass@1, "
        "per objective.",
    )


def _curve_of(run: RunData | None, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps [S], values [S]) of `key` in a cell's run, None when it has no finite value."""
    if run is None:
        return None
    curve = (run.eval_steps, run.eval_pass1) if key == EVAL_KEY else (run.steps, run.series(key))
    return curve if np.isfinite(curve[1]).any() else None


def curves_plot(
    study: StudyData, out_dir: Path, colors: dict, styles: dict, spec: Curve, window: int | None
) -> Plot | None:
    """`spec`'s figure, None when no cell logged its key."""
    logged = [cell for cell in study.cells if _curve_of(cell.run, spec.key) is not None]
    if not logged:
        return None
    levels = study.staleness_levels
    # One staleness level (an lr sweep): one wide panel, so many legend entries still leave room for it.
    panel = (7.2, 4.6) if len(levels) == 1 else (4.6, 3.4)
    fig, axes = new_figure(*per_level(levels), panel=panel, sharey=True)
    # Legend and drawing order follow the study's objective order, not the cells' directory names.
    groups = {
        key: [_curve_of(cell.run, spec.key) for cell in cells]
        for key, cells in study.groups(logged, with_lr=len(study.cell_lrs) > 1).items()
    }
    is_eval = spec.key == EVAL_KEY  # evaluations are few: markers, no smoothing
    smoothed = False
    for (series, level), curves in groups.items():
        ax = axes.flat[levels.index(level)]
        steps, matrix = align(curves)
        mean, std = nan_mean_std(matrix)
        w = 1 if is_eval else (window or auto_window(len(steps)))
        smoothed |= w > 1
        m, s = smooth(mean, w), smooth(std, w)
        color = colors[series.objective]
        if w > 1:  # the unsmoothed seed mean, faint, under the smoothed line
            finite = np.isfinite(mean)
            ax.plot(steps[finite], mean[finite], color=color, alpha=RAW_ALPHA * 0.8, linewidth=0.7)
        ax.plot(steps, m, color=color, linewidth=1.6, linestyle=styles.get(series.lr, "-"),
                label=series.label(), marker="o" if is_eval else None, markersize=3)  # fmt: skip
        if len(curves) > 1:
            ax.fill_between(steps, m - s, m + s, color=color, alpha=0.12, linewidth=0)
    log = spec.log_if_wide and wants_log(
        *(np.concatenate([v for _, v in curves]) for curves in groups.values())
    )
    seen: dict[str, object] = {}  # legend label -> handle, over all panels
    for ax, level in zip(axes.flat, levels):
        if not ax.lines:
            empty_note(ax, "no data")
        ax.set(
            title=f"staleness {level}",
            xlabel=STEP_LABEL,
            ylabel=spec.ylabel,
            yscale="log" if log else "linear",
        )
        if spec.hline is not None:
            ax.axhline(spec.hline, color="gray", linestyle=":", linewidth=1)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    # A long legend goes under the panels, in columns, instead of squeezing them.
    where = dict(loc="outside lower center", ncols=min(4, -(-len(seen) // 3))) if len(seen) > 8 else {}
    fig.legend(list(seen.values()), list(seen), fontsize="small", **{"loc": "outside right upper", **where})
    fig.suptitle(f"{spec.title} per objective (mean over seeds)")
    smoothing = " Bold: smoothed with a centred moving average; faint: unsmoothed." if smoothed else ""
    caption = (
        f"{spec.caption}, one panel per staleness: the mean over seeds at each step (band: ± one std across "
        f"seeds).{smoothing}" + (f" {spec.note}" if spec.note else "")
    )
    return save(fig, out_dir / f"{spec.stem}.png", spec.title, caption)


def per_level(levels: list[int]) -> tuple[int, int]:
    """(panels, columns) for one panel per staleness level: at most three across, four as 2 × 2."""
    return len(levels), 2 if len(levels) == 4 else min(3, len(levels))
