"""A study directory (DESIGN §6, §8): `results.csv` plus `cells/<name>/` run directories → `StudyData`."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asympo.report.io import (
    CELL_FILE,
    CELLS_DIR,
    CONFIG_FILE,
    NULLS,
    RESULT_COLUMNS,
    RESULTS_FILE,
    ReportError,
    describe_contents,
    existing_dir,
    float_or_nan,
    is_number,
    optional_float,
    read_json_dict,
    to_float,
)
from asympo.report.runs import RunData, is_run_dir, load_run


def is_study_dir(path: Path) -> bool:
    path = Path(path)
    return (path / RESULTS_FILE).is_file() or (path / CELLS_DIR).is_dir()


@dataclass(frozen=True)
class CellInfo:
    """What `cell.json` says a study cell is: the grid coordinates of one run."""

    name: str
    objective: str
    staleness: int
    seed: int
    lr: float | None = None


@dataclass
class Cell:
    """One study cell: its coordinates and its run (None when the cell has not logged a step yet)."""

    info: CellInfo
    run: RunData | None


@dataclass(frozen=True)
class ResultRow:
    """One row of `results.csv`. `collapsed` is None when unknown (rows rebuilt from cells)."""

    objective: str
    staleness: int
    seed: int
    final_reward: float
    final_pass1: float
    collapsed: bool | None
    lr: float | None = None
    extra: dict[str, float | str] = field(default_factory=dict)
    """Any further columns, as floats where they parse as numbers."""


@dataclass
class StudyData:
    """A study directory: its results table, its cells and the study config (if it wrote one)."""

    path: Path
    rows: list[ResultRow]
    columns: list[str]
    cells: list[Cell]
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    rows_from_cells: bool = False
    """True when there was no `results.csv` and `rows` were rebuilt from the cells' own logs."""

    @property
    def objectives(self) -> list[str]:
        """Objective labels in order of first appearance (the preset's order), results first, then cells."""
        seen = {r.objective: None for r in self.rows}
        for cell in self.cells:
            seen.setdefault(cell.info.objective)
        return list(seen)

    @property
    def staleness_levels(self) -> list[int]:
        return sorted({r.staleness for r in self.rows} | {c.info.staleness for c in self.cells})

    @property
    def result_lrs(self) -> list[float]:
        """The distinct learning rates of the results table (its optional `lr` column), sorted."""
        return _distinct(r.lr for r in self.rows)

    @property
    def cell_lrs(self) -> list[float]:
        """The distinct learning rates of the cells (their `cell.json`), sorted."""
        return _distinct(c.info.lr for c in self.cells)


def _distinct(values) -> list[float]:
    return sorted({v for v in values if v is not None and math.isfinite(v)})


def load_study(path: str | Path) -> StudyData:
    """Read a study directory. Raises `ReportError` when it has neither `results.csv` nor `cells/`."""
    path = existing_dir(path)
    if not is_study_dir(path):
        raise ReportError(
            f"{path} is not a study directory: it has neither {RESULTS_FILE} nor {CELLS_DIR}/ ({describe_contents(path)})"
        )
    warnings: list[str] = []
    cells = _read_cells(path / CELLS_DIR, warnings) if (path / CELLS_DIR).is_dir() else []
    if (path / RESULTS_FILE).is_file():
        rows, columns = _read_results(path / RESULTS_FILE, warnings)
        from_cells = False
    else:
        rows, columns = _rows_from_cells(cells), [*RESULT_COLUMNS, "lr"]
        from_cells = True
        warnings.append(
            f"no {RESULTS_FILE} yet: results rebuilt from the cells' logs (final_pass1 = the cell's "
            "summary pass1_after, else its last eval; final_reward = its last reward/mean; collapse unknown)"
        )
    config = read_json_dict(path / CONFIG_FILE, warnings)
    return StudyData(path, rows, columns, cells, config, warnings, from_cells)


def _read_cells(cells_dir: Path, warnings: list[str]) -> list[Cell]:
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
            info = CellInfo(
                name=sub.name,
                objective=str(raw["objective"]),
                staleness=int(raw["staleness"]),
                seed=int(raw["seed"]),
                lr=optional_float(raw.get("lr")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(
                f"{info_file}: needs 'objective', integer 'staleness' and 'seed' (and optional 'lr'): {exc!r}"
            ) from exc
        run = load_run(sub) if is_run_dir(sub) else None
        if run is not None:
            warnings.extend(f"cell {sub.name}: {w}" for w in run.warnings if "no complete step" not in w)
        cells.append(Cell(info, run if run is not None and len(run) else None))
    return cells


def _read_results(file: Path, warnings: list[str]) -> tuple[list[ResultRow], list[str]]:
    text = file.read_text(encoding="utf-8")
    lines = text.splitlines()
    reader = csv.DictReader(lines)
    columns = list(reader.fieldnames or [])
    missing = [c for c in RESULT_COLUMNS if c not in columns]
    if missing:
        raise ReportError(f"{file}: missing column(s) {missing}; has {columns}, needs {list(RESULT_COLUMNS)}")
    records = [(reader.line_num, rec) for rec in reader]
    rows: dict[tuple, ResultRow] = {}
    for index, (lineno, rec) in enumerate(records):
        try:
            row = _parse_result(rec, columns)
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


def _parse_result(rec: dict[str, str | None], columns: list[str]) -> ResultRow:
    if None in rec or any(rec.get(c) is None for c in columns):
        raise ValueError(f"wrong number of fields: {rec!r}")
    collapsed_text = str(rec["collapsed"]).strip().lower()
    if collapsed_text in {"true", "1", "yes", "1.0"}:
        collapsed: bool | None = True
    elif collapsed_text in {"false", "0", "no", "0.0"}:
        collapsed = False
    elif collapsed_text in NULLS:
        collapsed = None
    else:
        raise ValueError(f"'collapsed' must be true/false, got {rec['collapsed']!r}")
    extra: dict[str, float | str] = {}
    for column in columns:
        if column not in RESULT_COLUMNS and column != "lr":
            value = rec[column] or ""
            try:
                extra[column] = float(value) if value.strip().lower() not in NULLS else math.nan
            except ValueError:
                extra[column] = value
    return ResultRow(
        objective=str(rec["objective"]),
        staleness=int(float(str(rec["staleness"]))),
        seed=int(float(str(rec["seed"]))),
        final_reward=float_or_nan(rec["final_reward"]),
        final_pass1=float_or_nan(rec["final_pass1"]),
        collapsed=collapsed,
        lr=optional_float(rec.get("lr")),
        extra=extra,
    )


def _rows_from_cells(cells: list[Cell]) -> list[ResultRow]:
    rows = []
    for cell in cells:
        if cell.run is None:
            continue
        run = cell.run
        after = run.summary.get("pass1_after")
        pass1 = to_float(after) if is_number(after) else (run.evals[-1].pass1 if run.evals else math.nan)
        i = cell.info
        rows.append(ResultRow(i.objective, i.staleness, i.seed, run.last("reward/mean"), pass1, None, i.lr))
    return rows
