"""math_reward: extraction rules, comparison, the GSM8K and MATH-500 sweeps, adversarial completions."""

from __future__ import annotations

import pickle
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asympo.data import load_problems
from asympo.rewards import get_reward, math_reward
from asympo.rewards.math import (
    MAX_ANSWER_CHARS,
    answers_match,
    extract_answer,
    extract_boxed,
    reference_answer,
    symbolic_match,
)
from asympo.rewards.pool import RewardPool, RewardPoolConfig

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def pool():
    with RewardPool("math", RewardPoolConfig(num_workers=2, timeout_s=TIMEOUT_S)) as p:
        yield p


# -- extraction ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("so x = \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{a}{\\sqrt{b^{2}}}}", "\\frac{a}{\\sqrt{b^{2}}}"),
        ("\\fbox{7}", "7"),
        ("\\boxed {  3 }", "3"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are literal, not grouping
        ("\\boxed{5} and a truncated \\boxed{12", "5"),  # an unclosed box is ignored
        ("\\boxed{\\boxed{9}}", "\\boxed{9}"),  # the box that closes last wins
        ("steps\n#### 1,234\n", "1,234"),
        ("#### 1\nmore\n#### 2", "2"),
        ("So the answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("The final answer is: 17.", "17"),
        ("THE ANSWER IS 3.5.", "3.5"),
        ("the answer is \\(x+1\\)", "x+1"),
        ("The answer is **$42$**.", "42"),
        ("#### `7`", "7"),
        ("#### **", "**"),  # emphasis markers alone are not stripped to nothing
        ("#### 8\nthe answer is 9", "8"),  # #### before "the answer is"
        ("the answer is 9\n\\boxed{10}", "10"),  # \boxed before everything
        ("no final answer here, 42", None),
        ("\\boxed{unclosed", None),
        ("the answer is", None),
        ("", None),
    ],
)
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def _balanced(text_chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Strings whose braces balance, nested to any depth, that never open a box themselves."""
    leaf = text_chars
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(lambda a, b: a + b, inner, inner),
            st.builds(lambda a: "{" + a + "}", inner),
            st.builds(lambda a: "\\frac{" + a + "}{" + a + "}", inner),
        ),
        max_leaves=30,
    )


_PLAIN = st.text(alphabet="abcxyz0123456789+-=^_ ,.()", max_size=6)


@settings(max_examples=300, deadline=None)
@given(content=_balanced(_PLAIN), before=_PLAIN, after=_PLAIN, depth=st.integers(0, 50))
def test_extract_boxed_returns_content_at_any_nesting(content, before, after, depth):
    nested = "{" * depth + content + "}" * depth
    text = f"{before} \\boxed{{{nested}}} {after}"
    assert extract_boxed(text) == nested.strip()


@settings(max_examples=100, deadline=None)
@given(first=_balanced(_PLAIN), second=_balanced(_PLAIN))
def test_extract_boxed_takes_the_last_box(first, second):
    assert extract_boxed(f"\\boxed{{{first}}} then \\boxed{{{second}}}") == second.strip()


def test_extract_boxed_is_linear_on_pathological_input():
    text = "\\boxed{" * 200_000 + "}"  # quadratic scanning would take minutes
    start = time.monotonic()
    assert extract_boxed(text) == ""
    assert time.monotonic() - start < 2.0


# -- comparison ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("42", "42", True),
        ("1,000", "1000", True),
        ("1000", "1,000", True),
        ("\\$18", "18", True),
        ("18.", "18", True),
        ("5.0", "5", True),
        ("-3", "-3", True),
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac{10}{2}", "5", True),
        ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
        ("x^2+1", "1+x^2", True),
        ("\\text{(C)}", "\\text{(C)}", True),
        ("43", "42", False),
        ("4.2", "42", False),
        ("5.0000001", "5", False),  # plain numbers compare exactly, not to 6 places
        ("\\frac{1}{3}", "\\frac{1}{2}", False),
        ("(3, \\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ],
)
def test_answers_match(answer, reference, expected):
    assert answers_match(answer, reference) is expected


@settings(max_examples=60, deadline=None)
@given(a=st.integers(-(10**12), 10**12), b=st.integers(-(10**12), 10**12))
def test_number_fast_path_agrees_with_math_verify(a, b):
    for x, y in ((a, b), (a, a)):
        assert answers_match(str(x), str(y)) == (x == y) == symbolic_match(str(x), str(y))


@settings(max_examples=60, deadline=None)
@given(
    a=st.decimals(-1000, 1000, places=3, allow_nan=False, allow_infinity=False),
    b=st.decimals(-1000, 1000, places=3, allow_nan=False, allow_infinity=False),
)
def test_decimal_fast_path_agrees_with_math_verify(a, b):
    """Up to math-verify's 6 rounding places the exact fast path and sympy agree."""
    for x, y in ((a, b), (a, a)):
        assert answers_match(str(x), str(y)) == (x == y) == symbolic_match(str(x), str(y))


def test_reference_answer_takes_text_after_last_hashes():
    assert reference_answer("She pays 3*6 = 18\n#### 18") == "18"
    assert reference_answer("  \\frac{1}{2} ") == "\\frac{1}{2}"
    assert math_reward("\\boxed{18}", "She pays 3*6 = 18\n#### 18") == 1.0


def test_math_reward_values_and_errors():
    assert math_reward("The answer is 7.", "7") == 1.0
    assert math_reward("I think it is 7", "7") == 0.0  # no final answer stated
    assert math_reward("\\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}", "1" * (MAX_ANSWER_CHARS + 1)) == 0.0
    with pytest.raises(TypeError, match="completion: str"):
        math_reward(None, "7")  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(math_reward)) is math_reward
    assert get_reward("math") is math_reward


# -- the datasets through the pool --------------------------------------------------------------------


def test_gsm8k_all_references_grade(pool):
    problems = load_problems("gsm8k", "test")
    refs = [p.reference for p in problems]
    assert len(refs) == 1319
    wrong = [str(int(r) + 1) for r in refs]
    completions = (
        [f"{p.meta['solution'].rsplit('####', 1)[0]}#### {r}" for p, r in zip(problems, refs)]
        + [f"Step by step... so \\boxed{{{r}}}." for r in refs]
        + [f"\\boxed{{{w}}}" for w in wrong]
        + [f"#### {w}" for w in wrong]
    )
    batch = pool.score_batch(completions, refs * 4)
    assert batch.status == ["ok"] * len(completions)
    assert batch.rewards == [1.0] * (2 * 1319) + [0.0] * (2 * 1319)


def test_gsm8k_raw_solutions_as_references(pool):
    """A reference may be the raw GSM8K solution; its thousands commas go away."""
    problems = load_problems("gsm8k", "test")
    with_commas = [p for p in problems if "," in p.meta["solution"].rsplit("####", 1)[1]]
    assert len(with_commas) == 14
    rewards = pool.score(
        ["\\boxed{" + p.reference + "}" for p in with_commas], [p.meta["solution"] for p in with_commas]
    )
    assert rewards == [1.0] * 14


def test_math500_answers_grade(pool):
    refs = [p.reference for p in load_problems("math500")]
    assert len(refs) == 500
    right = pool.score_batch([f"Thus \\boxed{{{r}}}." for r in refs], refs)
    assert right.timeouts == right.errors == 0
    assert sum(right.rewards) >= 0.99 * 500

    # Each problem graded against another problem's answer: wrong, except where the two answers are the
    # same value (duplicates such as "3", or "x=5" against "5").
    shifted = refs[1:] + refs[:1]
    pairs = [(s, r) for s, r in zip(shifted, refs) if s.replace(" ", "") != r.replace(" ", "")]
    wrong = pool.score([f"\\boxed{{{s}}}" for s, _ in pairs], [r for _, r in pairs])
    assert sum(wrong) <= 0.01 * len(pairs)


def test_math500_clearly_wrong_answers(pool):
    refs = [p.reference for p in load_problems("math500")]
    sample = random.Random(0).sample(refs, 100)
    assert pool.score(["\\boxed{\\text{I do not know}}"] * 100, sample) == [0.0] * 100


# -- adversarial completions --------------------------------------------------------------------------


ADVERSARIAL = {
    "million_chars": "x" * 1_000_000,
    "million_chars_boxed": "\\boxed{" + "9" * 1_000_000 + "}",
    "million_braces": "{" * 500_000 + "}" * 500_000,
    "power_tower_python": "The answer is 10**10**10",
    "power_tower_latex": "\\boxed{10^{10^{10}}}",
    "huge_factorial": "\\boxed{(10^{10})!}",
    "frac_10000_deep": "\\boxed{" + "\\frac{1}{" * 10_000 + "2" + "}" * 10_000 + "}",
    "frac_10000_deep_unclosed": "\\frac{1}{" * 10_000,
    "frac_100_deep": "\\boxed{" + "\\frac{1}{" * 100 + "2" + "}" * 100 + "}",
    "malformed_latex": "\\boxed{\\frac{1}{\\sqrt{} \\left( \\right \\begin{matrix} & \\\\ }",
    "unbalanced": "\\boxed{\\left( 3 \\right} }}}} {{{",
    "nul_bytes": "\x00\\boxed{5\x00}\x00 #### \x00",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_completion_returns_within_timeout(pool, name):
    pool.wait_ready()  # a worker replaced by the previous test must not be timed starting up
    start = time.monotonic()
    batch = pool.score_batch([ADVERSARIAL[name], "\\boxed{5}"], ["5", "5"])
    elapsed = time.monotonic() - start
    assert elapsed <= TIMEOUT_S + 1.0, f"{name} took {elapsed:.2f} s"
    assert batch.rewards == [0.0, 1.0]  # the pool keeps grading the rest of the batch
    assert batch.status[1] == "ok"
