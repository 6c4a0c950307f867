"""The math reward: extract a completion's final answer and check it against a reference with math-verify.

Rules (docs/rewards.md has the long form):

1. Extraction, first rule that finds something wins:
   the last complete `\\boxed{...}` (or `\\fbox{...}`, nested braces allowed), else the text after the
   last `####` on its line (GSM8K style), else the text after the last "the (final) answer is" on its
   line; the last two lose closing punctuation, markdown emphasis and `$...$`. Nothing found → 0.0.
2. The reference is the text after the last `####` when it has one (a raw GSM8K solution), else itself.
3. Plain decimal numbers on both sides (thousands commas, `$` and a trailing period allowed) compare
   exactly as rationals, without sympy. Anything else goes to math-verify: both sides are wrapped in
   `\\boxed{}` and parsed as LaTeX (with a plain-expression fallback), then `verify(gold, answer)`.

math-verify's own timeouts use SIGALRM, which works only in a process's main thread and only in whole
seconds, so they are switched off here: a call never touches signals and is safe in any thread. Bounding
the time of a call is the job of `asympo.rewards.pool.RewardPool`, which runs graders in worker
processes and kills the ones that overrun. Call `math_reward` directly only on trusted text.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from functools import lru_cache

# An extracted answer longer than this grades 0.0 without being parsed: real final answers are short
# (MATH-500's longest is under 200 characters) and sympy's parser is super-linear in its input.
MAX_ANSWER_CHARS = 1000

_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}\\]|[{}]")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?[ \t]*([^\n]*)", re.IGNORECASE)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"^([+-]?)(\d{1,3}(?:,\d{3})+)(\.\d*)?$")


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` in `text` (the one closing last).

    One linear pass over the brace tokens: escaped braces (`\\{`, `\\}`) and `\\\\` do not count, and an
    unclosed box (a truncated completion) is ignored in favour of an earlier closed one.
    """
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    stack: list[int] = []  # content start of each open group; -1 for an ordinary `{`
    best: tuple[int, int] | None = None  # (content start, content end) of the box that closed last
    for match in _BOX_TOKENS.finditer(text):
        token = match.group()
        if token[0] == "\\" and token[-1] == "{" and len(token) > 2:
            stack.append(match.end())
        elif token == "{":
            stack.append(-1)
        elif token == "}":
            if stack:
                start = stack.pop()
                if start >= 0:
                    best = (start, match.start())
        # `\{`, `\}`, `\\`: literal characters, not grouping
    if best is None:
        return None
    return text[best[0] : best[1]].strip()


def _last_line_after(pattern: re.Pattern[str], text: str) -> str | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - only the last match is wanted
        pass
    if last is None:
        return None
    answer = last.group(1).strip()
    return answer or None


def _strip_inline_answer(answer: str) -> str:
    """Trim a line-ending answer ("the answer is **$X$**.") to X: closing punctuation, markdown
    emphasis, math delimiters."""
    answer = answer.strip().rstrip(".!;").strip()
    for left, right in (("**", "**"), ("__", "__"), ("`", "`"), ("*", "*")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right):
            answer = answer[len(left) : len(answer) - len(right)].strip().rstrip(".!;").strip()
            break
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
            answer = answer[len(left) : len(answer) - len(right)].strip()
            break
    return answer


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion by the rules above, or None when it states none."""
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed
    for pattern in (_HASHES, _ANSWER_IS):
        found = _last_line_after(pattern, completion)
        if found is not None:
            return _strip_inline_answer(found) or None
    return None


def reference_answer(reference: str) -> str:
    """The gradable part of a reference: the text after the last `####` when present (GSM8K)."""
    if "####" in reference:
        reference = reference.rsplit("####", 1)[1]
    return reference.strip()


def _as_plain_number(text: str) -> Fraction | None:
    """`text` as an exact rational when it is a plain decimal number, else None (no sympy involved)."""
    text = text.strip()
    if text.startswith("\\$"):
        text = text[2:]
    text = text.strip("$ ")
    if text.endswith("."):  # a sentence's full stop: "5." and "3.5." are 5 and 3.5
        text = text[:-1]
    thousands = _THOUSANDS.match(text)
    if thousands:
        text = thousands.group(1) + thousands.group(2).replace(",", "") + (thousands.group(3) or "")
    if not _NUMBER.fullmatch(text):
        return None
    return Fraction(text)


class _DropNoTimeoutWarning(logging.Filter):
    """math-verify warns once per process that its timeouts are off; here that is by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_MATH_VERIFY = None


def _math_verify():
    """Import math-verify on first use: pure-number grading (the common case) never pays for sympy."""
    global _MATH_VERIFY
    if _MATH_VERIFY is None:
        import math_verify

        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropNoTimeoutWarning())
        config = [
            math_verify.LatexExtractionConfig(boxed_match_priority=0),
            math_verify.ExprExtractionConfig(),
        ]
        _MATH_VERIFY = (math_verify.parse, math_verify.verify, config)
    return _MATH_VERIFY


def answers_match(answer: str, reference: str) -> bool:
    """Whether an extracted answer equals a reference answer (both plain strings, no `####`)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    ref_number = _as_plain_number(reference)
    if ref_number is not None:
        answer_number = _as_plain_number(answer)
        if answer_number is not None:
            return answer_number == ref_number
    return symbolic_match(answer, reference)


def symbolic_match(answer: str, reference: str) -> bool:
    """math-verify's verdict on two answer strings, with no fast path and no timeout (see module doc)."""
    gold = _parse_reference(reference)
    target = _parse(answer)
    if not gold or not target:
        return False
    _, verify, _ = _math_verify()
    return bool(verify(list(gold), list(target), timeout_seconds=None))


def _parse(text: str) -> tuple:
    parse, _, config = _math_verify()
    # Wrapping in \boxed{} makes math-verify take the whole string as one expression instead of
    # hunting for a number inside it; `None` timeouts keep it away from SIGALRM.
    return tuple(parse("\\boxed{" + text + "}", config, parsing_timeout=None))


# A reference is graded against a whole group of completions in a row: parse it once. (sympy
# expressions are immutable, so sharing the parsed objects is safe.)
_parse_reference = lru_cache(maxsize=4096)(_parse)


def math_reward(completion: str, reference: str) -> float:
    """1.0 when the completion's final answer equals the reference, else 0.0 (docs/design.md#public-api).

    `reference` is a final answer (MATH-500's `answer` field, GSM8K's number) or a raw GSM8K solution
    ending in `#### N`. Picklable (module level), so process pools can run it.
    """
    if not isinstance(completion, str) or not isinstance(reference, str):
        raise TypeError(
            f"math_reward takes (completion: str, reference: str), got "
            f"({type(completion).__name__}, {type(reference).__name__})"
        )
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    return 1.0 if answers_match(answer, reference_answer(reference)) else 0.0


def warm_up() -> None:
    """Import math-verify and grade one symbolic pair, so a fresh worker's first real call is not slow."""
    answers_match("\\frac{1}{2}", "0.5")
