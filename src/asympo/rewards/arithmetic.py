"""Exact-answer reward of the arithmetic task."""

from __future__ import annotations

import re

__all__ = ["arithmetic_reward", "extract_answer"]

_INTEGER = re.compile(r"-?[0-9]+")
# Engines strip special tokens from the text; a raw decode may still carry them.
_END_MARKERS = ("<eos>", "\n")


def extract_answer(completion: str) -> str:
    """The answer part of a completion: text up to the first EOS marker or newline, stripped."""
    for marker in _END_MARKERS:
        completion = completion.split(marker, 1)[0]
    return completion.strip()


def arithmetic_reward(completion: str, reference: str) -> float:
    """1.0 if the completion's answer is an integer equal to the reference integer, else 0.0.

    The answer is the text before the first newline (or `<eos>`), stripped of surrounding whitespace; it
    must be a plain integer (optional leading "-", digits only). Leading zeros are tolerated ("007" == 7).
    """
    answer = extract_answer(completion)
    if not _INTEGER.fullmatch(answer):
        return 0.0
    return 1.0 if int(answer) == int(reference.strip()) else 0.0
