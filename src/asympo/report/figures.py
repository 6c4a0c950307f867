"""Shared plotting helpers: figures without pyplot, raw-plus-smoothed lines, stable colours.

Figures are built with `matplotlib.figure.Figure` directly and saved through the Agg canvas, so the
report never switches the global pyplot backend of the process that calls it (a notebook, a trainer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from asympo.report.stats import smooth

DPI = 100
RAW_ALPHA = 0.25
# Fixed colours for the keys that appear together in several plots, so that "pos" is always green.
KEY_COLORS = {
    "pos": "tab:green",
    "neg": "tab:red",
    "total": "tab:blue",
    "ratio": "tab:purple",
    "reward": "tab:blue",
    "eval": "tab:orange",
}


@dataclass(frozen=True)
class Plot:
    """A PNG written by the report and the words shown with it."""

    path: Path
    title: str
    caption: str


def new_figure(
    nrows: int = 1, ncols: int = 1, *, panel: tuple[float, float] = (6.4, 3.4), **subplot_kw
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of nrows × ncols panels of `panel` inches each; axes as a 2-D array."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return fig, axes


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def line(
    ax: Axes,
    x: np.ndarray,
    y: np.ndarray,
    *,
    label: str,
    color: str,
    window: int,
    linestyle: str = "-",
) -> bool:
    """Plot y against x: the raw values as a faint line, the smoothed curve (labelled) on top.

    Returns False, drawing nothing, when y has no finite value. With few points it draws markers so
    that a single evaluation or a two-step run is still visible.
    """
    x, y = np.asarray(x), np.asarray(y, dtype=np.float64)
    finite = np.isfinite(y)
    if not finite.any():
        return False
    marker = "o" if finite.sum() <= 20 else None
    if window > 1:
        ax.plot(x[finite], y[finite], color=color, alpha=RAW_ALPHA, linewidth=0.8, linestyle=linestyle)
        ax.plot(x, smooth(y, window), color=color, linewidth=1.8, label=label, linestyle=linestyle)
    else:
        ax.plot(
            x[finite],
            y[finite],
            color=color,
            linewidth=1.6,
            label=label,
            linestyle=linestyle,
            marker=marker,
            markersize=3,
        )
    return True


def wants_log(*arrays: np.ndarray, spread: float = 30.0) -> bool:
    """True when all finite values are positive and span more than `spread`× (a log axis reads better)."""
    finite = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    finite = finite[np.isfinite(finite)]
    if len(finite) < 2 or (finite <= 0).any():
        return False
    return bool(finite.max() / finite.min() > spread)


def palette(labels: list[str]) -> dict[str, str]:
    """A colour per label, stable in the order given (tab10, then tab20 for more than ten)."""
    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, label in enumerate(labels)}


def legend(ax: Axes, **kw) -> None:
    """A legend only when something is labelled (an empty legend warns)."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", framealpha=0.8, **kw)


def empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
