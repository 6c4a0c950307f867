"""The procedural arithmetic task of the embedded default: "a+b=" -> the integer answer.

Problems are drawn without replacement from the space of all (a, op, b) triples, so the train and
held-out splits are disjoint by construction, and the same config always yields the same problems.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from asympo.data.problem import Problem

__all__ = ["OPS", "ArithmeticConfig", "arithmetic_problems"]

OPS = ("+", "-", "*")
SPLITS = ("train", "test")


@dataclass
class ArithmeticConfig:
    """Which problems the task holds."""

    digits: int = 2
    """Operands are integers in [0, 10**digits); 1..9."""
    ops: tuple[str, ...] = ("+",)
    """Operations to draw from, a non-empty subset of ("+", "-", "*")."""
    n_train: int = 2000
    """Problems in the train split."""
    n_test: int = 200
    """Problems in the held-out split (disjoint from train)."""
    seed: int = 0
    """Seed of the draw; the same config gives the same problems."""
    prompt_format: str = "{a}{op}{b}="
    """Prompt template with the fields {a}, {op} and {b}."""
    allow_negative: bool = False
    """For "-": allow a < b (negative answers); if False the larger operand comes first."""

    def __post_init__(self) -> None:
        self.ops = tuple(self.ops)
        if isinstance(self.digits, bool) or not isinstance(self.digits, int) or not 1 <= self.digits <= 9:
            raise ValueError(f"ArithmeticConfig.digits must be an int in 1..9, got {self.digits!r}")
        if not self.ops or any(op not in OPS for op in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ArithmeticConfig.ops must be distinct values from {OPS}, got {self.ops!r}")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ArithmeticConfig.{name} must be an int >= 0, got {value!r}")
        if self.n_train + self.n_test > self.n_distinct:
            raise ValueError(
                f"ArithmeticConfig: n_train + n_test = {self.n_train + self.n_test} exceeds the "
                f"{self.n_distinct} distinct problems of digits={self.digits}, ops={self.ops}"
            )
        fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt_format) if f is not None}
        if fields != {"a", "op", "b"}:
            raise ValueError(
                f"ArithmeticConfig.prompt_format must use exactly the fields {{a}}, {{op}}, {{b}}; "
                f"got {self.prompt_format!r}"
            )

    @property
    def n_distinct(self) -> int:
        """Distinct problems (ordered operand pairs x ops; for "-" without negatives, a >= b)."""
        n = 10**self.digits
        per_op = {"+": n * n, "*": n * n, "-": n * n if self.allow_negative else n * (n + 1) // 2}
        return sum(per_op[op] for op in self.ops)

    @property
    def max_answer_chars(self) -> int:
        """Longest answer string (sign included), to size `max_new_tokens` (add 1 for EOS)."""
        n = 10**self.digits - 1
        extreme = {"+": n + n, "*": n * n, "-": -n if self.allow_negative else n}
        return max(len(str(extreme[op])) for op in self.ops)


def _decode(index: int, cfg: ArithmeticConfig) -> tuple[int, str, int]:
    """The index-th triple of the problem space (ops in cfg order, then operands)."""
    n = 10**cfg.digits
    for op in cfg.ops:
        size = n * (n + 1) // 2 if op == "-" and not cfg.allow_negative else n * n
        if index < size:
            if size == n * n:
                return index // n, op, index % n
            # Triangular enumeration of a >= b: row a holds b = 0..a.
            a = int(((8 * index + 1) ** 0.5 - 1) // 2)
            while a * (a + 1) // 2 > index:  # guard the float sqrt
                a -= 1
            while (a + 1) * (a + 2) // 2 <= index:
                a += 1
            return a, op, index - a * (a + 1) // 2
        index -= size
    raise IndexError(index)


def _answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def arithmetic_problems(cfg: ArithmeticConfig, split: str) -> list[Problem]:
    """The problems of one split ("train" or "test"), deterministic given the config."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # One draw without replacement over the whole space; test takes the first n_test, train the rest.
    draw = random.Random(f"asympo-arith-{cfg.seed}").sample(range(cfg.n_distinct), cfg.n_train + cfg.n_test)
    indices = draw[: cfg.n_test] if split == "test" else draw[cfg.n_test :]
    problems = []
    for index in indices:
        a, op, b = _decode(index, cfg)
        problems.append(
            Problem(
                id=f"arith-{a}{op}{b}",
                prompt=cfg.prompt_format.format(a=a, op=op, b=b),
                reference=str(_answer(a, op, b)),
                meta={"a": a, "op": op, "b": b, "split": split},
            )
        )
    return problems
