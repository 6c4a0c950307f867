"""File-level reading shared by runs and studies: names, tolerant JSONL, JSON scalars, errors.

Runs may still be in progress while they are read, so the *last* line of a JSONL or CSV file may be
half-written: it is skipped with a warning. A malformed line anywhere else is corruption and raises
`ReportError` naming the file and line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.csv"
CELLS_DIR = "cells"
CELL_FILE = "cell.json"

HIST_KEY = "staleness/hist"
RESULT_COLUMNS = ("objective", "staleness", "seed", "final_reward", "final_pass1", "collapsed")
NULLS = {"", "none", "null", "nan", "na"}


class ReportError(ValueError):
    """A directory or file that cannot be reported on; the message names it and the problem."""


def existing_dir(path: str | Path) -> Path:
    """`path` as a Path; `ReportError` when it does not exist or is not a directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ReportError(f"{path} does not exist")
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory (give a run or study directory)")
    return path


def describe_contents(path: Path) -> str:
    """A short listing of a directory for error messages: "found: a, b/, ..." or "it is empty"."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "it is empty"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"found: {shown}"


def read_jsonl(file: Path, warnings: list[str]) -> list[tuple[int, dict]]:
    """Parse a JSONL file into (line number, object) pairs, tolerating a half-written last line."""
    lines = file.read_text(encoding="utf-8").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
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
    if not is_number(value):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def float_or_nan(text: str | None) -> float:
    if text is None or text.strip().lower() in NULLS:
        return math.nan
    return float(text)


def optional_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in NULLS):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
