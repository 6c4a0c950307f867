"""Every `asympo` command in the README's shell blocks still parses with today's CLI, and every train/demo
command's flags and `--set` overrides build a valid config (a renamed flag or config field fails here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from asympo.cli import build_parser, config_from_args

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """`asympo ...` commands of the README's ```bash blocks (continuations joined, comments dropped, `a && b`
    and a trailing `&` split off)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split(" #")[0].strip().rstrip("&").strip()
                if part.startswith("asympo "):
                    commands.append(part)
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_this_test_checks():
    assert len(COMMANDS) >= 15, COMMANDS
    assert {c.split()[1] for c in COMMANDS} >= {"demo", "train", "eval", "study", "report", "serve"}


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses_and_builds_its_config(command, capsys):
    argv = shlex.split(command)[1:]
    if argv[0] == "report":  # parses its own arguments (`asympo report DIR`): its flags are in its --help
        from asympo.cli import main

        with pytest.raises(SystemExit):
            main(["report", "--help"])
        usage = capsys.readouterr().out
        assert all(a in usage for a in argv[1:] if a.startswith("-")), usage
        return
    args = build_parser().parse_args(argv)  # an unknown flag exits with status 2 here
    if argv[0] in ("train", "demo") and not getattr(args, "resume", False) and not args.help_config:
        cfg = config_from_args(args, default_preset="demo" if argv[0] == "demo" else None)
        for item in args.overrides:  # each --set reached the config
            key, _, _ = item.partition("=")
            node = cfg
            for part in key.split("."):
                node = node[part] if isinstance(node, dict) else getattr(node, part)


def test_every_test_named_in_the_docs_exists():
    """docs/*.md cite tests by name as evidence (docs/reliability.md's tables): a renamed or deleted test
    must not leave a claim without its proof."""
    root = README.parent
    defined = set()
    for f in (root / "tests").rglob("*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)", f.read_text(), flags=re.M))
    missing = {}
    for doc in [README, *sorted((root / "docs").glob("*.md"))]:
        cited = set(re.findall(r"\b(test_\w+)(?:\[|`|,|\s|\)|$)", doc.read_text()))
        cited = {c for c in cited if not c.startswith(("test_slow", "test_integrations"))}  # make targets
        if cited - defined:
            missing[doc.name] = sorted(cited - defined)
    assert not missing, missing
