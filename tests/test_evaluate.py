"""evaluate(): pass@1 / pass@k against hand-computed values, with a scripted engine."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest

from asympo.data.problem import Problem
from asympo.engines.base import Completion, SamplingParams
from asympo.evaluate import default_ks, evaluate, pass_at_k
from asympo.rewards.arithmetic import arithmetic_reward


class ScriptedEngine:
    """Answers prompt p with the texts script[p] (n of them), recording the calls it gets."""

    supports_logprobs = False
    policy_version = 0

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.calls: list[tuple[list[str], SamplingParams, int]] = []

    def generate(self, prompts: Sequence[str], sampling: SamplingParams, n: int = 1) -> list[Completion]:
        self.calls.append((list(prompts), sampling, n))
        return [
            Completion([], [], text, "length" if text == "..." else "stop", 0)
            for p in prompts
            for text in self.script[p][:n]
        ]

    def load_weights(self, state, version):  # pragma: no cover - not used
        raise NotImplementedError


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    ("n", "c", "k"), [(n, c, k) for n in (1, 2, 5, 8) for c in range(n + 1) for k in range(1, n + 1)]
)
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_large_and_invalid():
    assert pass_at_k(200, 1, 1) == pytest.approx(1 / 200)
    assert pass_at_k(1000, 10, 100) == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100), rel=1e-9)
    for bad in [(4, 5, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(6) == [1, 2, 4, 6]


def test_evaluate_counts_and_batches():
    problems = [Problem(f"p{i}", f"{i}+0=", str(i)) for i in range(5)]
    # correct counts per problem: 4, 0, 2, 1, 3 out of n=4
    script = {
        "0+0=": ["0", "0", "0", "0"],
        "1+0=": ["2", "x", "...", ""],
        "2+0=": ["2", "3", "2\nmore", "-2"],
        "3+0=": ["...", "3", "4", "5"],
        "4+0=": ["4", "04", " 4 ", "44"],
    }
    engine = ScriptedEngine(script)
    sampling = SamplingParams(temperature=0.5, max_new_tokens=3)
    result = evaluate(engine, problems, arithmetic_reward, n=4, sampling=sampling, batch_size=2)
    correct = [4, 0, 2, 1, 3]
    assert result["pass@1"] == pytest.approx(sum(correct) / 20)
    assert result["reward/mean"] == pytest.approx(sum(correct) / 20)
    assert result["pass@2"] == pytest.approx(sum(brute_pass_at_k(4, c, 2) for c in correct) / 5)
    assert result["pass@4"] == pytest.approx(4 / 5)
    assert result["n_problems"] == 5 and result["n"] == 4
    assert result["finish/length"] == pytest.approx(2 / 20)
    assert [len(prompts) for prompts, _, _ in engine.calls] == [2, 2, 1]
    assert all(s is sampling and n == 4 for _, s, n in engine.calls)


def test_pass1_is_unbiased_for_random_correctness():
    """With samples correct with probability q, pass@1 estimates q and pass@k estimates 1-(1-q)^k."""
    rng = random.Random(0)
    q, n = 0.3, 8
    problems = [Problem(f"p{i}", f"q{i}", "1") for i in range(400)]
    script = {p.prompt: [("1" if rng.random() < q else "0") for _ in range(n)] for p in problems}
    result = evaluate(ScriptedEngine(script), problems, arithmetic_reward, n=n, batch_size=100)
    assert result["pass@1"] == pytest.approx(q, abs=0.03)
    assert result["pass@4"] == pytest.approx(1 - (1 - q) ** 4, abs=0.03)


def test_evaluate_validation():
    problems = [Problem("p", "1+1=", "2")]
    engine = ScriptedEngine({"1+1=": ["2"]})
    with pytest.raises(ValueError, match="at least one problem"):
        evaluate(engine, [], arithmetic_reward)
    with pytest.raises(ValueError, match="n must be"):
        evaluate(engine, problems, arithmetic_reward, n=0)
    with pytest.raises(ValueError, match="every k"):
        evaluate(engine, problems, arithmetic_reward, n=1, ks=[2])
    assert evaluate(engine, problems, arithmetic_reward)["pass@1"] == 1.0
    # default sampling: temperature 1.0
    assert engine.calls[-1][1].temperature == 1.0
