"""Advantage estimators: loop references, zero-sum and constant-group properties
(docs/design.md#advantages)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asympo.advantages import constant_groups, group_advantages


def ref_advantages(rewards, G, estimator):
    out = []
    for k in range(0, len(rewards), G):
        grp = [float(x) for x in rewards[k : k + G]]
        mean = sum(grp) / G
        if all(x == grp[0] for x in grp):
            out += [0.0] * G
        elif estimator == "grpo":
            std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))
            out += [(x - mean) / (std + 1e-6) for x in grp]
        elif estimator == "dr_grpo":
            out += [x - mean for x in grp]
        elif estimator == "rloo":
            out += [x - (sum(grp) - x) / (G - 1) for x in grp]
    return out


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_against_loop_reference(estimator):
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (24,), generator=g).double() + 0.1 * torch.rand(
        24, generator=g, dtype=torch.float64
    )
    r[8:12] = 1.0  # a constant group
    adv = group_advantages(r, 4, estimator)
    torch.testing.assert_close(
        adv, torch.tensor(ref_advantages(r, 4, estimator), dtype=torch.float64), rtol=1e-12, atol=1e-12
    )


rewards_strategy = st.integers(1, 6).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.integers(2, 8).flatmap(
            lambda G: st.tuples(
                st.just(G),
                st.lists(st.sampled_from([0.0, 0.5, 1.0, -1.0, 0.1, 3.7]), min_size=n * G, max_size=n * G),
            )
        ),
    )
)


@settings(max_examples=150, deadline=None)
@given(rewards_strategy, st.sampled_from(["grpo", "dr_grpo", "rloo"]))
def test_zero_sum_and_no_nan(data, estimator):
    n, (G, rewards) = data
    r = torch.tensor(rewards, dtype=torch.float64)
    adv = group_advantages(r, G, estimator)
    assert torch.isfinite(adv).all()
    sums = adv.view(n, G).sum(-1)
    assert torch.allclose(sums, torch.zeros(n, dtype=torch.float64), atol=1e-9)
    const = constant_groups(r, G)
    assert torch.all(adv.view(n, G)[const] == 0.0)  # exact zeros, never NaN or tiny noise


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.floats(-100, 100, allow_nan=False))
def test_all_equal_groups_give_exact_zeros(n, G, value):
    r = torch.full((n * G,), value, dtype=torch.float64)
    for estimator in ("grpo", "dr_grpo") + (("rloo",) if G > 1 else ()):
        assert torch.equal(group_advantages(r, G, estimator), torch.zeros_like(r))
    assert constant_groups(r, G).all()


def test_float32_constant_group_is_exactly_zero():
    r = torch.full((6,), 0.1, dtype=torch.float32)  # mean is not exactly 0.1 in float32
    assert torch.equal(group_advantages(r, 3), torch.zeros(6))


def test_lists_are_accepted():
    assert group_advantages([1, 0, 0, 1], 2, "dr_grpo").tolist() == [0.5, -0.5, -0.5, 0.5]


def test_errors():
    with pytest.raises(ValueError, match="not divisible by group_size 4"):
        group_advantages(torch.ones(10), 4)
    with pytest.raises(ValueError, match=r"unknown estimator 'ppo'.*dr_grpo, grpo, rloo"):
        group_advantages(torch.ones(8), 4, "ppo")
    with pytest.raises(ValueError, match=r"rloo.*group_size >= 2"):
        group_advantages(torch.tensor([1.0, 0.0]), 1, "rloo")
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="positive int"):
        group_advantages(torch.ones(4), 0)
