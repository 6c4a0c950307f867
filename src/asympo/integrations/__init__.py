"""Adapters that bring ASymPO and SPO to other trainers: verl (`asympo[verl]`) and TRL (`asympo[trl]`).

The adapters use the math of `asympo.objectives` only; each checks at import that its framework is
installed in a supported version and otherwise raises an ImportError that names the extra to install.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

__all__ = ["require"]


def _release(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: "0.10.0.dev1" -> (0, 10, 0), "1.16.0rc1" -> (1, 16)."""
    parts = []
    for part in version.split("."):
        if not re.fullmatch(r"\d+", part):
            break
        parts.append(int(part))
    return tuple(parts)


def require(package: str, *, extra: str, minimum: str, below: str, module: str) -> ModuleType:
    """Import `package` and check `minimum <= version < below`, or raise an ImportError saying what to install.

    `extra` is the asympo extra that installs it (`pip install 'asympo[extra]'`), `module` the adapter
    asking, so the message points the user at both.
    """
    hint = f"pip install 'asympo[{extra}]' (installs {package}>={minimum},<{below})"
    try:
        mod = importlib.import_module(package)
    except ImportError as e:
        raise ImportError(f"{module} needs {package}, which is not installed: {hint}") from e
    installed = str(getattr(mod, "__version__", "unknown"))
    release = _release(installed)
    if not release or not _release(minimum) <= release < _release(below):
        raise ImportError(
            f"{module} supports {package}>={minimum},<{below}, but {package} {installed} is installed: {hint}"
        )
    return mod
