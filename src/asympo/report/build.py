"""`write_report`: detect a run or study directory, draw its plots, write `report.html` beside them."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from asympo.report.figures import Plot
from asympo.report.html import run_page, study_page
from asympo.report.io import METRICS_FILE, RESULTS_FILE, ReportError, describe_contents, existing_dir
from asympo.report.markdown import study_markdown
from asympo.report.run_plots import plot_run
from asympo.report.runs import is_run_dir, load_run
from asympo.report.studies import is_study_dir, load_study
from asympo.report.study_plots import plot_study

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.md"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class Report:
    """What `build_report` wrote."""

    kind: str
    """"run" or "study"."""
    html: Path
    plots: list[Plot]
    warnings: list[str]


def build_report(path: str | Path, *, window: int | None = None, embed: bool = True) -> Report:
    """Write `DIR/plots/*.png` and `DIR/report.html` (and, for a study, `DIR/summary.md`) for a run or
    study directory.

    window: smoothing window in steps (default: about 1/20 of the run). embed: put the PNGs into the
    HTML as base64 so the page is one self-contained file; otherwise it links `plots/NAME.png`.
    Raises `ReportError` for a directory that is neither a run nor a study.
    """
    if window is not None and window < 1:
        raise ReportError(f"window must be a positive number of steps, got {window}")
    path = existing_dir(path)
    plots_dir = path / PLOTS_DIR
    if is_study_dir(path):
        study = load_study(path)
        plots = plot_study(study, plots_dir, window)
        html, kind, warnings = study_page(study, plots, path, embed), "study", study.warnings
        _write_atomic(path / SUMMARY_FILE, study_markdown(study))
    elif is_run_dir(path):
        run = load_run(path)
        plots = plot_run(run, plots_dir, window)
        html, kind, warnings = run_page(run, plots, path, embed), "run", run.warnings
    else:
        raise ReportError(
            f"{path} is neither a run directory (it has no {METRICS_FILE}) nor a study directory "
            f"(no {RESULTS_FILE}, no cells/); {describe_contents(path)}"
        )
    target = path / REPORT_FILE
    _write_atomic(target, html)
    return Report(kind, target, plots, warnings)


def write_report(path: str | Path, *, window: int | None = None, embed: bool = True) -> Path:
    """Write the report of a run or study directory and return the path of its `report.html`."""
    return build_report(path, window=window, embed=embed).html


def _write_atomic(target: Path, text: str) -> None:
    # A browser refreshing the page while a long study re-renders it must never see half a file.
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
