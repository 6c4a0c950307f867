"""Plots and an HTML report from a run or study directory (DESIGN §4, §6, §8).

    from asympo.report import load_run, load_study, write_report
    run = load_run("runs/demo")            # RunData: steps, scalars[key] arrays, evals, config, summary
    path = write_report("runs/demo")       # runs/demo/report.html (+ runs/demo/plots/*.png)

`asympo report DIR` is `asympo.report.main`.
"""

from asympo.report.build import Report, build_report, write_report
from asympo.report.cli import add_arguments, main
from asympo.report.io import ReportError
from asympo.report.runs import EvalPoint, RunData, load_run
from asympo.report.studies import Cell, CellInfo, ResultRow, StudyData, load_study

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
