"""Objectives against slow loop-based references (float64, tight tolerances) and the invariants of
docs/design.md#objectives."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asympo.advantages import group_advantages
from asympo.objectives import (
    OBJECTIVES,
    LossContext,
    aggregate,
    compute_loss,
    context_totals,
    get_objective,
    needs_behavior_logp,
    policy_loss,
)

TOL = dict(rtol=1e-9, atol=1e-9)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_batch(B=6, T=7, seed=0, *, min_len=1, behavior_shift=0.3):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3 - 0.05  # strictly negative, mean NLL >= 0.05
    lengths = torch.randint(min_len, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    adv = torch.randn(B, generator=g)
    adv = adv - adv.mean()  # zero-sum, like a full group
    behavior = logp + behavior_shift * torch.randn(B, T, generator=g)
    return logp, mask, adv, behavior


# ------------------------------------------------------------------ loop references (per response)


def ref_nll(logp, mask, i):
    n = max(1.0, float(sum(mask[i])))
    return -sum(float(logp[i, t]) * float(mask[i, t]) for t in range(logp.shape[1])) / n


def ref_seq_mean(term_fn, B):
    return sum(term_fn(i) for i in range(B)) / B


def ref_loss(name, logp, mask, adv, behavior, **hp):
    B, T = logp.shape

    def n(i):
        return max(1.0, float(sum(mask[i])))

    def tok_mean(i, f):
        return sum(f(i, t) * float(mask[i, t]) for t in range(T)) / n(i)

    if name == "naive":
        return ref_seq_mean(lambda i: float(adv[i]) * ref_nll(logp, mask, i), B)
    if name == "spo":
        s = hp.get("neg_scale", 0.5)
        return ref_seq_mean(lambda i: (1.0 if adv[i] >= 0 else s) * float(adv[i]) * ref_nll(logp, mask, i), B)
    if name == "asympo":
        eps = hp.get("eps", 1e-6)
        return ref_seq_mean(
            lambda i: float(adv[i]) * ref_nll(logp, mask, i) / max(ref_nll(logp, mask, i), eps), B
        )
    if name == "grpo":
        lo, hi = hp.get("eps_low", 0.2), hp.get("eps_high", 0.28)

        def f(i, t):
            r = math.exp(float(logp[i, t] - behavior[i, t]))
            a = float(adv[i])
            return -min(r * a, min(max(r, 1 - lo), 1 + hi) * a)

        return ref_seq_mean(lambda i: tok_mean(i, f), B)
    if name == "gspo":
        lo, hi = hp.get("eps_low", 3e-4), hp.get("eps_high", 4e-4)

        def term(i):
            s = math.exp(tok_mean(i, lambda i, t: float(logp[i, t] - behavior[i, t])))
            a = float(adv[i])
            per_tok = -min(s * a, min(max(s, 1 - lo), 1 + hi) * a)
            return per_tok if sum(mask[i]) > 0 else 0.0

        return ref_seq_mean(term, B)
    if name == "cispo":
        hi = hp.get("eps_high", 0.28)

        def f(i, t):
            r = math.exp(float(logp[i, t] - behavior[i, t]))
            return -min(r, 1 + hi) * float(adv[i]) * float(logp[i, t])

        return ref_seq_mean(lambda i: tok_mean(i, f), B)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["naive", "spo", "asympo", "grpo", "gspo", "cispo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_matches_loop_reference(name, seed):
    logp, mask, adv, behavior = make_batch(seed=seed)
    loss, _ = policy_loss(name, logp, mask, adv, behavior_logp=behavior)
    assert loss.item() == pytest.approx(ref_loss(name, logp, mask, adv, behavior), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(
    "name,hp",
    [("spo", {"neg_scale": 0.2}), ("asympo", {"eps": 0.5}), ("grpo", {"eps_low": 0.1, "eps_high": 0.1})],
)
def test_forward_with_hparams(name, hp):
    logp, mask, adv, behavior = make_batch(seed=5, behavior_shift=0.5)
    loss, _ = policy_loss(name, logp, mask, adv, behavior_logp=behavior, **hp)
    assert loss.item() == pytest.approx(ref_loss(name, logp, mask, adv, behavior, **hp), rel=1e-10)


def grad_of(name, logp, mask, adv, behavior=None, **hp):
    x = logp.clone().requires_grad_(True)
    loss, _ = policy_loss(name, x, mask, adv, behavior_logp=behavior, **hp)
    loss.backward()
    return x.grad


def test_identical_gradients_on_policy():
    """At logp == behavior_logp, grpo, cispo and naive have identical gradients (design.md#objectives)."""
    logp, mask, adv, _ = make_batch(seed=3)
    g_naive = grad_of("naive", logp, mask, adv)
    for name in ("grpo", "cispo"):
        torch.testing.assert_close(grad_of(name, logp, mask, adv, logp.clone()), g_naive, **TOL)


def test_gspo_on_policy_gradient_equals_naive():
    logp, mask, adv, _ = make_batch(seed=4)
    torch.testing.assert_close(
        grad_of("gspo", logp, mask, adv, logp.clone()), grad_of("naive", logp, mask, adv), **TOL
    )


def test_spo_neg_scale_one_is_naive():
    logp, mask, adv, _ = make_batch(seed=6)
    l1, _ = policy_loss("spo", logp, mask, adv, neg_scale=1.0)
    l2, _ = policy_loss("naive", logp, mask, adv)
    assert l1.item() == pytest.approx(l2.item(), rel=1e-12)
    torch.testing.assert_close(
        grad_of("spo", logp, mask, adv, neg_scale=1.0), grad_of("naive", logp, mask, adv), **TOL
    )


def test_spo_scales_only_negative_terms():
    logp, mask, adv, _ = make_batch(seed=7)
    g_naive = grad_of("naive", logp, mask, adv)
    g_spo = grad_of("spo", logp, mask, adv, neg_scale=0.25)
    scale = torch.where(adv >= 0, 1.0, 0.25)[:, None]
    torch.testing.assert_close(g_spo, g_naive * scale, **TOL)


def test_asympo_forward_is_mean_advantage():
    logp, mask, adv, _ = make_batch(seed=8)
    adv = adv + 0.3  # not zero-sum: the value is still mean(A)
    loss, _ = policy_loss("asympo", logp, mask, adv)
    assert loss.item() == pytest.approx(adv.mean().item(), rel=1e-12)


def test_asympo_exact_gradient():
    """d loss / d logp[i,t] = -A_i · mask[i,t] / (n_i · max(l_i, eps) · B)."""
    logp, mask, adv, _ = make_batch(B=5, T=9, seed=9)
    B = logp.shape[0]
    n = mask.sum(-1).clamp(min=1)
    nll = -(logp * mask).sum(-1) / n
    expected = -adv[:, None] * mask / (n[:, None] * nll.clamp(min=1e-6)[:, None] * B)
    torch.testing.assert_close(grad_of("asympo", logp, mask, adv), expected, **TOL)


def test_asympo_eps_floor_in_gradient():
    logp, mask, adv, _ = make_batch(B=4, T=5, seed=10)
    logp = logp * 1e-3  # tiny NLL, below eps=0.01
    n = mask.sum(-1)
    expected = -adv[:, None] * mask / (n[:, None] * 0.01 * 4)
    torch.testing.assert_close(grad_of("asympo", logp, mask, adv, eps=0.01), expected, **TOL)


def test_asympo_batch_mean_rescale():
    logp, mask, adv, _ = make_batch(seed=11)
    n = mask.sum(-1)
    nll = -(logp * mask).sum(-1) / n
    loss, _ = policy_loss("asympo", logp, mask, adv, rescale="batch_mean")
    assert loss.item() == pytest.approx((adv.mean() * nll.mean()).item(), rel=1e-12)
    g = grad_of("asympo", logp, mask, adv, rescale="batch_mean")
    torch.testing.assert_close(g, grad_of("asympo", logp, mask, adv) * nll.mean(), **TOL)


def test_asympo_balances_stale_scale_imbalance():
    """The failure mode: positives have low NLL, negatives high NLL. Naive's loss is dominated by the
    negatives; ASymPO's positive and negative contributions cancel exactly."""
    B, T = 8, 6
    adv = torch.tensor([1.0] * 4 + [-1.0] * 4)
    logp = torch.cat([torch.full((4, T), -0.1), torch.full((4, T), -2.0)])
    mask = torch.ones(B, T)
    _, m_naive = policy_loss("naive", logp, mask, adv)
    _, m_asym = policy_loss("asympo", logp, mask, adv)
    assert m_naive["nll/ratio"] == pytest.approx(20.0)
    assert abs(m_naive["loss/neg"]) > 10 * abs(m_naive["loss/pos"])
    assert m_asym["loss/pos"] == pytest.approx(-m_asym["loss/neg"], rel=1e-12)
    assert m_asym["loss/pos"] == pytest.approx(0.5)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=10),
    seed=st.integers(0, 2**31 - 1),
    offset=st.floats(-2, 2),
)
def test_asympo_forward_value_property(lengths, seed, offset):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).double()
    logp = -torch.rand(B, T, generator=g) * 5 - 1e-3
    adv = torch.randn(B, generator=g) + offset
    loss, _ = policy_loss("asympo", logp, mask, adv)
    assert loss.item() == pytest.approx(adv.mean().item(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_aggregate_modes_against_loops(agg):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0], [0] * 6], dtype=torch.float64)
    rows = [[float(x[i, t]) for t in range(6) if mask[i, t]] for i in range(4)]
    if agg == "token-mean":
        expected = sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    elif agg == "seq-mean-token-sum":
        expected = sum(sum(r) for r in rows) / 4
    else:
        expected = sum(sum(r) / max(1, len(r)) for r in rows) / 4
    assert aggregate(x, mask, agg).item() == pytest.approx(expected, rel=1e-12)


def test_token_mean_breaks_asympo_balance():
    """Documented: length-weighted aggregation no longer gives mean(A) for unequal lengths."""
    logp, mask, adv, _ = make_batch(seed=13)
    loss, _ = policy_loss("asympo", logp, mask, adv, agg="token-mean")
    n = mask.sum(-1)
    assert loss.item() == pytest.approx(((adv * n).sum() / n.sum()).item(), rel=1e-10)
    assert abs(loss.item() - adv.mean().item()) > 1e-3


def test_loss_pos_plus_neg_is_policy_loss():
    logp, mask, adv, behavior = make_batch(seed=14)
    for name in OBJECTIVES:
        _, m = policy_loss(name, logp, mask, adv, behavior_logp=behavior)
        assert m["loss/pos"] + m["loss/neg"] == pytest.approx(m["loss/policy"], rel=1e-9, abs=1e-12)


def test_metrics_nll_split():
    logp, mask, adv, _ = make_batch(seed=15)
    _, m = policy_loss("naive", logp, mask, adv)
    nll = -(logp * mask).sum(-1) / mask.sum(-1)
    assert m["nll/pos"] == pytest.approx(nll[adv > 0].mean().item())
    assert m["nll/neg"] == pytest.approx(nll[adv < 0].mean().item())
    assert m["nll/ratio"] == pytest.approx(m["nll/neg"] / m["nll/pos"])


def test_metrics_without_negatives_are_nan_not_error():
    logp, mask, _, _ = make_batch(seed=16)
    _, m = policy_loss("asympo", logp, mask, torch.zeros(logp.shape[0]))
    assert math.isnan(m["nll/pos"]) and math.isnan(m["nll/ratio"])
    assert m["loss/total"] == 0.0


def test_clip_fractions():
    logp, mask, adv, _ = make_batch(seed=17)
    behavior = logp - 1.0  # r = e > 1 + eps_high everywhere
    _, m = policy_loss("grpo", logp, mask, adv, behavior_logp=behavior)
    pos_tokens = (mask * (adv > 0)[:, None]).sum() / mask.sum()
    assert m["clip/frac"] == pytest.approx(pos_tokens.item())
    assert m["clip/frac_high"] == pytest.approx(pos_tokens.item())
    _, m = policy_loss("cispo", logp, mask, adv, behavior_logp=behavior)
    assert m["clip/frac"] == pytest.approx(1.0)
    _, m = policy_loss("gspo", logp, mask, adv, behavior_logp=behavior)
    assert m["clip/frac"] == pytest.approx((adv > 0).double().mean().item())


def test_grpo_clipped_tokens_have_no_gradient():
    logp, mask, adv, _ = make_batch(seed=18)
    behavior = logp - 1.0
    g = grad_of("grpo", logp, mask, adv, behavior)
    assert torch.all(g[adv > 0] == 0)  # clipped above: no gradient
    assert torch.all(g[adv < 0][mask[adv < 0] > 0] != 0)


def test_kl_and_entropy_terms():
    logp, mask, adv, _ = make_batch(seed=19)
    ref = logp + 0.2
    ent = torch.rand_like(logp)
    base, _ = policy_loss("naive", logp, mask, adv)
    loss, m = policy_loss("naive", logp, mask, adv, ref_logp=ref, kl_coef=0.1, entropy=ent, entropy_coef=0.01)
    d = ref - logp
    kl = aggregate(torch.exp(d) - d - 1, mask)
    assert m["kl/ref"] == pytest.approx(kl.item())
    assert m["kl/ref"] > 0
    assert loss.item() == pytest.approx(base.item() + 0.1 * kl.item() - 0.01 * aggregate(ent, mask).item())


# ------------------------------------------------------------------ errors


def test_unknown_objective_names_valid_ones():
    logp, mask, adv, _ = make_batch()
    with pytest.raises(ValueError, match=r"unknown objective 'nope'.*asympo.*cispo"):
        policy_loss("nope", logp, mask, adv)


def test_unknown_hparam():
    logp, mask, adv, _ = make_batch()
    with pytest.raises(ValueError, match=r"unknown hparam\(s\) neg_scale; valid: eps, rescale"):
        policy_loss("asympo", logp, mask, adv, neg_scale=0.3)
    with pytest.raises(ValueError, match="valid: none"):
        policy_loss("naive", logp, mask, adv, eps=0.1)


def test_bad_hparam_values():
    logp, mask, adv, _ = make_batch()
    with pytest.raises(ValueError, match="rescale"):
        policy_loss("asympo", logp, mask, adv, rescale="batch")
    with pytest.raises(ValueError, match="neg_scale"):
        policy_loss("spo", logp, mask, adv, neg_scale=-1.0)


@pytest.mark.parametrize("name", ["grpo", "gspo", "cispo"])
def test_behavior_corrected_needs_behavior_logp(name):
    logp, mask, adv, _ = make_batch()
    assert needs_behavior_logp(name)
    with pytest.raises(ValueError, match="needs behavior log-probs"):
        policy_loss(name, logp, mask, adv)


def test_shape_errors():
    logp, mask, adv, behavior = make_batch(B=4, T=5)
    with pytest.raises(ValueError, match=r"mask must have the shape of logp \[B, T\] = \[4, 5\]"):
        policy_loss("naive", logp, mask[:, :3], adv)
    with pytest.raises(ValueError, match=r"advantages must be a 1-D tensor \[B\] = \[4\]"):
        policy_loss("naive", logp, mask, adv[:, None].expand(4, 5))
    with pytest.raises(ValueError, match="behavior_logp must have the shape"):
        policy_loss("grpo", logp, mask, adv, behavior_logp=behavior[:3])
    with pytest.raises(ValueError, match="logp must be a 2-D tensor"):
        policy_loss("naive", logp[0], mask, adv)
    with pytest.raises(ValueError, match="unknown agg"):
        policy_loss("naive", logp, mask, adv, agg="sum")


def test_logits_or_probabilities_instead_of_log_probs_are_refused():
    logp, mask, adv, behavior = make_batch(B=4, T=5)
    with pytest.raises(ValueError, match=r"logp must hold log-probabilities \(<= 0\) where mask is set"):
        policy_loss("asympo", logp.exp(), mask, adv)  # probabilities
    with pytest.raises(ValueError, match=r"behavior_logp must hold log-probabilities .* not logits"):
        policy_loss("grpo", logp, mask, adv, behavior_logp=-behavior)
    padded = logp.masked_fill(mask == 0, 7.0)  # what padding holds does not matter
    assert torch.equal(policy_loss("asympo", padded, mask, adv)[0], policy_loss("asympo", logp, mask, adv)[0])
    rounded = logp.clone()
    rounded[0, 0] = 0.1  # a token of probability ~1 whose log-prob bf16 rounding pushed a little above 0
    assert torch.isfinite(policy_loss("asympo", rounded, mask, adv)[0])


def test_custom_objective_by_import_path():
    logp, mask, adv, _ = make_batch()
    loss, m = policy_loss("tests.custom_objective:half_naive", logp, mask, adv, factor=0.5)
    base, _ = policy_loss("naive", logp, mask, adv)
    assert loss.item() == pytest.approx(0.5 * base.item())
    assert m["custom/factor"] == 0.5
    assert get_objective("tests.custom_objective:half_naive").hparams == {"factor": 1.0}
    with pytest.raises(ValueError, match="has no function"):
        get_objective("tests.custom_objective:missing")


# ------------------------------------------------------------------ each objective moves a bandit policy


@pytest.mark.parametrize("name", ["naive", "spo", "asympo", "grpo", "gspo", "cispo"])
def test_objective_moves_probability_to_positive_responses(name):
    """A bandit over 4 fixed 3-token sequences: a few steps raise the probability of the rewarded one."""
    torch.manual_seed(0)
    V, T, G = 5, 3, 8
    seqs = torch.tensor([[0, 1, 2], [3, 3, 3], [4, 0, 1], [2, 2, 4]])
    reward_of = torch.tensor([1.0, 0.0, 0.0, 0.0])
    logits = torch.zeros(T, V, requires_grad=True)  # position-wise policy
    opt = torch.optim.SGD([logits], lr=0.5)

    def seq_logp(ids):  # [N, T] -> [N, T]
        return torch.log_softmax(logits, -1)[torch.arange(T), ids]

    def p_good():
        with torch.no_grad():
            return seq_logp(seqs[:1]).sum().exp().item()

    start = p_good()
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        idx = torch.randint(0, 4, (G,), generator=gen)
        ids = seqs[idx]
        adv = group_advantages(reward_of[idx], G)
        logp = seq_logp(ids)
        behavior = logp.detach() if needs_behavior_logp(name) else None
        loss, _ = policy_loss(name, logp, torch.ones(G, T), adv, behavior_logp=behavior)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert p_good() > start + 0.1, f"{name}: p(good) {start:.3f} -> {p_good():.3f}"


# ------------------------------------------------------------------ batch statistics and the loss context


def test_asympo_declares_the_batch_mean_instead_of_a_hyperparameter():
    assert set(OBJECTIVES["asympo"].hparams) == {"eps", "rescale"}  # what `asympo objectives` lists
    assert OBJECTIVES["asympo"].batch_stats({"rescale": "batch_mean"}) == ("mean_nll",)
    assert OBJECTIVES["asympo"].batch_stats({}) == ()
    assert OBJECTIVES["naive"].batch_stats({}) == ()


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize(
    ("name", "hp"), [("naive", {}), ("asympo", {"rescale": "batch_mean"}), ("grpo", {}), ("gspo", {})]
)
def test_parts_with_the_batch_context_add_up_to_the_whole_batch(name, hp, agg):
    """A host that splits a batch (micro-batches, ranks) and passes the whole batch's LossContext gets
    losses and gradients that sum to the whole batch's; without the context they would not."""
    logp, mask, adv, behavior = make_batch(B=8, seed=21)
    logp.requires_grad_(True)
    whole, _ = policy_loss(name, logp, mask, adv, behavior, agg=agg, **hp)
    (g_whole,) = torch.autograd.grad(whole, logp)
    stats = get_objective(name).batch_stats(hp)
    parts = [slice(0, 3), slice(3, 8)]
    ctx = LossContext.from_totals(sum(context_totals(mask[p], logp[p], stats) for p in parts), stats)
    assert ctx.num_responses == 8 and ctx.num_tokens == int(mask.sum())
    losses = [
        compute_loss(name, logp[p], mask[p], adv[p], behavior[p], agg=agg, ctx=ctx, **hp).loss for p in parts
    ]
    (g_parts,) = torch.autograd.grad(sum(losses), logp)
    assert sum(losses).item() == pytest.approx(whole.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(g_parts, g_whole, **TOL)


def test_user_objective_reads_declared_statistics_from_ctx():
    seen = []

    def scaled(logp, mask, adv, behavior_logp, *, ctx, k: float = 1.0):
        seen.append(ctx.mean_nll)
        return -(k * ctx.mean_nll * adv)[:, None] * logp, {}

    scaled.batch_stats = ("mean_nll",)
    import types

    mod = types.ModuleType("user_losses_for_test")
    mod.scaled = scaled
    import sys

    sys.modules["user_losses_for_test"] = mod
    try:
        assert set(get_objective("user_losses_for_test:scaled").hparams) == {"k"}
        logp, mask, adv, _ = make_batch(seed=22)
        policy_loss("user_losses_for_test:scaled", logp, mask, adv)  # no ctx: the responses given
        nll = -(logp * mask).sum(-1) / mask.sum(-1)
        assert seen[-1] == pytest.approx(nll.mean().item())
        policy_loss("user_losses_for_test:scaled", logp, mask, adv, ctx=LossContext(mean_nll=2.5))
        assert seen[-1] == 2.5  # the host's whole-batch value wins
    finally:
        del sys.modules["user_losses_for_test"]
