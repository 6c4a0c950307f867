"""Tasks as lists of `Problem`: shipped GSM8K / MATH-500, user files, HF datasets, the arithmetic task.

`from asympo.data import load_problems, Problem`. Names this module does not define itself are looked up,
on first use, in `asympo.data.arithmetic` (the procedural arithmetic task), so importing `asympo.data`
never pays for, or depends on, that module.
"""

from __future__ import annotations

import importlib
from typing import Any

from asympo.data.loaders import BUILTIN_DATASETS, load_problems, read_jsonl
from asympo.data.problem import Problem
from asympo.data.templates import BOXED_INSTRUCTION, TEMPLATES, render_prompt

__all__ = [
    "BOXED_INSTRUCTION",
    "BUILTIN_DATASETS",
    "TEMPLATES",
    "Problem",
    "load_problems",
    "read_jsonl",
    "render_prompt",
]


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        arithmetic = importlib.import_module("asympo.data.arithmetic")
    except ImportError as e:
        raise AttributeError(
            f"module 'asympo.data' has no attribute {name!r} (and asympo.data.arithmetic, where it would "
            f"live, cannot be imported: {e})"
        ) from None
    if name == "arithmetic":
        return arithmetic
    try:
        return getattr(arithmetic, name)
    except AttributeError:
        raise AttributeError(f"module 'asympo.data' has no attribute {name!r}") from None
