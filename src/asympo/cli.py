"""The `asympo` command line: one subcommand per user task; `asympo <command> --help` documents each."""

from __future__ import annotations

import argparse
import sys

from asympo import __version__


def _cmd_objectives(args: argparse.Namespace) -> int:
    from asympo.objectives import OBJECTIVES

    for name, obj in OBJECTIVES.items():
        hp = ", ".join(f"{k}={v!r}" for k, v in obj.hparams.items()) or "-"
        needs = "needs behavior log-probs" if obj.needs_behavior_logp else "current policy only"
        print(f"{name:8s} {needs:26s} hparams: {hp}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asympo",
        description="Asynchronous RL post-training for language models without behavior-policy information.",
    )
    parser.add_argument("--version", action="version", version=f"asympo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("objectives", help="list the built-in objectives and their hyperparameters")
    p.set_defaults(func=_cmd_objectives)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
