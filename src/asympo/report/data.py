"""Reading run and study directories into arrays, and the NaN-aware numerics the report needs.

A run directory (docs/design.md#diagnostics) holds `metrics.jsonl` (one object per optimiser step),
`eval.jsonl` (one per held-out evaluation), `config.json` and optionally `summary.json`; a study directory
(docs/design.md#the-study) holds `results.csv` and `cells/<name>/` run directories with a `cell.json`.

Runs may still be in progress while they are read, so the *last* line of a JSONL or CSV file may be
half-written: it is skipped with a warning. A malformed line anywhere else is corruption and raises
`ReportError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from warnings import catch_warnings, simplefilter

import numpy as np

from asympo.study import REQUIRED_RESULT_COLUMNS, final_mean

METRICS_FILE, EVAL_FILE, CONFIG_FILE = "metrics.jsonl", "eval.jsonl", "config.json"
SUMMARY_FILE, RESULTS_FILE, CELLS_DIR, CELL_FILE = "summary.json", "results.csv", "cells", "cell.json"
NULLS = {"", "none", "null", "nan", "na"}
TRUE, FALSE = {"true", "1", "yes", "1.0"}, {"false", "0", "no", "0.0"}


class ReportError(ValueError):
    """A directory or file that cannot be reported on; the message names it and the problem."""


# ------------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class EvalPoint:
    """One held-out evaluation at optimiser step `step`: pass@1, and in `pass_k` the other pass@k it
    reported (`"pass@8"` → value)."""

    step: int
    pass1: float
    n: int | None = None
    pass_k: dict[str, float] = field(default_factory=dict)


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

    def key(self, key: str) -> str:
        """`key` itself, or for a pseudo-key `*/name` the first logged key ending in `/name` (objective
        metrics are namespaced by the objective: `asympo/neg_weight`, `spo/neg_weight`)."""
        if key.startswith("*/"):
            return next((k for k in self.scalars if k.endswith(key[1:])), key)
        return key

    def series(self, key: str) -> np.ndarray:
        """The values of `key` (or a `*/name` pseudo-key) per step (`[S]`), all NaN when never logged."""
        return self.scalars.get(self.key(key), np.full(len(self.steps), np.nan))

    def has(self, key: str) -> bool:
        """True when `key` was logged with at least one finite value."""
        return bool(np.isfinite(self.series(key)).any())

    def last(self, key: str) -> float:
        """The last finite value of `key`, NaN if there is none."""
        finite = self.series(key)[np.isfinite(self.series(key))]
        return float(finite[-1]) if len(finite) else math.nan

    def final(self, key: str) -> float:
        """The study's "final" value of `key`: `asympo.study.final_mean` over the logged steps."""
        return final_mean(self.series(key).tolist())

    @property
    def staleness_counts(self) -> np.ndarray:  # [D+1] samples per staleness over all steps
        return self.staleness_hist.sum(axis=0) if self.staleness_hist is not None else np.zeros(0)

    @property
    def staleness_mean(self) -> float:
        counts = self.staleness_counts
        return float((np.arange(len(counts)) * counts).sum() / counts.sum()) if counts.sum() > 0 else math.nan

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
    path = existing_dir(path, is_run_dir, f"a run directory: it has no {METRICS_FILE}")
    warnings: list[str] = []
    # A resumed run re-logs the steps after its last checkpoint; the later lines are the ones it kept.
    rows = read_jsonl(path / METRICS_FILE, warnings)
    by_step: dict[int, dict] = {}
    for index, (lineno, row) in enumerate(rows):
        step = row.get("step", index)
        if not is_number(step):
            raise ReportError(f"{path / METRICS_FILE}:{lineno}: 'step' must be a number, got {step!r}")
        by_step[int(step)] = row
    if len(by_step) < len(rows):
        warnings.append(
            f"{len(rows) - len(by_step)} step(s) of {METRICS_FILE} were logged more than once "
            "(a resumed run?); the last occurrence of each is used"
        )
    steps = np.array(sorted(by_step), dtype=np.int64)
    ordered = [by_step[int(s)] for s in steps]
    keys = dict.fromkeys(
        k for row in ordered for k, v in row.items() if k != "step" and (v is None or is_number(v))
    )
    scalars = {key: np.array([to_float(row.get(key)) for row in ordered]) for key in keys}
    hists = [h if isinstance(h := row.get("staleness/hist"), list) else [] for row in ordered]
    width = max(map(len, hists), default=0)
    # Padded with zeros to the widest; a count that is not a number counts nothing.
    hist = (
        np.nan_to_num([[to_float(c) for c in h] + [0.0] * (width - len(h)) for h in hists]) if width else None
    )
    evals = _read_evals(path / EVAL_FILE, warnings) if (path / EVAL_FILE).is_file() else []
    config = read_json_dict(path / CONFIG_FILE, warnings)
    summary = read_json_dict(path / SUMMARY_FILE, warnings)
    if not len(steps):
        warnings.append(f"{METRICS_FILE} has no complete step yet")
    return RunData(path, steps, scalars, hist, evals, config, summary, warnings)


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
            pass_k = {f"pass@{k}" if str(k).isdigit() else str(k): to_float(v) for k, v in nested.items()}
        elif is_number(nested):
            pass_k["pass@k"] = to_float(nested)
        top_level = (k for k, v in row.items() if k[:5] == "pass@" and k[5:].isdigit() and is_number(v))
        pass_k.update({k: to_float(row[k]) for k in top_level if k != "pass@1"})
        n = row.get("n")
        by_step[int(step)] = EvalPoint(int(step), to_float(pass1), int(n) if is_number(n) else None, pass_k)
    return [by_step[s] for s in sorted(by_step)]


# ---------------------------------------------------------------------------------------------- studies


@dataclass
class CellRun:
    """One study cell as its `cell.json` places it in the grid, with its run (None before its first step)."""

    name: str
    objective: str
    staleness: int
    seed: int
    lr: float | None = None
    run: RunData | None = None


@dataclass(frozen=True)
class ResultRow:
    """One row of `results.csv`: `collapsed` is None when unknown (rows rebuilt from cells); `extra` holds
    any further columns, as floats where they parse as numbers."""

    objective: str
    staleness: int
    seed: int
    final_reward: float
    final_pass1: float
    collapsed: bool | None
    lr: float | None = None
    extra: dict[str, float | str] = field(default_factory=dict)

    def value(self, column: str) -> Any:
        """The value of a results.csv column (a field or an extra)."""
        return getattr(self, column) if column in FIELDS else self.extra.get(column)

    def number(self, column: str) -> float:
        """The value of a column as a float, NaN where it is not a number (or the row lacks it)."""
        return value if isinstance(value := self.value(column), float) else math.nan


FIELDS = (*REQUIRED_RESULT_COLUMNS, "lr")
"""The results.csv columns that are `ResultRow` fields; the others are its `extra`."""


@dataclass(frozen=True)
class Series:
    """One line of a study's plots and one row of its tables: an objective, and its learning rate when the
    study varies it."""

    objective: str
    lr: float | None = None

    def label(self) -> str:
        return self.objective if self.lr is None else f"{self.objective} lr={self.lr:g}"


@dataclass
class StudyData:
    """A study directory: its results table, its cells and the study config (if it wrote one).
    `rows_from_cells`: there was no `results.csv`, and `rows` were rebuilt from the cells' own logs."""

    path: Path
    rows: list[ResultRow]
    columns: list[str]
    cells: list[CellRun]
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    rows_from_cells: bool = False

    @property
    def objectives(self) -> list[str]:
        """Objective labels in order of first appearance (the preset's order), results first, then cells."""
        return list(dict.fromkeys([*(r.objective for r in self.rows), *(c.objective for c in self.cells)]))

    def groups(self, items: Iterable, with_lr: bool | None = None) -> dict[tuple[Series, int], list]:
        """This study's result rows or cells by (objective[, lr] series, staleness), in the order of
        `objectives`, learning rate and staleness; split by learning rate when `with_lr` (by default: when
        the results vary it)."""
        split, order, groups = self.varies_lr if with_lr is None else with_lr, self.objectives, {}
        for item in items:
            key = (Series(item.objective, item.lr if split else None), item.staleness)
            groups.setdefault(key, []).append(item)
        rank = {key: (order.index(key[0].objective), key[0].lr or 0.0, key[1]) for key in groups}
        return dict(sorted(groups.items(), key=lambda kv: rank[kv[0]]))

    @property
    def staleness_levels(self) -> list[int]:
        return sorted({r.staleness for r in self.rows} | {c.staleness for c in self.cells})

    @property
    def result_lrs(self) -> list[float]:  # the optional `lr` column of results.csv
        return sorted({r.lr for r in self.rows if r.lr is not None})

    @property
    def varies_lr(self) -> bool:
        return len(self.result_lrs) > 1

    @property
    def extra_columns(self) -> list[str]:
        """The numeric extra columns of results.csv (e.g. start_pass1, wall_s)."""
        return [k for k in self.columns if any(isinstance(r.extra.get(k), float) for r in self.rows)]

    @property
    def cell_lrs(self) -> list[float]:  # from the cells' cell.json
        return sorted({c.lr for c in self.cells if c.lr is not None})


def is_study_dir(path: Path) -> bool:
    return (Path(path) / RESULTS_FILE).is_file() or (Path(path) / CELLS_DIR).is_dir()


def load_study(path: str | Path) -> StudyData:
    """Read a study directory. Raises `ReportError` when it has neither `results.csv` nor `cells/`."""
    path = existing_dir(
        path, is_study_dir, f"a study directory: it has neither {RESULTS_FILE} nor {CELLS_DIR}/"
    )
    warnings: list[str] = []
    cells = _read_cells(path / CELLS_DIR, warnings) if (path / CELLS_DIR).is_dir() else []
    from_cells = not (path / RESULTS_FILE).is_file()
    if not from_cells:
        rows, columns = _read_results(path / RESULTS_FILE, warnings)
    else:
        rows, columns = [_row_from_cell(c, c.run) for c in cells if c.run is not None], list(FIELDS)
        warnings.append(
            f"no {RESULTS_FILE} yet: results rebuilt from the cells' logs (final_pass1 = the cell's "
            "summary pass1_after, else its last eval; final_reward = the mean reward/mean of its last 10% "
            "of steps; collapse unknown)"
        )
    return StudyData(
        path, rows, columns, cells, read_json_dict(path / CONFIG_FILE, warnings), warnings, from_cells
    )


def _read_cells(cells_dir: Path, warnings: list[str]) -> list[CellRun]:
    cells = []
    for sub in sorted(p for p in cells_dir.iterdir() if p.is_dir()):
        info_file = sub / CELL_FILE
        if not info_file.is_file():
            warnings.append(f"cell {sub.name} has no {CELL_FILE} (not started?); skipped")
            continue
        raw = read_json_dict(info_file, warnings)
        if not raw:  # unreadable (being written?): read_json_dict has said so
            continue
        try:
            objective, staleness, seed = str(raw["objective"]), int(raw["staleness"]), int(raw["seed"])
            cell = CellRun(sub.name, objective, staleness, seed, optional_float(raw.get("lr")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(
                f"{info_file}: needs 'objective', integer 'staleness' and 'seed' (and optional 'lr'): {exc!r}"
            ) from exc
        run = load_run(sub) if is_run_dir(sub) else None
        if run is not None:
            warnings.extend(f"cell {sub.name}: {w}" for w in run.warnings if "no complete step" not in w)
        cell.run = run if run is not None and len(run) else None
        cells.append(cell)
    return cells


def _read_results(file: Path, warnings: list[str]) -> tuple[list[ResultRow], list[str]]:
    text = file.read_text(encoding="utf-8")
    reader = csv.DictReader(text.splitlines())
    columns = list(reader.fieldnames or [])
    missing = [c for c in REQUIRED_RESULT_COLUMNS if c not in columns]
    if missing:
        raise ReportError(
            f"{file}: missing column(s) {missing}; has {columns}, needs {list(REQUIRED_RESULT_COLUMNS)}"
        )
    records = [(reader.line_num, rec) for rec in reader]
    rows: dict[tuple, ResultRow] = {}
    for index, (lineno, rec) in enumerate(records):
        try:
            row = _parse_result(rec)
        except (TypeError, ValueError) as exc:
            if index == len(records) - 1 and not text.endswith("\n"):
                warnings.append(f"{file.name}: skipped a half-written last line ({lineno})")
                continue
            raise ReportError(f"{file}:{lineno}: {exc}") from exc
        key = (row.objective, row.staleness, row.seed, row.lr)
        if key in rows:
            warnings.append(f"{file.name}:{lineno}: repeats cell {key}; the later row is used")
        rows[key] = row
    return list(rows.values()), columns


def _parse_result(rec: dict[str | None, str | None]) -> ResultRow:
    if None in rec or None in rec.values():  # csv.DictReader's marks of too many / too few fields
        raise ValueError(f"wrong number of fields: {rec!r}")
    collapsed = str(rec["collapsed"]).strip().lower()
    if collapsed not in TRUE | FALSE | NULLS:
        raise ValueError(f"'collapsed' must be true/false, got {rec['collapsed']!r}")
    extra: dict[str, float | str] = {}
    for column in (c for c in rec if c not in FIELDS):
        try:
            extra[column] = csv_float(rec[column])
        except ValueError:
            extra[column] = str(rec[column])
    return ResultRow(
        objective=str(rec["objective"]),
        staleness=int(float(str(rec["staleness"]))),
        seed=int(float(str(rec["seed"]))),
        final_reward=csv_float(rec["final_reward"]),
        final_pass1=csv_float(rec["final_pass1"]),
        collapsed=True if collapsed in TRUE else False if collapsed in FALSE else None,
        lr=optional_float(rec.get("lr")),
        extra=extra,
    )


def _row_from_cell(cell: CellRun, run: RunData) -> ResultRow:
    after = run.summary.get("pass1_after")
    pass1 = to_float(after) if is_number(after) else (run.evals[-1].pass1 if run.evals else math.nan)
    return ResultRow(
        cell.objective, cell.staleness, cell.seed, run.final("reward/mean"), pass1, None, cell.lr
    )


# -------------------------------------------------------------------------------------------- file level


def existing_dir(path: str | Path, is_kind: Callable[[Path], bool] | None = None, kind: str = "") -> Path:
    """`path` as a Path; `ReportError` when it does not exist, is not a directory, or fails `is_kind`
    (the error then says it is not `kind`, and what it holds instead)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ReportError(f"{path} does not exist")
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory (give a run or study directory)")
    if is_kind is not None and not is_kind(path):
        raise ReportError(f"{path} is not {kind} ({describe_contents(path)})")
    return path


def describe_contents(path: Path) -> str:
    """A short listing of a directory for error messages: "found: a, b/, ..." or "it is empty"."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return f"found: {', '.join(names[:8]) + (', ...' if len(names) > 8 else '')}" if names else "it is empty"


def read_jsonl(file: Path, warnings: list[str]) -> list[tuple[int, dict]]:
    """Parse a JSONL file into (line number, object) pairs, tolerating a half-written last line."""
    text = file.read_text(encoding="utf-8")
    numbered = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    rows = []
    for index, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as exc:
            if index == len(numbered) - 1:
                warnings.append(f"{file.name}: skipped a half-written last line ({lineno})")
                continue
            raise ReportError(f"{file}:{lineno}: malformed line ({exc}): {line[:120]!r}") from exc
        rows.append((lineno, row))
    return rows


def read_json_dict(file: Path, warnings: list[str]) -> dict[str, Any]:
    """A JSON object file as a dict; {} (with a warning when it exists but is unusable) otherwise."""
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        warnings.append(f"{file.parent.name}/{file.name}: unreadable ({exc}); ignored")
        return {}
    if not isinstance(data, dict):
        warnings.append(
            f"{file.parent.name}/{file.name}: expected a JSON object, got {type(data).__name__}; ignored"
        )
        return {}
    return data


def is_number(value: Any) -> bool:
    return isinstance(value, int | float)  # bools included: a logged flag plots as 0/1


def to_float(value: Any) -> float:
    """JSON scalar → float; null, strings and non-finite values become NaN so plots and means skip them."""
    value = float(value) if is_number(value) else math.nan
    return value if math.isfinite(value) else math.nan


def csv_float(value: Any) -> float:
    """A CSV field (or JSON value) as a float, NaN for an empty or null one; ValueError for other text."""
    return math.nan if value is None or str(value).strip().lower() in NULLS else float(value)


def optional_float(value: Any) -> float | None:
    value = csv_float(value)
    return value if math.isfinite(value) else None


# -------------------------------------------------------------------------------------------- numerics


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
    """Mean and sample standard deviation (ddof=1) of the `n` finite values; `missing` counts the NaNs."""

    mean: float
    std: float
    n: int
    missing: int = 0

    def format(self) -> str:
        if self.n == 0:
            return "—"
        return f"{self.mean:.3f}" + (f" ± {self.std:.3f}" if self.n > 1 else "")


def summarize(values: list[float] | np.ndarray) -> Summary:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    n = len(finite)
    mean, std = float(finite.mean()) if n else math.nan, float(finite.std(ddof=1)) if n > 1 else math.nan
    return Summary(mean, std, n, len(values) - n)


def nan_mean_std(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise mean and std (ddof=0) of [N, S] over the finite entries; NaN for an empty column."""
    with catch_warnings():
        simplefilter("ignore", RuntimeWarning)  # "mean of empty slice"
        return np.nanmean(matrix, axis=0), np.nanstd(matrix, axis=0)
