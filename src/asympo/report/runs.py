"""A run directory (DESIGN §4) as arrays aligned on the optimiser step: `load_run` → `RunData`.

`DIR/metrics.jsonl` one object per optimiser step, `DIR/eval.jsonl` one per held-out evaluation,
`DIR/config.json`, optionally `DIR/summary.json`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asympo.report.io import (
    CONFIG_FILE,
    EVAL_FILE,
    HIST_KEY,
    METRICS_FILE,
    SUMMARY_FILE,
    ReportError,
    describe_contents,
    existing_dir,
    is_number,
    read_json_dict,
    read_jsonl,
    to_float,
)

_PASS_K = re.compile(r"^pass@(\d+)$")


@dataclass(frozen=True)
class EvalPoint:
    """One held-out evaluation: pass@1 (and pass@k for other k) at optimiser step `step`."""

    step: int
    pass1: float
    n: int | None = None
    pass_k: dict[str, float] = field(default_factory=dict)
    """Label (`"pass@8"`) → value, for every k other than 1 the evaluation reported."""


@dataclass
class RunData:
    """Everything a run directory holds, as arrays aligned on the optimiser step.

    `steps` is sorted and unique; every array in `scalars` has one entry per step, NaN where the step did
    not log the key, logged null, or logged a non-finite value.
    """

    path: Path
    steps: np.ndarray  # [S] int64
    scalars: dict[str, np.ndarray]  # key -> [S] float64, in order of first appearance in the file
    staleness_hist: np.ndarray | None  # [S, D+1] counts of samples with staleness 0..D; None if never logged
    evals: list[EvalPoint]
    config: dict[str, Any]
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def has(self, key: str) -> bool:
        """True when `key` was logged with at least one finite value."""
        values = self.scalars.get(key)
        return values is not None and bool(np.isfinite(values).any())

    def series(self, key: str) -> np.ndarray:
        """The values of `key` per step (`[S]`), all NaN when it was never logged."""
        return self.scalars.get(key, np.full(len(self.steps), np.nan))

    def last(self, key: str) -> float:
        """The last finite value of `key`, NaN if there is none."""
        values = self.series(key)
        finite = values[np.isfinite(values)]
        return float(finite[-1]) if len(finite) else math.nan

    @property
    def eval_steps(self) -> np.ndarray:  # [E]
        return np.array([e.step for e in self.evals], dtype=np.int64)

    @property
    def eval_pass1(self) -> np.ndarray:  # [E]
        return np.array([e.pass1 for e in self.evals], dtype=np.float64)


def is_run_dir(path: Path) -> bool:
    return (Path(path) / METRICS_FILE).is_file()


def load_run(path: str | Path) -> RunData:
    """Read a run directory. Raises `ReportError` when it is missing or holds no `metrics.jsonl`."""
    path = existing_dir(path)
    if not is_run_dir(path):
        raise ReportError(
            f"{path} is not a run directory: it has no {METRICS_FILE} ({describe_contents(path)})"
        )
    warnings: list[str] = []
    rows = read_jsonl(path / METRICS_FILE, warnings)
    steps, scalars, hist = _tabulate_metrics(rows, path / METRICS_FILE, warnings)
    evals = _read_evals(path / EVAL_FILE, warnings) if (path / EVAL_FILE).is_file() else []
    config = read_json_dict(path / CONFIG_FILE, warnings)
    summary = read_json_dict(path / SUMMARY_FILE, warnings)
    if not len(steps):
        warnings.append(f"{METRICS_FILE} has no complete step yet")
    return RunData(path, steps, scalars, hist, evals, config, summary, warnings)


def _tabulate_metrics(
    rows: list[tuple[int, dict]], file: Path, warnings: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    # A resumed run re-logs the steps after its last checkpoint; the later lines are the ones it kept.
    by_step: dict[int, dict] = {}
    for index, (lineno, row) in enumerate(rows):
        step = row.get("step", index)
        if not is_number(step):
            raise ReportError(f"{file}:{lineno}: 'step' must be a number, got {step!r}")
        by_step[int(step)] = row
    if len(by_step) < len(rows):
        warnings.append(
            f"{len(rows) - len(by_step)} step(s) of {METRICS_FILE} were logged more than once "
            "(a resumed run?); the last occurrence of each is used"
        )
    steps = np.array(sorted(by_step), dtype=np.int64)
    ordered = [by_step[int(s)] for s in steps]

    keys: dict[str, None] = {}
    for row in ordered:
        for key, value in row.items():
            if key != "step" and (value is None or is_number(value)):
                keys.setdefault(key)
    scalars = {key: np.array([to_float(row.get(key)) for row in ordered]) for key in keys}

    hists = [row.get(HIST_KEY) for row in ordered]
    hist = None
    if any(isinstance(h, list) and h for h in hists):
        width = max(len(h) for h in hists if isinstance(h, list))
        hist = np.zeros((len(ordered), width))
        for i, h in enumerate(hists):
            if isinstance(h, list):
                hist[i, : len(h)] = [to_float(c) if is_number(c) else 0.0 for c in h]
        hist = np.nan_to_num(hist, nan=0.0)
    return steps, scalars, hist


def _read_evals(file: Path, warnings: list[str]) -> list[EvalPoint]:
    by_step: dict[int, EvalPoint] = {}
    for lineno, row in read_jsonl(file, warnings):
        step, pass1 = row.get("step"), row.get("pass@1")
        # pass@1 may be null (an evaluation that failed) but must be there.
        if not is_number(step) or "pass@1" not in row or not (pass1 is None or is_number(pass1)):
            raise ReportError(f"{file}:{lineno}: needs numeric 'step' and 'pass@1', got {row!r}")
        pass_k: dict[str, float] = {}
        nested = row.get("pass@k")
        if isinstance(nested, dict):
            for k, v in nested.items():
                label = f"pass@{k}" if str(k).isdigit() else str(k)
                pass_k[label] = to_float(v)
        elif is_number(nested):
            pass_k["pass@k"] = to_float(nested)
        for key, value in row.items():
            if _PASS_K.match(key) and key != "pass@1" and is_number(value):
                pass_k[key] = to_float(value)
        n = row.get("n")
        by_step[int(step)] = EvalPoint(int(step), to_float(pass1), int(n) if is_number(n) else None, pass_k)
    return [by_step[s] for s in sorted(by_step)]
