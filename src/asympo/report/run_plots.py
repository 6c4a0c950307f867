"""The plots of one run: reward, the NLL balance diagnostic, staleness, losses, gradients, time.

Each plot function returns None (and writes nothing) when the run logged none of its keys, so a run
of any objective — or a user objective with its own metrics — gets the plots its data supports; keys
no plot claims go to the generic "other metrics" grid.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from asympo.report.figures import KEY_COLORS, Plot, empty_note, legend, line, new_figure, save, wants_log
from asympo.report.runs import RunData
from asympo.report.stats import auto_window, smooth

STEP_LABEL = "optimiser step"
OTHERS_PER_FIGURE = 12

REWARD_KEYS = ("reward/mean", "reward/std")
NLL_KEYS = ("nll/pos", "nll/neg", "nll/ratio")
STALENESS_KEYS = ("staleness/mean", "staleness/max")
LOSS_KEYS = ("loss/pos", "loss/neg", "loss/total")
GRAD_KEYS = ("grad/norm", "grad/norm_pos", "grad/norm_neg")
TIME_KEYS = ("time/generate", "time/train", "time/wait", "throughput/tokens_per_s")
CLAIMED = {*REWARD_KEYS, *NLL_KEYS, *STALENESS_KEYS, *LOSS_KEYS, *GRAD_KEYS, *TIME_KEYS}


def plot_run(run: RunData, out_dir: Path, window: int | None = None) -> list[Plot]:
    """Write every plot the run's data supports into `out_dir`; `window` smooths (default: auto)."""
    window = window or auto_window(len(run))
    makers: list[Callable[[RunData, Path, int], Plot | None]] = [
        reward_plot,
        nll_plot,
        staleness_plot,
        loss_plot,
        grad_plot,
        time_plot,
    ]
    plots = [p for make in makers if (p := make(run, out_dir, window)) is not None]
    return plots + other_metrics_plots(run, out_dir, window)


def reward_plot(run: RunData, out_dir: Path, window: int) -> Plot | None:
    if not run.has("reward/mean") and not run.evals:
        return None
    fig, axes = new_figure(panel=(8.0, 4.0))
    ax = axes[0, 0]
    x, mean = run.steps, run.series("reward/mean")
    line(ax, x, mean, label="train reward (batch mean)", color=KEY_COLORS["reward"], window=window)
    if run.has("reward/std"):
        m, s = smooth(mean, window), smooth(run.series("reward/std"), window)
        ax.fill_between(x, m - s, m + s, color=KEY_COLORS["reward"], alpha=0.12, label="± batch std")
    # Held-out accuracy shares the axis when rewards live in [0, 1] (the exact-answer tasks); otherwise
    # it gets its own, so neither scale is squeezed.
    finite = mean[np.isfinite(mean)]
    same_axis = len(finite) == 0 or (finite.min() >= -0.05 and finite.max() <= 1.05)
    eval_ax = ax if same_axis else ax.twinx()
    if run.evals:
        eval_ax.plot(
            run.eval_steps,
            run.eval_pass1,
            "o-",
            color=KEY_COLORS["eval"],
            linewidth=1.4,
            markersize=5,
            label="held-out pass@1",
        )
        for i, label in enumerate(sorted({k for e in run.evals for k in e.pass_k})):
            xs = [e.step for e in run.evals if label in e.pass_k]
            ys = [e.pass_k[label] for e in run.evals if label in e.pass_k]
            eval_ax.plot(xs, ys, "s--", color=f"C{(i + 3) % 10}", markersize=4, linewidth=1, label=label)
        eval_ax.set_ylabel("held-out accuracy" if not same_axis else "reward / held-out accuracy")
    ax.set_xlabel(STEP_LABEL)
    if not same_axis:
        ax.set_ylabel("reward")
        handles = [*ax.get_legend_handles_labels()[0], *eval_ax.get_legend_handles_labels()[0]]
        ax.legend(handles=handles, fontsize="small", loc="best")
    else:
        legend(ax, loc="best")
        if not run.evals:
            ax.set_ylabel("reward")
    ax.set_title("Training reward and held-out pass@1")
    return Plot(
        save(fig, out_dir / "reward.png"),
        "Reward",
        f"Batch-mean training reward (faint: raw per step; bold: centred moving average over {window} steps; "
        "band: ± the within-batch reward std) and held-out pass@1 at each evaluation.",
    )


def nll_plot(run: RunData, out_dir: Path, window: int) -> Plot | None:
    if not any(run.has(k) for k in NLL_KEYS):
        return None
    fig, axes = new_figure(2, 1, panel=(8.0, 3.0), sharex=True)
    top, bottom = axes[0, 0], axes[1, 0]
    line(
        top, run.steps, run.series("nll/pos"), label="nll/pos (A > 0)", color=KEY_COLORS["pos"], window=window
    )
    line(
        top, run.steps, run.series("nll/neg"), label="nll/neg (A < 0)", color=KEY_COLORS["neg"], window=window
    )
    top.set_ylabel("mean token NLL")
    top.set_title("Scale imbalance: current-policy NLL of positive vs negative responses")
    legend(top, loc="best")
    ratio = run.series("nll/ratio")
    if line(
        bottom, run.steps, ratio, label="nll/ratio = neg / pos", color=KEY_COLORS["ratio"], window=window
    ):
        bottom.axhline(1.0, color="gray", linestyle=":", linewidth=1, label="balanced (1)")
        if wants_log(ratio):
            bottom.set_yscale("log")
        legend(bottom, loc="best")
    else:
        empty_note(bottom, "nll/ratio not logged")
    bottom.set_ylabel("nll/ratio")
    bottom.set_xlabel(STEP_LABEL)
    return Plot(
        save(fig, out_dir / "nll.png"),
        "NLL balance",
        "Mean per-response token NLL under the current policy for positive- and negative-advantage responses, "
        "and their ratio. A ratio rising above 1 is the scale-imbalance failure mode: the negative terms "
        "dominate the loss. Gaps are steps whose batch had no response of that sign.",
    )


def staleness_plot(run: RunData, out_dir: Path, window: int) -> Plot | None:
    has_series = any(run.has(k) for k in STALENESS_KEYS)
    if run.staleness_hist is None and not has_series:
        return None
    panels = int(run.staleness_hist is not None) + int(has_series)
    fig, axes = new_figure(1, panels, panel=(5.4, 3.6))
    ax_iter = iter(axes.flat)
    if run.staleness_hist is not None:
        ax = next(ax_iter)
        counts = run.staleness_hist.sum(axis=0)  # [D+1] samples per staleness over all steps
        total = counts.sum()
        frac = counts / total if total > 0 else counts
        levels = np.arange(len(counts))
        ax.bar(levels, frac, color="tab:cyan", edgecolor="tab:blue")
        mean = float((levels * counts).sum() / total) if total > 0 else float("nan")
        ax.axvline(mean, color="tab:red", linestyle="--", linewidth=1.2, label=f"mean {mean:.2f}")
        ax.set_xlabel("staleness (learner version − sample version)")
        ax.set_ylabel("fraction of trained samples")
        ax.set_title(f"Staleness histogram ({int(total)} samples, {len(run)} steps)")
        if len(levels) <= 20:
            ax.set_xticks(levels)
        legend(ax)
    if has_series:
        ax = next(ax_iter)
        line(ax, run.steps, run.series("staleness/mean"), label="mean", color="tab:blue", window=window)
        line(ax, run.steps, run.series("staleness/max"), label="max", color="tab:red", window=1)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel("staleness (versions)")
        ax.set_title("Staleness per step")
        legend(ax)
    return Plot(
        save(fig, out_dir / "staleness.png"),
        "Staleness",
        "Staleness = learner version at the optimiser step − the policy version that generated the sample. "
        "Histogram: the per-step staleness/hist counts summed over all steps.",
    )


def loss_plot(run: RunData, out_dir: Path, window: int) -> Plot | None:
    return _lines_plot(
        run,
        out_dir,
        window,
        LOSS_KEYS,
        "loss.png",
        "Loss terms",
        "Loss: signed contributions of positive and negative advantages",
        "loss (minimised)",
        "Signed contributions of positive- and negative-advantage responses to the loss, and the total.",
        zero_line=True,
    )


def grad_plot(run: RunData, out_dir: Path, window: int) -> Plot | None:
    return _lines_plot(
        run,
        out_dir,
        window,
        GRAD_KEYS,
        "grad.png",
        "Gradient norms",
        "Gradient norms (total, and of the positive / negative terms)",
        "L2 norm",
        "Gradient norm before clipping; norm_pos / norm_neg are the norms of the positive- and "
        "negative-advantage terms alone, when the objective logs them.",
        log_if_wide=True,
    )


def time_plot(run: RunData, out_dir: Path, window: int) -> Plot | None:
    if not any(run.has(k) for k in TIME_KEYS):
        return None
    fig, axes = new_figure(1, 2, panel=(5.4, 3.6))
    left, right = axes[0, 0], axes[0, 1]
    colors = {"time/generate": "tab:orange", "time/train": "tab:blue", "time/wait": "tab:gray"}
    drawn = [line(left, run.steps, run.series(k), label=k, color=c, window=window) for k, c in colors.items()]
    left.set_title("Seconds per step")
    left.set_xlabel(STEP_LABEL)
    left.set_ylabel("seconds")
    legend(left)
    if not any(drawn):
        empty_note(left, "no time/* keys logged")
    if not line(
        right,
        run.steps,
        run.series("throughput/tokens_per_s"),
        label="tokens/s",
        color="tab:green",
        window=window,
    ):
        empty_note(right, "throughput not logged")
    right.set_title("Throughput")
    right.set_xlabel(STEP_LABEL)
    right.set_ylabel("tokens / s")
    return Plot(
        save(fig, out_dir / "time.png"),
        "Time and throughput",
        "Per-step wall time of generation, training and waiting for rollouts (in asynchronous runs generation "
        "overlaps training, so these do not add up to the step time), and training throughput.",
    )


def other_metrics_plots(run: RunData, out_dir: Path, window: int) -> list[Plot]:
    """Every other logged scalar (entropy, KL, user-objective metrics, ...) in a grid of small panels."""
    keys = [k for k in run.scalars if k not in CLAIMED and run.has(k)]
    plots = []
    for page, start in enumerate(range(0, len(keys), OTHERS_PER_FIGURE)):
        chunk = keys[start : start + OTHERS_PER_FIGURE]
        ncols = min(3, len(chunk))
        nrows = -(-len(chunk) // ncols)
        fig, axes = new_figure(nrows, ncols, panel=(4.2, 2.8))
        for ax, key in zip(axes.flat, chunk):
            line(ax, run.steps, run.series(key), label=key, color="tab:blue", window=window)
            ax.set_title(key, fontsize="medium")
            ax.set_xlabel(STEP_LABEL, fontsize="small")
        for ax in list(axes.flat)[len(chunk) :]:
            ax.set_visible(False)
        name = "other_metrics.png" if page == 0 else f"other_metrics_{page + 1}.png"
        plots.append(
            Plot(
                save(fig, out_dir / name),
                "Other metrics" if page == 0 else f"Other metrics ({page + 1})",
                "Every other scalar the run logged: " + ", ".join(chunk) + ".",
            )
        )
    return plots


def _lines_plot(
    run: RunData,
    out_dir: Path,
    window: int,
    keys: tuple[str, ...],
    filename: str,
    title: str,
    axis_title: str,
    ylabel: str,
    caption: str,
    *,
    zero_line: bool = False,
    log_if_wide: bool = False,
) -> Plot | None:
    present = [k for k in keys if run.has(k)]
    if not present:
        return None
    fig, axes = new_figure(panel=(8.0, 3.6))
    ax = axes[0, 0]
    for key in present:
        suffix = key.rsplit("/", 1)[-1].removeprefix("norm_")
        color = KEY_COLORS.get(suffix, "tab:blue" if suffix in {"norm", "total"} else "tab:gray")
        line(ax, run.steps, run.series(key), label=key, color=color, window=window)
    if zero_line:
        ax.axhline(0.0, color="gray", linestyle=":", linewidth=1)
    if log_if_wide and wants_log(*(run.series(k) for k in present)):
        ax.set_yscale("log")
    ax.set_title(axis_title)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(ylabel)
    legend(ax, loc="best")
    return Plot(save(fig, out_dir / filename), title, caption + f" Bold: moving average over {window} steps.")
