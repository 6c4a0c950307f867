"""The learner step: alignment of masks and log-probs, micro-batching, the pos/neg gradient split, learning."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from asympo.learner import Learner, LearnerConfig, collate
from asympo.runtime.records import Batch, RolloutGroup, Sample
from tests.models import tiny_qwen2


def tiny_model(seed=0):
    return tiny_qwen2(20, seed=seed)


GOOD, BAD = [5, 6, 7, 1], [8, 9, 1]


def make_batch(version=0, behavior_model=None, n_groups=2, G=4, stale=0):
    groups = []
    for g in range(n_groups):
        prompt = [2, 3 + g]
        samples = []
        for i in range(G):
            resp = GOOD if i % 2 == 0 else BAD
            blp = None
            if behavior_model is not None:
                ids = torch.tensor([prompt + resp])
                with torch.no_grad():
                    lp = torch.log_softmax(behavior_model(input_ids=ids).logits[0, :-1], -1)
                blp = [lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(resp)]
            samples.append(
                Sample(prompt, list(resp), "", 1.0 if i % 2 == 0 else 0.0, "stop", version - stale, blp)
            )
        groups.append(RolloutGroup(g, f"p{g}", "", version, version - stale, samples))
    return Batch(groups, version)


def seq_logp(model, prompt, resp):
    ids = torch.tensor([prompt + resp])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
    return sum(lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(resp))


def test_collate_aligns_response_tokens():
    samples = [
        Sample([1, 2, 3], [4, 5], "", 0, "stop", 0, [-0.1, -0.2]),
        Sample([1], [6, 7, 8], "", 0, "stop", 0, [-1, -2, -3]),
    ]
    ids, attn, mask, blp = collate(samples, pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 5], [1, 6, 7, 8, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # column t scores token t+1
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    torch.testing.assert_close(blp, torch.tensor([[0, 0, -0.1, -0.2], [-1, -2, -3, 0]]))
    with pytest.raises(ValueError, match="no prompt tokens"):
        collate([Sample([], [1], "", 0, "stop", 0)], pad_id=0)


@pytest.mark.parametrize("objective", ["asympo", "naive", "spo", "grpo", "cispo"])
def test_steps_raise_the_rewarded_response(objective):
    model = tiny_model()
    learner = Learner(model, LearnerConfig(objective=objective, lr=3e-3), pad_id=0)
    before = seq_logp(model, [2, 3], GOOD) - seq_logp(model, [2, 3], BAD)
    for v in range(8):
        behavior = copy.deepcopy(model) if learner.cfg.needs_behavior_logp else None
        m = learner.step(make_batch(v, behavior))
        assert m["reward/mean"] == 0.5 and m["staleness/max"] == 0 and m["guard/skipped"] == 0
    after = seq_logp(model, [2, 3], GOOD) - seq_logp(model, [2, 3], BAD)
    assert after > before + 1.0, (objective, before, after)
    assert learner.version == 8


def test_metrics_schema_and_staleness():
    learner = Learner(tiny_model(), LearnerConfig(), pad_id=0)
    m = learner.step(make_batch(version=0, stale=0))
    m = learner.step(make_batch(version=1, stale=1))
    for key in (
        "reward/mean",
        "reward/std",
        "staleness/mean",
        "staleness/max",
        "nll/pos",
        "nll/neg",
        "nll/ratio",
        "loss/pos",
        "loss/neg",
        "loss/total",
        "grad/norm",
        "grad/norm_pos",
        "grad/norm_neg",
        "policy/entropy",
        "batch/zero_adv_groups",
        "time/train",
    ):
        assert key in m and m[key] is not None, key
    assert m["staleness/mean"] == 1 and m["staleness/hist"] == [0, 8]
    assert m["loss/total"] == pytest.approx(0.0, abs=1e-6)  # asympo's value is mean(A) = 0
    assert m["nll/ratio"] == pytest.approx(m["nll/neg"] / m["nll/pos"])


def _grads_after_step(cfg, batch):
    model = tiny_model()
    learner = Learner(model, cfg, pad_id=0)
    learner.opt.step = lambda *a, **k: None  # keep the weights; inspect the gradients
    m = learner.step(batch)
    return [p.grad.clone() for p in learner.params], m


def test_split_and_micro_batches_give_the_same_gradient():
    batch = make_batch()
    base = dict(objective="asympo", max_grad_norm=0.0)
    g_plain, _ = _grads_after_step(LearnerConfig(**base, grad_split_every=0), batch)
    g_split, m = _grads_after_step(LearnerConfig(**base, grad_split_every=1), batch)
    g_micro, _ = _grads_after_step(LearnerConfig(**base, grad_split_every=0, micro_batch_size=3), batch)
    # both at once (the split path must add each micro-batch's gradient once, not the running sums)
    g_both, m_both = _grads_after_step(LearnerConfig(**base, grad_split_every=1, micro_batch_size=3), batch)
    for a, b, c, d in zip(g_plain, g_split, g_micro, g_both):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-7)
    assert m_both["grad/norm_pos"] == pytest.approx(m["grad/norm_pos"], rel=1e-5)
    for key in (
        "nll/pos",
        "nll/neg",
        "nll/ratio",
        "loss/pos",
        "loss/neg",
    ):  # micro-batch means weighted right
        assert m_both[key] == pytest.approx(m[key], rel=1e-5), key
    total = math.sqrt(sum(float((g**2).sum()) for g in g_plain))
    assert m["grad/norm"] == pytest.approx(total, rel=1e-5)
    assert m["grad/norm_pos"] > 0 and m["grad/norm_neg"] > 0


def test_batch_mean_rescale_does_not_depend_on_micro_batching():
    """asympo rescale=batch_mean multiplies by the mean NLL of the whole batch, also when split in 3s; with
    mismatched micro-batch means the gradients would differ."""
    batch = make_batch()
    base = dict(objective="asympo", hparams={"rescale": "batch_mean"}, max_grad_norm=0.0)
    g_plain, _ = _grads_after_step(LearnerConfig(**base, grad_split_every=0), batch)
    g_micro, _ = _grads_after_step(LearnerConfig(**base, grad_split_every=1, micro_batch_size=3), batch)
    for a, c in zip(g_plain, g_micro):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)
    # and it is not plain asympo: the batch-mean factor is a real scale
    g_none, _ = _grads_after_step(LearnerConfig(objective="asympo", max_grad_norm=0.0), batch)
    assert not torch.allclose(g_none[0], g_plain[0])


def test_nan_guard_skips_the_update():
    model = tiny_model()
    learner = Learner(model, LearnerConfig(objective="naive"), pad_id=0)
    before = [p.detach().clone() for p in model.parameters()]
    batch = make_batch()
    batch.groups[0].samples[0].reward = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        learner.step(batch)  # bad rewards are refused outright
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    m = learner.step(make_batch())
    assert m["guard/skipped"] == 1.0
    for p, b in zip(list(model.parameters())[:-1], before[:-1]):
        assert torch.equal(p, b) or torch.isnan(p).any()


def test_behavior_corrected_objective_needs_behavior_logp():
    learner = Learner(tiny_model(), LearnerConfig(objective="grpo"), pad_id=0)
    with pytest.raises(ValueError, match="needs behavior log-probs"):
        learner.step(make_batch())
