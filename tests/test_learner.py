"""The learner step: alignment of masks and log-probs, micro-batching (by count and token budget), the pos/neg
gradient split, the sharding seam, precision, the NaN guard, diagnostics, learning."""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch

from asympo.learner import Learner, LearnerConfig, NonFiniteStepsError, collate, plan_micro_batches
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


def test_nan_guard_skips_the_update_and_stops_after_k_in_a_row():
    model = tiny_model()
    learner = Learner(model, LearnerConfig(objective="naive", max_skipped_steps=2), pad_id=0)
    batch = make_batch()
    batch.groups[0].samples[0].reward = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        learner.step(batch)  # bad rewards are refused outright
    assert learner.step(make_batch())["guard/skipped"] == 0.0
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")  # injected: every loss from now on is NaN
    m = learner.step(make_batch(version=1))
    assert m["guard/skipped"] == 1.0 and learner.version == 2
    for p, b in zip(list(model.parameters())[:-1], before[:-1]):
        assert torch.equal(p, b)  # nothing reached the weights
    with pytest.raises(NonFiniteStepsError, match=r"learner step 2: 2 steps in a row .*max_skipped_steps=2"):
        learner.step(make_batch(version=2))


def test_behavior_corrected_objective_needs_behavior_logp():
    learner = Learner(tiny_model(), LearnerConfig(objective="grpo"), pad_id=0)
    with pytest.raises(ValueError, match="needs behavior log-probs"):
        learner.step(make_batch())


# ------------------------------------------------------------------ micro-batches by token budget, the seam


def varied_batch(G=4):
    """Two groups whose responses have 1 to 6 tokens, so micro-batches by token budget differ from by count."""
    groups = []
    for g in range(2):
        prompt = [2, 3 + g] + [4] * g
        samples = [
            Sample(prompt, [5 + (i % 3)] * (1 + (i * 5 + g) % 6), "", float((i + g) % 2), "stop", 0)
            for i in range(G)
        ]
        groups.append(RolloutGroup(g, f"p{g}", "", 0, 0, samples))
    return Batch(groups, 0)


def test_plan_micro_batches_by_token_budget():
    lengths = [3, 9, 4, 9, 2, 5]
    plan = plan_micro_batches(lengths, max_tokens=18)
    assert sorted(i for mb in plan for i in mb) == list(range(6))  # every response exactly once
    for mb in plan:
        assert len(mb) * max(lengths[i] for i in mb) <= 18
        assert [lengths[i] for i in mb] == sorted((lengths[i] for i in mb), reverse=True)
    assert plan[0] == [1, 3]  # the two longest share one: little padding
    assert plan_micro_batches([30, 1], max_tokens=10) == [[0], [1]]  # too long alone: its own micro-batch
    assert plan_micro_batches(lengths, max_responses=4) == [[0, 1, 2, 3], [4, 5]]
    assert all(len(mb) <= 1 for mb in plan_micro_batches(lengths, max_responses=1, max_tokens=100))


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
@pytest.mark.parametrize("hparams", [{}, {"rescale": "batch_mean"}])
def test_token_budget_gives_the_whole_batch_gradient(agg, hparams):
    batch = varied_batch()
    base = dict(objective="asympo", hparams=hparams, agg=agg, max_grad_norm=0.0)
    g_plain, m_plain = _grads_after_step(LearnerConfig(**base, grad_split_every=0), batch)
    g_tok, m_tok = _grads_after_step(LearnerConfig(**base, max_tokens_per_micro_batch=12), batch)
    for a, b in zip(g_plain, g_tok):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    for key in ("loss/pos", "loss/neg", "loss/total", "nll/pos", "nll/neg", "len/pos", "nll/len_corr"):
        assert m_tok[key] == pytest.approx(m_plain[key], rel=1e-5, abs=1e-7), key


def test_gradient_checkpointing_gives_the_same_gradient():
    batch = varied_batch()
    base = dict(objective="asympo", max_grad_norm=0.0, grad_split_every=0)
    g_plain, _ = _grads_after_step(LearnerConfig(**base), batch)
    g_ckpt, _ = _grads_after_step(LearnerConfig(**base, gradient_checkpointing=True), batch)
    model = Learner(tiny_model(), LearnerConfig(gradient_checkpointing=True), pad_id=0).model
    on = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.2x; older: the old name
    assert on if on is not None else model.is_gradient_checkpointing
    for a, b in zip(g_plain, g_ckpt):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_shards_normalised_by_global_counts_sum_to_the_whole_batch_gradient():
    """The sharded-learner seam: two processes (threads here) each take half the responses and sum their
    context totals through reduce_sum; their gradients then add up to the one-process gradient."""
    batch = varied_batch()
    cfg = dict(objective="asympo", hparams={"rescale": "batch_mean"}, agg="token-mean", max_grad_norm=0.0)
    g_whole, _ = _grads_after_step(LearnerConfig(**cfg, grad_split_every=0), batch)
    barrier, slots = threading.Barrier(2), [None, None]

    def reduce_sum_for(rank):
        def reduce_sum(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()  # both have read the slots before either writes the next reduction
            return total

        return reduce_sum

    grads, models = [None, None], [tiny_model(), tiny_model()]  # built here: seeding is not thread-safe

    def run(rank):
        learner = Learner(
            models[rank], LearnerConfig(**cfg), pad_id=0, reduce_sum=reduce_sum_for(rank), shard=(rank, 2)
        )
        learner.opt.step = lambda *a, **k: None
        learner.step(batch)
        grads[rank] = [p.grad.clone() for p in learner.params]

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for whole, a, b in zip(g_whole, *grads):
        torch.testing.assert_close(a + b, whole, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ precision


def _one_step_update(precision: str, lr: float = 1e-6) -> tuple[float, float]:
    """(norm of the weight change, share of weights changed) of one step, from the weights as the learner
    holds them (after any cast to bf16)."""
    model = tiny_model()
    learner = Learner(model, LearnerConfig(objective="asympo", lr=lr, precision=precision), pad_id=0)
    before = [p.detach().float().clone() for p in model.parameters()]
    learner.step(make_batch())
    deltas = [p.detach().float() - b for p, b in zip(model.parameters(), before)]
    norm = math.sqrt(sum(float(d.square().sum()) for d in deltas))
    share = sum(int((d != 0).sum()) for d in deltas) / sum(d.numel() for d in deltas)
    return norm, share


def test_bf16_mixed_moves_fp32_master_weights_like_fp32():
    fp32, share = _one_step_update("fp32")
    assert fp32 > 0 and share > 0.9
    mixed, share_mixed = _one_step_update("bf16-mixed")
    assert mixed == pytest.approx(fp32, rel=0.2) and share_mixed > 0.9


def test_pure_bf16_loses_small_updates():
    """Why the master weights are fp32: at lr 1e-6 most updates are below bf16's spacing and round away."""
    fp32, _ = _one_step_update("fp32")
    pure, share = _one_step_update("bf16-pure")
    assert share < 0.1  # the rest rounded away (only weights near 0 can take a 1e-6 step)
    assert pure < 0.5 * fp32


def test_precision_keeps_fp32_master_weights_and_fp16_scales():
    learner = Learner(tiny_model().to(torch.bfloat16), LearnerConfig(precision="fp16-mixed"), pad_id=0)
    assert all(p.dtype == torch.float32 for p in learner.model.parameters())  # loaded bf16, trained fp32
    m = learner.step(make_batch())
    assert m["optim/loss_scale"] > 0 and "guard/fp16_overflow" in m
    assert Learner(tiny_model(), LearnerConfig(), pad_id=0).precision == "fp32"  # auto on CPU
    with pytest.raises(ValueError, match="learner.precision must be one of"):
        LearnerConfig(precision="bf16")


# ------------------------------------------------------------------ diagnostics


def test_length_weight_and_clipping_diagnostics():
    batch = make_batch()  # positives are GOOD (4 tokens), negatives BAD (3 tokens)
    _, m = _grads_after_step(LearnerConfig(objective="asympo", max_grad_norm=1e-6), batch)
    assert m["len/pos"] == 4 and m["len/neg"] == 3
    assert -1.0 <= m["nll/len_corr"] <= 1.0
    assert m["grad/clipped"] == 1.0
    # asympo's weights are 1/l_i: the effective negative weight is mean(1/l_i) on negatives / on positives
    model = tiny_model()  # the same initial weights the step saw
    w_pos = [len(GOOD) / -seq_logp(model, [2, 3 + g], GOOD) for g in range(2)]
    w_neg = [len(BAD) / -seq_logp(model, [2, 3 + g], BAD) for g in range(2)]
    assert m["asympo/neg_weight"] == pytest.approx(sum(w_neg) / sum(w_pos), rel=1e-4)
    assert m["asympo/weight_min"] == pytest.approx(min(w_pos + w_neg), rel=1e-4)
    assert m["asympo/weight_max"] == pytest.approx(max(w_pos + w_neg), rel=1e-4)
    assert m["asympo/weight_cv"] > 0
    _, m = _grads_after_step(
        LearnerConfig(objective="spo", hparams={"neg_scale": 0.2}, max_grad_norm=1e3), batch
    )
    assert m["spo/neg_weight"] == pytest.approx(0.2) and m["grad/clipped"] == 0.0


# ------------------------------------------------------------------ loading: precision and the KL reference


def test_resumed_run_keeps_the_initial_policy_as_kl_reference(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from asympo.config import ModelConfig, TrainConfig
    from asympo.train import load_policy

    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    ckpt = tmp_path / "step_00000010"
    trained.save_pretrained(ckpt)
    model_cfg = ModelConfig(path=str(tiny_model_dir), dtype="bfloat16")  # the engine's dtype
    cfg = TrainConfig(model=model_cfg, learner=LearnerConfig(kl_coef=0.1))
    model, reference = load_policy(cfg, str(tiny_model_dir), ckpt)
    learner = Learner(model, cfg.learner, pad_id=0, reference=reference)
    for p, t, r, i in zip(
        learner.model.parameters(), trained.parameters(), learner.ref_model.parameters(), initial.parameters()
    ):
        assert p.dtype == torch.float32  # fp32 master weights although model.dtype is bfloat16
        assert torch.equal(p, t)  # the policy continues from the checkpoint ...
        assert torch.equal(r, i)  # ... while the KL reference stays the initial policy
    assert load_policy(TrainConfig(model=model_cfg), str(tiny_model_dir), ckpt)[1] is None  # no KL: none
    assert (
        load_policy(cfg, str(tiny_model_dir), None)[1] is None
    )  # fresh run: the model is the initial policy
