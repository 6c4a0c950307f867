"""The report's HTML: one self-contained page (plots embedded as base64 PNG, or linked from plots/)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

from asympo.report.figures import Plot
from asympo.report.runs import RunData
from asympo.report.studies import StudyData
from asympo.report.summaries import (
    FINAL_FRACTION,
    config_split,
    flatten,
    fmt,
    group_results,
    metric_rows,
    run_overview,
)

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
"""


def table(headers: list[str], rows: Iterable[list[Any]], key_columns: int = 1, table_id: str = "") -> str:
    """An HTML table; the first `key_columns` columns are left-aligned labels, the rest numbers."""
    ident = f' id="table-{escape(table_id)}"' if table_id else ""
    head = "".join(
        f'<th class="key">{escape(h)}</th>' if i < key_columns else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="key">{escape(fmt(c))}</td>' if i < key_columns else f"<td>{escape(fmt(c))}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(plot: Plot, report_dir: Path, embed: bool) -> str:
    if embed:
        data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    else:
        src = plot.path.relative_to(report_dir).as_posix()
    return (
        f'<figure id="{escape(plot.path.stem)}"><img src="{escape(src)}" alt="{escape(plot.title)}">'
        f"<figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)}</figcaption></figure>"
    )


def page(title: str, subtitle: str, warnings: list[str], sections: list[tuple[str, str]]) -> str:
    """The page shell: a title, a line of context, warnings, a table of contents and the sections."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    warn = ""
    if warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
        warn = f'<div class="warn"><b>Warnings</b><ul>{items}</ul></div>'
    nav = " ".join(f'<a href="#{_anchor(name)}">{escape(name)}</a>' for name, _ in sections)
    body = "".join(f'<h2 id="{_anchor(name)}">{escape(name)}</h2>{html}' for name, html in sections)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
        f'<p class="meta">{escape(subtitle)} · report generated {escape(now)} by asympo report</p>'
        f"{warn}<nav>{nav}</nav>{body}</body></html>\n"
    )


def run_page(run: RunData, plots: list[Plot], report_dir: Path, embed: bool) -> str:
    sections = [("Summary", table(["", "value"], run_overview(run)))]
    if plots:
        sections.append(("Plots", "".join(figure(p, report_dir, embed) for p in plots)))
    if run.evals:
        labels = sorted({k for e in run.evals for k in e.pass_k})
        rows = [[e.step, e.pass1, *(e.pass_k.get(k, float("nan")) for k in labels), e.n] for e in run.evals]
        sections.append(
            ("Held-out evaluations", table(["step", "pass@1", *labels, "n"], rows, table_id="evals"))
        )
    if run.scalars:
        pct = int(FINAL_FRACTION * 100)
        headers = ["metric", "last", f"mean of last {pct}% of steps", "min", "max", "finite steps"]
        sections.append(("Metrics", table(headers, metric_rows(run), table_id="metrics")))
    sections.append(("Config", _config_table(run.config)))
    return page(f"Run report: {run.path.name}", str(run.path.resolve()), run.warnings, sections)


def study_page(study: StudyData, plots: list[Plot], report_dir: Path, embed: bool) -> str:
    groups = group_results(study)
    with_lr = len(study.result_lrs) > 1
    sections = []
    if groups:
        sections.append(("Final pass@1", _pivot(groups, with_lr)))
        extra_keys = list(groups[0].extra)
        headers = [
            "objective",
            *(["lr"] if with_lr else []),
            "staleness",
            "seeds",
            "final pass@1",
            "final reward",
            "collapsed",
            *extra_keys,
        ]
        rows = [
            [
                g.objective,
                *([g.lr] if with_lr else []),
                g.staleness,
                len(g.seeds),
                g.pass1.format(),
                g.reward.format(),
                g.collapse_text(),
                *(g.extra[k].format() for k in extra_keys),
            ]
            for g in groups
        ]
        note = (
            "<p>Mean ± sample standard deviation (ddof=1) over seeds; collapsed = seeds the study marked "
            "collapsed / seeds with a known verdict.</p>"
        )
        sections.append(("Results by group", note + table(headers, rows, key_columns=1, table_id="groups")))
    if plots:
        sections.append(("Plots", "".join(figure(p, report_dir, embed) for p in plots)))
    if study.rows:
        columns = study.columns
        rows = [_raw_row(r, columns) for r in study.rows]
        source = "rebuilt from the cells" if study.rows_from_cells else "results.csv"
        sections.append(
            (
                "All results",
                f"<details><summary>{len(rows)} rows ({source})</summary>"
                f"{table(columns, rows, key_columns=1, table_id='results')}</details>",
            )
        )
    cells_html = _cells_section(study)
    if cells_html:
        sections.append(("Cells", cells_html))
    if study.config:
        sections.append(("Study config", _config_table(study.config)))
    n_cells = sum(c.run is not None for c in study.cells)
    subtitle = f"{study.path.resolve()} · {len(study.rows)} result rows · {n_cells}/{len(study.cells)} cells with logs"
    return page(f"Study report: {study.path.name}", subtitle, study.warnings, sections)


def _pivot(groups: list, with_lr: bool) -> str:
    """Objective rows × staleness columns of final pass@1 (mean ± std, collapsed k/n)."""
    levels = sorted({g.staleness for g in groups})
    cells: dict[str, dict[int, str]] = {}
    for g in groups:
        label = f"{g.objective} lr={g.lr:g}" if with_lr and g.lr is not None else g.objective
        cells.setdefault(label, {})[g.staleness] = f"{g.pass1.format()} ({g.collapse_text()} collapsed)"
    rows = [[label, *(by.get(level, "") for level in levels)] for label, by in cells.items()]
    note = (
        "<p>Final held-out pass@1, mean ± sample std (ddof=1) over seeds, per objective and staleness; "
        "in brackets the seeds marked collapsed.</p>"
    )
    return note + table(["objective", *(f"staleness {lv}" for lv in levels)], rows, table_id="pivot")


def _raw_row(row, columns: list[str]) -> list[Any]:
    values = {
        "objective": row.objective,
        "staleness": row.staleness,
        "seed": row.seed,
        "final_reward": row.final_reward,
        "final_pass1": row.final_pass1,
        "collapsed": row.collapsed,
        "lr": row.lr,
        **row.extra,
    }
    return [values.get(c) for c in columns]


def _cells_section(study: StudyData) -> str:
    if not study.cells:
        return ""
    rows = []
    for cell in study.cells:
        i, run = cell.info, cell.run
        last_eval = run.evals[-1].pass1 if run is not None and run.evals else float("nan")
        rows.append(
            [
                i.name,
                i.objective,
                i.staleness,
                i.seed,
                i.lr,
                len(run) if run else 0,
                run.last("reward/mean") if run else float("nan"),
                last_eval,
            ]
        )
    listing = table(
        ["cell", "objective", "staleness", "seed", "lr", "steps", "last reward", "last pass@1"],
        rows,
        key_columns=2,
        table_id="cells",
    )
    common, varying = config_split([c.run.config for c in study.cells if c.run is not None])
    html = f"<details><summary>{len(rows)} cells</summary>{listing}</details>"
    if varying:
        vary_rows = [
            [k, ", ".join(fmt(v) for v in values[:12]) + (" …" if len(values) > 12 else "")]
            for k, values in varying.items()
        ]
        html += "<p>Config keys that vary across cells:</p>" + table(["key", "values"], vary_rows)
    if common:
        html += (
            "<details><summary>Config shared by all cells</summary>"
            + table(["key", "value"], list(common.items()))
            + "</details>"
        )
    return html


def _config_table(config: dict[str, Any]) -> str:
    if not config:
        return "<p>No config.json.</p>"
    flat = flatten(config)
    raw = escape(json.dumps(config, indent=2, sort_keys=True, default=str))
    return (
        table(["key", "value"], list(flat.items()), table_id="config")
        + f"<details><summary>config.json</summary><pre>{raw}</pre></details>"
    )


def _anchor(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
