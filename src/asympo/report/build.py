"""`write_report` and `asympo report DIR`: detect a run or study directory, draw its plots, and write
`report.html` beside them (plots embedded as base64 PNG, or linked from plots/) plus, for a study,
`summary.md`."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from asympo.files import atomic_write_text
from asympo.report import data, tables
from asympo.report.data import ReportError, RunData, StudyData
from asympo.report.plots import Plot, plot_run, plot_study
from asympo.report.tables import Table


@dataclass(frozen=True)
class Report:
    """What `build_report` wrote."""

    kind: str  # "run" or "study"
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
    path = data.existing_dir(path)
    if data.is_study_dir(path):
        study = data.load_study(path)
        plots, kind, warnings = plot_study(study, path / "plots", window), "study", study.warnings
        html = study_page(study, figures(plots, path, embed))
        # Atomic: a browser refreshing the page while a long study re-renders it never sees half a file.
        atomic_write_text(path / "summary.md", tables.study_markdown(study))
    elif data.is_run_dir(path):
        run = data.load_run(path)
        plots, kind, warnings = plot_run(run, path / "plots", window), "run", run.warnings
        html = run_page(run, figures(plots, path, embed))
    else:
        raise ReportError(
            f"{path} is neither a run directory (it has no {data.METRICS_FILE}) nor a study directory "
            f"(no {data.RESULTS_FILE}, no cells/); {data.describe_contents(path)}"
        )
    atomic_write_text(path / "report.html", html)
    return Report(kind, path / "report.html", plots, warnings)


def write_report(path: str | Path, *, window: int | None = None, embed: bool = True) -> Path:
    """Write the report of a run or study directory and return the path of its `report.html`."""
    return build_report(path, window=window, embed=embed).html


# ------------------------------------------------------------------------------------------------ HTML

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.key, th.key { text-align: left; font-family: ui-monospace, monospace; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; max-width: 900px; }
.warn { background: #fff6e0; border: 1px solid #f0c36d; padding: 0.5em 1em; }
details { margin: 0.6em 0; } summary { cursor: pointer; color: #245; }
nav a { margin-right: 1em; }
.tables { display: flex; flex-wrap: wrap; gap: 0 2em; } .tables > div { width: min-content; min-width: 320px; }
.tables td, .tables th { white-space: nowrap; }
.tables h3 { font-size: 0.95em; margin: 1em 0 0 0; }
"""


def page(title: str, subtitle: str, warnings: list[str], sections: list[tuple[str, str]]) -> str:
    """The page shell: a title, a line of context, warnings, a table of contents and the (name, HTML)
    sections; a section whose HTML is empty (or an empty list: `run.evals and ...`) is left out."""
    sections = [(name, html) for name, html in sections if html]
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    warn = "".join(f"<li>{escape(w)}</li>" for w in warnings)
    warn = warn and f'<div class="warn"><b>Warnings</b><ul>{warn}</ul></div>'
    nav = " ".join(f'<a href="#{anchor(name)}">{escape(name)}</a>' for name, _ in sections)
    body = "".join(f'<h2 id="{anchor(name)}">{escape(name)}</h2>{html}' for name, html in sections)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
        f'<p class="meta">{escape(subtitle)} · report generated {escape(now)} by asympo report</p>'
        f"{warn}<nav>{nav}</nav>{body}</body></html>\n"
    )


def figures(plots: list[Plot], report_dir: Path, embed: bool) -> str:
    def src(plot: Plot) -> str:
        if embed:
            return "data:image/png;base64," + base64.b64encode(plot.path.read_bytes()).decode("ascii")
        return plot.path.relative_to(report_dir).as_posix()

    return "".join(
        f'<figure id="{escape(plot.path.stem)}"><img src="{escape(src(plot))}" alt="{escape(plot.title)}">'
        f"<figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)}</figcaption></figure>"
        for plot in plots
    )


def details(summary: str, html: str) -> str:
    return f"<details><summary>{summary}</summary>{html}</details>"


def run_page(run: RunData, figures: str) -> str:
    sections = [
        ("Summary", tables.run_overview(run).html()),
        ("Plots", figures),
        ("Held-out evaluations", run.evals and tables.evals_table(run).html()),
        ("Metrics", run.scalars and tables.metrics_table(run).html()),
        ("Config", config_html(run.config) if run.config else "<p>No config.json.</p>"),
    ]
    return page(f"Run report: {run.path.name}", str(run.path.resolve()), run.warnings, sections)


def study_page(study: StudyData, figures: str) -> str:
    results = Table(study.columns, [[r.value(c) for c in study.columns] for r in study.rows], id="results")
    source = "rebuilt from the cells" if study.rows_from_cells else "results.csv"
    # Side by side where the page is wide: a dozen small pivots stacked would push the plots far down.
    diagnostics = "".join(
        f"<div><h3>{escape(h)}</h3>{t.html()}</div>" for h, t in tables.diagnostic_tables(study)
    )
    sections = [
        ("Final pass@1", study.rows and (
            "<p>Final held-out pass@1, mean ± sample std (ddof=1) over seeds, per objective and staleness; "
            "in brackets the seeds marked collapsed.</p>"
            + tables.column_pivot(study, "final_pass1", " collapsed").html())),
        ("Results by group", study.rows and (
            "<p>Mean ± sample standard deviation (ddof=1) over seeds; collapsed = seeds the study marked "
            "collapsed / seeds with a known verdict.</p>" + tables.groups_table(study).html())),
        ("Diagnostics", diagnostics and (
            "<p>From the cells' own logs: mean ± sample std (ddof=1) over seeds; — where no cell logged it.</p>"
            f'<div class="tables">{diagnostics}</div>')),
        ("Plots", figures),
        ("All results", study.rows and details(f"{len(study.rows)} rows ({source})", results.html())),
        ("Cells", study.cells and cells_html(study)),
        ("Study config", study.config and config_html(study.config)),
    ]  # fmt: skip
    subtitle = f"{study.path.resolve()} · {len(study.rows)} result rows"
    if study.cells:  # a results.csv copied on its own (docs/results/) has no cells to count
        subtitle += f" · {sum(c.run is not None for c in study.cells)}/{len(study.cells)} cells with logs"
    return page(f"Study report: {study.path.name}", subtitle, study.warnings, sections)


def cells_html(study: StudyData) -> str:
    rows = [
        [c.name, c.objective, c.staleness, c.seed, c.lr, len(c.run) if c.run else 0,
         c.run.last("reward/mean") if c.run else float("nan"),
         c.run.evals[-1].pass1 if c.run is not None and c.run.evals else float("nan")]
        for c in study.cells
    ]  # fmt: skip
    headers = ["cell", "objective", "staleness", "seed", "lr", "steps", "last reward", "last pass@1"]
    html = details(f"{len(rows)} cells", Table(headers, rows, key_columns=2, id="cells").html())
    common, varying = tables.config_split([c.run.config for c in study.cells if c.run is not None])
    if varying:
        shown = [
            [k, ", ".join(map(tables.fmt, vs[:12])) + (" …" if len(vs) > 12 else "")]
            for k, vs in varying.items()
        ]
        html += "<p>Config keys that vary across cells:</p>" + Table(["key", "values"], shown).html()
    if common:
        html += details("Config shared by all cells", Table(["key", "value"], list(common.items())).html())
    return html


def config_html(config: dict[str, Any]) -> str:
    # Both columns left-aligned: config values are mostly names and paths, not numbers to compare.
    table = Table(
        ["key", "value"], list(map(list, tables.flatten(config).items())), key_columns=2, id="config"
    )
    raw = escape(json.dumps(config, indent=2, sort_keys=True, default=str))
    return table.html() + details("config.json", f"<pre>{raw}</pre>")


def anchor(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`asympo report DIR`: 0 on success, 2 on a directory that cannot be reported on."""
    parser = argparse.ArgumentParser(
        prog="asympo report",
        description="Write DIR/report.html and DIR/plots/*.png from a run directory (metrics.jsonl, "
        "eval.jsonl, config.json) or a study directory (results.csv, cells/). Works on runs still in "
        "progress.",
    )
    parser.add_argument(
        "dir", help="a run directory (metrics.jsonl) or a study directory (results.csv or cells/)"
    )
    parser.add_argument(
        "--window", type=int, default=None, metavar="N",
        help="smoothing window in steps for the bold curves (default: about 1/20 of the run)",
    )  # fmt: skip
    parser.add_argument(
        "--no-embed", action="store_true",
        help="link plots/NAME.png from the HTML instead of embedding them "
        "(a smaller page, not self-contained)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        report = build_report(args.dir, window=args.window, embed=not args.no_embed)
    except ReportError as exc:
        print(f"asympo report: error: {exc}", file=sys.stderr)
        return 2
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{report.kind} report: {report.html}")
    for plot in report.plots:
        print(f"  {plot.path}")
    return 0
