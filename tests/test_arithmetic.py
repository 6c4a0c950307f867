"""The procedural arithmetic task and its exact-answer reward."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from asympo.data.arithmetic import ArithmeticConfig, arithmetic_problems
from asympo.data.problem import Problem
from asympo.rewards.arithmetic import arithmetic_reward, extract_answer


def test_problems_are_correct_and_formatted():
    cfg = ArithmeticConfig(digits=3, ops=("+", "-", "*"), n_train=300, n_test=100, seed=1)
    for split in ("train", "test"):
        for p in arithmetic_problems(cfg, split):
            assert isinstance(p, Problem)
            a, op, b = p.meta["a"], p.meta["op"], p.meta["b"]
            assert 0 <= a < 1000 and 0 <= b < 1000
            assert p.prompt == f"{a}{op}{b}="
            assert int(p.reference) == eval(f"{a}{op}{b}")
            if op == "-":
                assert a >= b  # no negatives by default
    ops = {p.meta["op"] for p in arithmetic_problems(cfg, "train")}
    assert ops == {"+", "-", "*"}


def test_splits_disjoint_sized_and_deterministic():
    cfg = ArithmeticConfig(digits=2, ops=("+", "-"), n_train=1000, n_test=200, seed=3)
    train, test = arithmetic_problems(cfg, "train"), arithmetic_problems(cfg, "test")
    assert len(train) == 1000 and len(test) == 200
    assert len({p.id for p in train}) == 1000 and len({p.id for p in test}) == 200  # no duplicates
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert arithmetic_problems(cfg, "train") == train  # same config -> same problems, same order
    other = arithmetic_problems(
        ArithmeticConfig(digits=2, ops=("+", "-"), n_train=1000, n_test=200, seed=4), "test"
    )
    assert [p.id for p in other] != [p.id for p in test]


def test_whole_space_can_be_drawn():
    """Asking for every distinct problem yields each exactly once (the enumeration is a bijection)."""
    for ops, allow_negative in [(("-",), False), (("+", "-"), True), (("*", "-"), False)]:
        cfg = ArithmeticConfig(digits=1, ops=ops, allow_negative=allow_negative, n_train=0, n_test=0)
        full = ArithmeticConfig(
            digits=1, ops=ops, allow_negative=allow_negative, n_train=cfg.n_distinct - 5, n_test=5
        )
        problems = arithmetic_problems(full, "train") + arithmetic_problems(full, "test")
        triples = {(p.meta["a"], p.meta["op"], p.meta["b"]) for p in problems}
        expected = {
            (a, op, b)
            for op in ops
            for a in range(10)
            for b in range(10)
            if op != "-" or allow_negative or a >= b
        }
        assert triples == expected and len(problems) == len(expected)


def test_max_answer_chars():
    assert ArithmeticConfig(digits=2, ops=("+",)).max_answer_chars == 3  # 99+99=198
    assert ArithmeticConfig(digits=2, ops=("-",), allow_negative=True).max_answer_chars == 3  # -99
    assert ArithmeticConfig(digits=3, ops=("+", "*"), n_train=10).max_answer_chars == 6  # 999*999


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"digits": 0}, "digits"),
        ({"ops": ("/",)}, "ops"),
        ({"ops": ()}, "ops"),
        ({"n_test": -1}, "n_test"),
        ({"digits": 1, "n_train": 100, "n_test": 1}, "exceeds"),
        ({"prompt_format": "{a}+{b}="}, "prompt_format"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ArithmeticConfig(**kwargs)
    with pytest.raises(ValueError, match="split"):
        arithmetic_problems(ArithmeticConfig(), "validation")


@pytest.mark.parametrize(
    ("completion", "reference", "reward"),
    [
        ("46", "46", 1.0),
        (" 46 ", "46", 1.0),
        ("46\n12+3=15", "46", 1.0),  # only the first line counts
        ("46<eos>junk", "46", 1.0),
        ("046", "46", 1.0),
        ("-7", "-7", 1.0),
        ("47", "46", 0.0),
        ("4 6", "46", 0.0),
        ("46.0", "46", 0.0),
        ("+46", "46", 0.0),
        ("", "46", 0.0),
        ("\n46", "46", 0.0),
        ("٤٦", "46", 0.0),  # non-ASCII digits are not an answer
        ("x" * 100_000, "46", 0.0),
    ],
)
def test_reward(completion, reference, reward):
    assert arithmetic_reward(completion, reference) == reward


def test_reward_on_real_problems_and_picklable():
    problems = arithmetic_problems(ArithmeticConfig(n_train=50, n_test=10), "test")
    assert all(arithmetic_reward(p.reference, p.reference) == 1.0 for p in problems)
    assert all(arithmetic_reward(str(int(p.reference) + 1), p.reference) == 0.0 for p in problems)
    assert pickle.loads(pickle.dumps(arithmetic_reward)) is arithmetic_reward
    with ProcessPoolExecutor(max_workers=1) as pool:
        assert list(pool.map(arithmetic_reward, ["12", "13"], ["12", "12"])) == [1.0, 0.0]
    assert extract_answer(" 12 \nrest") == "12"
