"""NaN-aware numerics the report needs: smoothing, aligning seeds, and mean ± std over seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def auto_window(n: int) -> int:
    """A smoothing window for `n` points: about 1/20 of the run, odd (so it is centred), at least 1."""
    window = max(1, n // 20)
    return window if window % 2 else window + 1


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` points that ignores NaNs.

    values: [S]. Returns [S]; entry i is the mean of the finite values within h_i = min(window // 2, i,
    S - 1 - i) of i, NaN only where that neighbourhood holds no finite value. Centred rather than an EMA
    so that the curve does not lag, and narrowed symmetrically at the ends so that a trend is not bent
    towards the interior there.
    """
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values.copy()
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(len(values))
    half = np.minimum(np.minimum(window // 2, idx), len(values) - 1 - idx)
    lo, hi = idx - half, idx + half + 1
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def align(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Put several (steps [S_i], values [S_i]) curves on the union of their steps.

    Returns (steps [S], values [N, S]) with NaN where a curve has no value at a step, so that runs of
    different lengths (a seed still in progress) average over the seeds that reached each step.
    """
    if not curves:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
    steps = np.unique(np.concatenate([np.asarray(s) for s, _ in curves]))
    out = np.full((len(curves), len(steps)), np.nan)
    for i, (s, v) in enumerate(curves):
        out[i, np.searchsorted(steps, s)] = v
    return steps, out


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1) of the finite values; `missing` counts the NaNs."""

    mean: float
    std: float
    n: int
    missing: int = 0

    def format(self, digits: int = 3) -> str:
        if self.n == 0:
            return "—"
        text = f"{self.mean:.{digits}f}"
        if self.n > 1:
            text += f" ± {self.std:.{digits}f}"
        return text


def summarize(values: list[float] | np.ndarray) -> Summary:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    n = len(finite)
    mean = float(finite.mean()) if n else math.nan
    std = float(finite.std(ddof=1)) if n > 1 else math.nan
    return Summary(mean, std, n, len(values) - n)


def nan_mean_std(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise mean and std (ddof=0) of [N, S] over the finite entries, without warnings on empty columns."""
    finite = np.isfinite(matrix)
    n = finite.sum(axis=0)
    total = np.where(finite, matrix, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        sq = np.where(finite, (matrix - mean) ** 2, 0.0).sum(axis=0)
        std = np.where(n > 0, np.sqrt(sq / np.maximum(n, 1)), np.nan)
    return mean, std
