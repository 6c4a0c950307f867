"""The procedural reasoning task: GSM8K-shaped word problems with a short chain-of-thought solution.

Each problem comes from one of a few templates (buying, sharing, rates, differences, packing, saving),
takes 2 to 4 operations over small integers, and has a reference solution of one line per operation
ending in `#### N`, e.g.

    Mia buys 4 pens at 3 dollars each and a bag for 12 dollars. How much does Mia spend?
    ->  The pens cost 4*3=12 dollars.
        In all 12+12=24 dollars.
        #### 24

so responses run from about 40 to 130 characters. It is graded by the math reward
(`asympo.rewards.math.math_reward`, which reads the number after `####`).

Two settings shape the problems for a small model:

- `max_number` keeps only the problems whose every number (operands, intermediate results, answer) is at
  most that large, so the arithmetic is a small set of facts a few-million-parameter model can learn. Without
  it two-digit sums dominate, and the 1.6M model of the second scale got nine additions in ten wrong after its
  warm-up.
- `extras` adds optional lines to some solutions: `check` recomputes the last step backwards
  (`Check: 24-12=12.`) and `restate` repeats the answer (`So the answer is 24.`). Which problems get which
  extra is a hash of the problem, so a model trained on them cannot predict it and learns to write either
  form: its samples for one prompt then differ in length (and a `check` line is one more calculation that can
  go wrong), which the objectives' per-response normalisation is meant to handle.

The problem space is every (template, numbers) pair the templates allow; the train and held-out splits
are one draw without replacement from it (held-out first), so no template-and-number combination is in
both, and the same config always yields the same problems. The draw takes the templates in turn, so
every template is about equally common although some allow far more number tuples than others. Names and items only decorate a problem and
are derived from its numbers, so they cannot make two copies of one problem look different.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from asympo.data.problem import Problem

__all__ = ["TEMPLATES", "ReasoningConfig", "reasoning_problems"]

SPLITS = ("train", "test")
EXTRAS = ("check", "restate")
NAMES = ("Mia", "Tom", "Ana", "Sam", "Lea", "Ben", "Ivy", "Max")


@dataclass(frozen=True)
class _Template:
    """One problem family: the valid number tuples and how to write a tuple as (prompt, solution, answer)."""

    numbers: Callable[[], Iterator[tuple[int, ...]]]
    write: Callable[[str, tuple[int, ...]], tuple[str, list[str], int]]
    ops: int


def _buy(name, n):
    a, b, c = n
    return (
        f"{name} buys {a} pens at {b} dollars each and a bag for {c} dollars. How much does {name} spend?",
        [f"The pens cost {a}*{b}={a * b} dollars.", f"In all {a * b}+{c}={a * b + c} dollars."],
        a * b + c,
    )


def _share(name, n):
    kids, each, a = n
    total = kids * each
    return (
        f"{name} has {a} apples and picks {total - a} more. {kids} kids share them equally. "
        "How many apples does each kid get?",
        [f"{name} has {a}+{total - a}={total} apples.", f"Each kid gets {total}/{kids}={each} apples."],
        each,
    )


def _rate(name, n):
    a, b, c = n
    return (
        f"A train goes {a} km each hour for {b} hours, then {c} km more. How far does it go?",
        [f"In {b} hours it goes {a}*{b}={a * b} km.", f"In all {a * b}+{c}={a * b + c} km."],
        a * b + c,
    )


def _difference(name, n):
    a, b = n
    other = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
    return (
        f"{name} has {a} coins. {other} has {b} fewer. How many coins do they have together?",
        [f"{other} has {a}-{b}={a - b} coins.", f"Together {a}+{a - b}={a + a - b} coins."],
        2 * a - b,
    )


def _leak(name, n):
    a, b, c, d = n
    net = a - b
    return (
        f"A tank has {d} liters. A tap adds {a} liters a minute and a leak loses {b}. "
        f"How many liters are there after {c} minutes?",
        [
            f"Each minute it gains {a}-{b}={net} liters.",
            f"In {c} minutes {net}*{c}={net * c} liters.",
            f"The tank holds {d}+{net * c}={d + net * c} liters.",
        ],
        d + net * c,
    )


def _pack(name, n):
    rows, cols, per, cartons = n
    eggs = rows * cols
    broken = eggs - per * cartons
    return (
        f"A box has {rows} rows of {cols} eggs. {broken} eggs break. The rest go into cartons of {per}. "
        "How many cartons are filled?",
        [
            f"The box has {rows}*{cols}={eggs} eggs.",
            f"{eggs}-{broken}={eggs - broken} eggs are left.",
            f"They fill {eggs - broken}/{per}={cartons} cartons.",
        ],
        cartons,
    )


def _save(name, n):
    a, b, gift, spent, jars = n
    earned = a * b
    left = earned + gift - spent
    return (
        f"{name} earns {a} dollars a day for {b} days, gets {gift} more, spends {spent} and splits the "
        f"rest equally into {jars} jars. How much is in each jar?",
        [
            f"{name} earns {a}*{b}={earned} dollars.",
            f"With the extra {earned}+{gift}={earned + gift} dollars.",
            f"After spending {earned + gift}-{spent}={left} dollars.",
            f"Each jar gets {left}/{jars}={left // jars} dollars.",
        ],
        left // jars,
    )


def _save_numbers() -> Iterator[tuple[int, ...]]:
    for a, b, gift, jars in itertools.product(range(2, 10), range(2, 8), range(1, 20), range(2, 6)):
        total = a * b + gift
        # `spent` leaves a positive multiple of `jars`.
        for spent in range(total % jars or jars, total, jars):
            if spent >= 1 and (total - spent) // jars <= 30:
                yield a, b, gift, spent, jars


TEMPLATES: dict[str, _Template] = {
    "buy": _Template(lambda: itertools.product(range(2, 10), range(2, 10), range(1, 30)), _buy, ops=2),
    "share": _Template(
        lambda: ((k, e, a) for k in range(2, 7) for e in range(2, 13) for a in range(1, k * e)), _share, ops=2
    ),
    "rate": _Template(lambda: itertools.product(range(2, 10), range(2, 10), range(1, 30)), _rate, ops=2),
    "difference": _Template(lambda: ((a, b) for a in range(5, 60) for b in range(1, a)), _difference, ops=2),
    "leak": _Template(
        lambda: (
            (a, b, c, d)
            for a in range(3, 10)
            for b in range(1, a)
            for c in range(2, 10)
            for d in range(0, 40, 5)
        ),
        _leak,
        ops=3,
    ),
    "pack": _Template(
        lambda: (
            (r, c, p, k)
            for r, c, p in itertools.product(range(2, 10), range(2, 10), range(2, 7))
            for k in range(max(1, (r * c - 20 + p - 1) // p), r * c // p + 1)
            if r * c - p * k >= 1
        ),
        _pack,
        ops=3,
    ),
    "save": _Template(_save_numbers, _save, ops=4),
}


@dataclass
class ReasoningConfig:
    """Which word problems the task holds."""

    templates: tuple[str, ...] = tuple(TEMPLATES)
    """Problem families to draw from, a non-empty subset of TEMPLATES (buy, share, rate, difference, leak,
    pack, save); each has 2-4 operations."""
    n_train: int = 4000
    """Problems in the train split."""
    n_test: int = 200
    """Problems in the held-out split (no (template, numbers) pair of it is in the train split)."""
    seed: int = 0
    """Seed of the draw; the same config gives the same problems."""
    prompt_suffix: str = "\n"
    """Text after the question; the solution starts on the next line."""
    max_number: int | None = None
    """Keep only problems whose every number (operands, intermediate results and answer) is at most this;
    None keeps all."""
    extras: tuple[str, ...] = ()
    """Optional solution lines, each given to about half the problems (a hash of the problem decides):
    "check" (the last step recomputed backwards) and "restate" (the answer repeated)."""

    def __post_init__(self) -> None:
        self.templates = tuple(self.templates)
        self.extras = tuple(self.extras)
        if any(e not in EXTRAS for e in self.extras) or len(set(self.extras)) != len(self.extras):
            raise ValueError(
                f"ReasoningConfig.extras must be distinct names from {EXTRAS}, got {self.extras!r}"
            )
        mx = self.max_number
        if mx is not None and (isinstance(mx, bool) or not isinstance(mx, int) or mx < 1):
            raise ValueError(f"ReasoningConfig.max_number must be None or an int >= 1, got {mx!r}")
        unknown = [t for t in self.templates if t not in TEMPLATES]
        if not self.templates or unknown or len(set(self.templates)) != len(self.templates):
            raise ValueError(
                f"ReasoningConfig.templates must be distinct names from {tuple(TEMPLATES)}, got {self.templates!r}"
            )
        for name in ("n_train", "n_test", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ReasoningConfig.{name} must be an int >= 0, got {value!r}")
        if self.n_train + self.n_test > self.n_distinct:
            raise ValueError(
                f"ReasoningConfig: n_train + n_test = {self.n_train + self.n_test} exceeds the "
                f"{self.n_distinct} distinct problems of templates {self.templates} with max_number "
                f"{self.max_number}; lower them, add templates or raise max_number"
            )

    @property
    def n_distinct(self) -> int:
        """Distinct (template, numbers) problems."""
        return sum(len(_tuples(t, self.max_number)) for t in self.templates)

    @property
    def max_answer_chars(self) -> int:
        """Longest reference solution in characters, to size `max_new_tokens` (add 1 for EOS)."""
        return _longest_solution(self.templates, self.max_number, self.extras)


_NUMBER = re.compile(r"\d+")
_STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")
_INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}


@lru_cache(maxsize=64)
def _tuples(template: str, max_number: int | None) -> tuple[tuple[int, ...], ...]:
    """The number tuples of one template whose solution has no number above `max_number`."""
    tuples = TEMPLATES[template].numbers()
    if max_number is None:
        return tuple(tuples)
    return tuple(
        n for n in tuples if max(map(int, _NUMBER.findall(_render(template, n, ())[1]))) <= max_number
    )


@lru_cache(maxsize=16)
def _longest_solution(templates: tuple[str, ...], max_number: int | None, extras: tuple[str, ...]) -> int:
    return max(len(_render(t, n, extras)[1]) for t in templates for n in _tuples(t, max_number))


def _extras_of(template: str, numbers: tuple[int, ...], extras: tuple[str, ...]) -> list[str]:
    """The extras this problem's solution has: each of `extras` for about half the problems, by a hash."""
    digest = hashlib.sha256(f"{template}-{numbers}".encode()).digest()
    return [e for i, e in enumerate(EXTRAS) if e in extras and digest[i] % 2]


def _render(template: str, numbers: tuple[int, ...], extras: tuple[str, ...]) -> tuple[str, str, int]:
    """(question, solution text ending in `#### N`, N) of one problem."""
    name = NAMES[sum(numbers) % len(NAMES)]
    question, steps, answer = TEMPLATES[template].write(name, numbers)
    chosen = _extras_of(template, numbers, extras)
    if "check" in chosen:
        a, op, b, c = _STEP.search(steps[-1]).groups()
        steps = [*steps, f"Check: {c}{_INVERSE[op]}{b}={a}."]
    if "restate" in chosen:
        steps = [*steps, f"So the answer is {answer}."]
    return question, "\n".join([*steps, f"#### {answer}"]), answer


def reasoning_problems(cfg: ReasoningConfig, split: str) -> list[Problem]:
    """The problems of one split ("train" or "test"), deterministic given the config.

    `Problem.reference` is the full solution (the SFT target); graders read the number after `####`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"asympo-reasoning-{cfg.seed}")
    shuffled = []
    for t in cfg.templates:
        tuples = list(_tuples(t, cfg.max_number))
        rng.shuffle(tuples)
        shuffled.append([(t, n) for n in tuples])
    # Round robin over the templates (one that runs out drops out), held-out first.
    turns = (p for group in itertools.zip_longest(*shuffled) for p in group if p is not None)
    draw = list(itertools.islice(turns, cfg.n_train + cfg.n_test))
    problems = []
    for template, numbers in draw[: cfg.n_test] if split == "test" else draw[cfg.n_test :]:
        question, solution, answer = _render(template, numbers, cfg.extras)
        problems.append(
            Problem(
                id=f"reason-{template}-{'-'.join(map(str, numbers))}",
                prompt=question + cfg.prompt_suffix,
                reference=solution,
                meta={"template": template, "numbers": list(numbers), "answer": answer, "split": split},
            )
        )
    return problems
