"""`asympo report DIR`: plots and an HTML page from a run or study directory."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from asympo.report.io import ReportError

DESCRIPTION = (
    "Write DIR/report.html and DIR/plots/*.png from a run directory (metrics.jsonl, eval.jsonl, "
    "config.json) or a study directory (results.csv, cells/). Works on runs still in progress."
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the report's arguments to `parser` (for a `report` subcommand of the main CLI)."""
    parser.add_argument(
        "dir", help="a run directory (metrics.jsonl) or a study directory (results.csv or cells/)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="N",
        help="smoothing window in steps for the bold curves (default: about 1/20 of the run)",
    )
    parser.add_argument(
        "--no-embed",
        action="store_true",
        help="link plots/NAME.png from the HTML instead of embedding them (a smaller page, not self-contained)",
    )
    return parser


def build_parser(prog: str = "asympo report") -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    """Run the command for parsed `args`; returns the process exit code."""
    from asympo.report.build import build_report  # numpy + matplotlib: only when a report is made

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `main(["DIR"])` → 0 on success, 2 on a directory that cannot be reported on."""
    return run(build_parser().parse_args(argv))
