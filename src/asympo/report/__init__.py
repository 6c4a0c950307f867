"""Plots and an HTML report from a run or study directory (DESIGN §4, §6, §8).

    from asympo.report import load_run, load_study, write_report
    run = load_run("runs/demo")            # RunData: steps, scalars[key] arrays, evals, config, summary
    path = write_report("runs/demo")       # runs/demo/report.html (+ runs/demo/plots/*.png)

`asympo report DIR` is `asympo.report.main`. Names are imported on first use, so that the main CLI can
import this package (for `add_arguments`) without paying for numpy and matplotlib on every command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Report": "build",
    "build_report": "build",
    "write_report": "build",
    "add_arguments": "cli",
    "main": "cli",
    "ReportError": "io",
    "EvalPoint": "runs",
    "RunData": "runs",
    "load_run": "runs",
    "Cell": "studies",
    "CellInfo": "studies",
    "ResultRow": "studies",
    "StudyData": "studies",
    "load_study": "studies",
}
__all__ = [
    "Cell",
    "CellInfo",
    "EvalPoint",
    "Report",
    "ReportError",
    "ResultRow",
    "RunData",
    "StudyData",
    "add_arguments",
    "build_report",
    "load_run",
    "load_study",
    "main",
    "write_report",
]

if TYPE_CHECKING:
    from asympo.report.build import Report, build_report, write_report
    from asympo.report.cli import add_arguments, main
    from asympo.report.io import ReportError
    from asympo.report.runs import EvalPoint, RunData, load_run
    from asympo.report.studies import Cell, CellInfo, ResultRow, StudyData, load_study


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'asympo.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"asympo.report.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
