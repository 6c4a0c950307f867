"""The import rules of docs/design.md#which-part-may-import-which, checked on the source with ast.

Every import counts, a lazy one inside a function included: a lazy import is still a dependency, only a
later one. Imports under `if TYPE_CHECKING:` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MATH = ("asympo.objectives", "asympo.advantages", "asympo.logprobs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    """The asympo modules that `source` (the text of `module`) imports; `from asympo.x import y` counts
    as asympo.x and asympo.x.y (y may be a submodule)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return {name for name in found if name == "asympo" or name.startswith("asympo.")}


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


MODULES = {module_name(p): imports_of(p) for p in sorted((SRC / "asympo").rglob("*.py"))}


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(importers: tuple[str, ...], allowed) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in MODULES.items()
        if within(module, *importers)
        for target in targets
        if not allowed(target)
    )


def test_the_source_tree_was_found_and_parsed():
    # A rule checked against nothing passes vacuously: make sure the walk saw the package.
    assert {"asympo.objectives", "asympo.learner", "asympo.runtime.buffer", "asympo.engines.torch"} <= set(
        MODULES
    )
    assert "asympo.objectives" in MODULES["asympo.learner"]


def test_the_math_imports_nothing_of_ours():
    assert violations(MATH, lambda target: False) == []


def test_rewards_and_data_never_import_engines_or_the_runtime():
    bad = ("asympo.engines", "asympo.runtime", "asympo.learner", "asympo.train")
    assert violations(("asympo.rewards", "asympo.data"), lambda t: not within(t, *bad)) == []


def test_engines_know_no_learner():
    bad = ("asympo.learner", "asympo.objectives", "asympo.runtime", "asympo.train")
    assert violations(("asympo.engines",), lambda t: not within(t, *bad)) == []


def test_integrations_use_the_math_only():
    allowed = (*MATH, "asympo.integrations")
    assert violations(("asympo.integrations",), lambda t: within(t, *allowed)) == []


def test_the_runtime_never_imports_the_cli():
    bad = ("asympo.cli", "asympo.train", "asympo.report")
    assert violations(("asympo.runtime",), lambda t: not within(t, *bad)) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asympo.engines.torch", {"asympo.engines.torch"}),
        ("def f():\n    from asympo.runtime import buffer", {"asympo.runtime", "asympo.runtime.buffer"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asympo.train", set()),
        ("from . import problem", {"asympo.data", "asympo.data.problem"}),
    ],
)
def test_the_import_scanner_sees_lazy_and_relative_imports(source, expected):
    assert imports_in(source, "asympo.data.probe") == expected
