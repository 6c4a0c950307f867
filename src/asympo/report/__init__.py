"""Plots and an HTML report from a run or study directory (see docs/report.md).

    from asympo.report import load_run, load_study, write_report
    run = load_run("runs/demo")            # RunData: steps, scalars[key] arrays, evals, config, summary
    path = write_report("runs/demo")       # runs/demo/report.html (+ runs/demo/plots/*.png)

`asympo report DIR` is `asympo.report.main`.
"""

from asympo.report.build import Report, build_report, main, write_report
from asympo.report.data import (
    CellRun,
    EvalPoint,
    ReportError,
    ResultRow,
    RunData,
    StudyData,
    load_run,
    load_study,
)

__all__ = ["CellRun", "EvalPoint", "Report", "ReportError", "ResultRow", "RunData", "StudyData"]
__all__ += ["build_report", "load_run", "load_study", "main", "write_report"]
