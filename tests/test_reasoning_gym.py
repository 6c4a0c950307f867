"""reasoning-gym datasets as tasks; the reward is 1.0 only where reasoning-gym's own score is 1.0.

Needs the optional extra (`pip install 'asympo[reasoning-gym]'`); without it only the error message is
tested and everything else skips.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from asympo.rewards import get_reward
from asympo.rewards.pool import RewardPool, RewardPoolConfig
from asympo.rewards.reasoning_gym import (
    ANSWER_INSTRUCTION,
    extract_tagged_answer,
    reasoning_gym_problems,
    reasoning_gym_reward,
)

HAVE_RG = importlib.util.find_spec("reasoning_gym") is not None
needs_rg = pytest.mark.skipif(not HAVE_RG, reason="reasoning-gym is not installed (optional extra)")


@pytest.mark.skipif(HAVE_RG, reason="reasoning-gym is installed")
def test_missing_extra_says_what_to_install():
    with pytest.raises(ImportError, match=r"pip install 'asympo\[reasoning-gym\]'"):
        reasoning_gym_problems("basic_arithmetic", size=2)
    assert get_reward("reasoning_gym") is reasoning_gym_reward  # resolving the name needs no extra


def test_extract_tagged_answer():
    assert extract_tagged_answer("<answer>1</answer> then <answer>\n 2 \n</answer>") == "2"
    assert extract_tagged_answer("no tags, \\boxed{3}") == "3"
    assert extract_tagged_answer("<answer>unclosed") is None


def _right(problem) -> str:
    return f"Thinking...\n<answer>{problem.meta['answer']}</answer>"


@needs_rg
def test_problems_are_deterministic_by_seed():
    a = reasoning_gym_problems("basic_arithmetic", size=20, seed=1)
    b = reasoning_gym_problems("basic_arithmetic", size=20, seed=1)
    c = reasoning_gym_problems("basic_arithmetic", size=20, seed=2)
    assert [p.prompt for p in a] == [p.prompt for p in b]
    assert [p.prompt for p in a] != [p.prompt for p in c]
    assert a[3].id == "reasoning_gym/basic_arithmetic/1/3"
    assert a[0].prompt == f"{a[0].meta['question'].strip()}\n\n{ANSWER_INSTRUCTION}"
    assert json.loads(a[0].reference)["entry"]["question"] == a[0].meta["question"]


@needs_rg
@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("basic_arithmetic", {"min_terms": 2, "max_terms": 3}),
        ("letter_counting", {}),
        ("arc_agi", {}),  # grids are tuples: only the regenerated entry scores the oracle answer 1.0
        ("list_functions", {}),  # regenerates differently out of order: the stored entry is used
        ("chain_sum", {}),
    ],
)
def test_oracle_answers_grade_one_and_wrong_answers_zero(name, config):
    problems = reasoning_gym_problems(name, size=8, seed=3, config=config)
    for p in reversed(problems):  # out of order on purpose
        assert reasoning_gym_reward(_right(p), p.reference) == 1.0, p.id
        assert reasoning_gym_reward("<answer>certainly not this</answer>", p.reference) == 0.0, p.id
        assert reasoning_gym_reward("no answer given", p.reference) == 0.0, p.id


@needs_rg
def test_partial_credit_is_zero():
    import reasoning_gym

    (p,) = reasoning_gym_problems("letter_counting", size=1, seed=0)
    entry = json.loads(p.reference)["entry"]
    padded = f"{entry['answer']} letters"
    raw = reasoning_gym.create_dataset("letter_counting", seed=0, size=1).score_answer(padded, entry)
    assert 0.0 < raw < 1.0
    assert reasoning_gym_reward(f"<answer>{padded}</answer>", p.reference) == 0.0


@needs_rg
def test_scorer_exception_is_a_wrong_answer():
    (p,) = reasoning_gym_problems("prime_factorization", size=1, seed=0)
    assert reasoning_gym_reward("<answer>not a number</answer>", p.reference) == 0.0
    assert reasoning_gym_reward(_right(p), p.reference) == 1.0


@needs_rg
def test_errors():
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset 'nope'"):
        reasoning_gym_problems("nope")
    with pytest.raises(ValueError, match="size must be"):
        reasoning_gym_problems("basic_arithmetic", size=0)
    with pytest.raises(ValueError, match="config must be JSON data"):
        reasoning_gym_problems("basic_arithmetic", size=1, config={"min_terms": object()})
    with pytest.raises(ValueError, match="not a reasoning-gym reference"):
        reasoning_gym_reward("<answer>1</answer>", "42")


@needs_rg
def test_through_the_pool():
    problems = reasoning_gym_problems("basic_arithmetic", size=30, seed=5)
    completions = [_right(p) if i % 2 == 0 else "<answer>x</answer>" for i, p in enumerate(problems)]
    with RewardPool("reasoning_gym", RewardPoolConfig(num_workers=2, preload=())) as pool:
        batch = pool.score_batch(
            [*completions, "<answer>1</answer>"], [*(p.reference for p in problems), "bad"]
        )
    assert batch.rewards == [1.0, 0.0] * 15 + [0.0]
    assert batch.status == ["ok"] * 30 + ["error"]
