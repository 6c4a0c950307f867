"""The typed record every task yields: a prompt and the reference its completions are graded against."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One task instance.

    `prompt` is the text shown to the model (already templated), `reference` what the reward function
    compares a completion against (an exact answer, a LaTeX expression, ...). `meta` holds anything
    else the source had (subject, level, original question) and is never used for grading.
    """

    id: str
    prompt: str
    reference: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)
