"""ASymPOTrainer on a tiny offline Qwen2 (model and tokenizer built here, no hub), on CPU.

Needs the `asympo[trl]` extra; `make test-integrations` installs it.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl", reason="needs the asympo[trl] extra")

from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from asympo.integrations.trl import ASymPOConfig, ASymPOTrainer
from asympo.objectives import LossContext, policy_loss
from tests.models import tiny_qwen2

pytestmark = pytest.mark.integration

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789+=? "


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over CHARS with pad/eos specials."""
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_model(vocab_size: int) -> Qwen2ForCausalLM:
    return tiny_qwen2(vocab_size, tie=True, pad_token_id=0, eos_token_id=1, bos_token_id=1)


def count_a(completions, **kwargs) -> list[float]:
    """Reward: the fraction of 'a' in the completion (dense, so groups rarely tie)."""
    return [c.count("a") / max(1, len(c)) for c in completions]


def make_trainer(tmp_path, loss_type="asympo", model=None, **overrides) -> ASymPOTrainer:
    """A trainer on the tiny model (or `model`, e.g. a saved copy's path) and tokenizer."""
    tokenizer = tiny_tokenizer()
    settings = dict(
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-2,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        seed=0,
    )
    args = ASymPOConfig(output_dir=str(tmp_path), loss_type=loss_type, **{**settings, **overrides})
    dataset = Dataset.from_dict({"prompt": [f"{i}+{i}=" for i in range(16)]})
    return ASymPOTrainer(
        model=tiny_model(len(tokenizer)) if model is None else model,
        reward_funcs=count_a,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def fixed_batch(B=6, P=4, T=5, seed=0):
    """A padded GRPO batch: left-padded prompts, right-padded completions, zero-sum advantages."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(2, 2 + len(CHARS), (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    completion_ids = torch.randint(2, 2 + len(CHARS), (B, T), generator=g)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])
    completion_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    adv = torch.randn(B, generator=g)
    adv = adv - adv.mean()
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": adv,
        "num_items_in_batch": completion_mask.sum(),
    }


def reference_logits(model, batch) -> torch.Tensor:
    """Logits predicting each completion token, computed independently of TRL.  # [B, T, V]"""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at the first real token
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float()
    T = batch["completion_ids"].shape[1]
    return logits[:, -T - 1 : -1]


def reference_logp(model, batch) -> torch.Tensor:
    """Current-policy log-probs of the completion tokens.  # [B, T]"""
    logp = torch.log_softmax(reference_logits(model, batch), dim=-1)
    return logp.gather(-1, batch["completion_ids"][..., None]).squeeze(-1)


@pytest.mark.parametrize(
    "loss_type, hparams",
    [
        ("asympo", {"eps": 1e-6, "rescale": "none"}),
        ("spo", {"neg_scale": 0.3}),
        ("asympo", {"rescale": "batch_mean"}),
    ],
)
def test_loss_on_a_fixed_batch_equals_the_objective(tmp_path, loss_type, hparams):
    overrides = {"spo_neg_scale": 0.3} if loss_type == "spo" else {"asympo_rescale": hparams["rescale"]}
    trainer = make_trainer(tmp_path, loss_type, **overrides)
    model = trainer.model
    model.train()
    batch = fixed_batch()
    # Set by Trainer's loop during training; the loss of each micro-batch is divided by it.
    trainer.current_gradient_accumulation_steps = 2

    loss = trainer.compute_loss(model, batch) * 2
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)

    logp = reference_logp(model, batch)
    mask = batch["completion_mask"].float()
    ref, ref_metrics = policy_loss(loss_type, logp, mask, batch["advantages"], **hparams)
    ref_grads = torch.autograd.grad(ref, params)

    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-6)
    logged = trainer._metrics["train"]
    assert logged["nll/ratio"][-1] == pytest.approx(ref_metrics["nll/ratio"], rel=1e-5)
    if loss_type == "asympo" and hparams["rescale"] == "none":
        assert float(loss.detach()) == pytest.approx(float(batch["advantages"].mean()), abs=1e-6)


def test_batch_mean_uses_the_whole_generation_batch(tmp_path):
    """rescale=batch_mean: the generation batch carries its mean NLL, and every micro-batch of it uses that
    value, not its own mean; so two halves give the whole batch's gradient."""
    trainer = make_trainer(tmp_path, "asympo", asympo_rescale="batch_mean")
    model = trainer.model
    model.train()
    batch = fixed_batch()
    stats = trainer._batch_stats(batch, ("mean_nll",))  # [B, 1]
    with torch.no_grad():
        logp = reference_logp(model, batch)
    mask = batch["completion_mask"].float()
    whole_mean = (-(logp * mask).sum(-1) / mask.sum(-1)).mean()
    assert stats.shape == (6, 1)
    torch.testing.assert_close(stats[:, 0].float(), whole_mean.expand(6), rtol=1e-5, atol=1e-6)

    batch["asympo_batch_stats"] = stats
    trainer.current_gradient_accumulation_steps = 2
    params = [p for p in model.parameters() if p.requires_grad]
    halves = [{k: v[sl] if v.dim() else v for k, v in batch.items()} for sl in (slice(0, 3), slice(3, 6))]
    grads = torch.autograd.grad(sum(trainer.compute_loss(model, h) for h in halves), params)
    logp = reference_logp(model, batch)
    ref = sum(
        policy_loss(
            "asympo",
            logp[sl],
            mask[sl],
            batch["advantages"][sl],
            rescale="batch_mean",
            ctx=LossContext(mean_nll=float(whole_mean)),
        )[0]
        / 2
        for sl in (slice(0, 3), slice(3, 6))
    )
    ref_whole = policy_loss("asympo", logp, mask, batch["advantages"], rescale="batch_mean")[0]
    for g, rg, wg in zip(
        grads, torch.autograd.grad(ref, params, retain_graph=True), torch.autograd.grad(ref_whole, params)
    ):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g, wg, rtol=1e-4, atol=1e-6)  # halves of equal size: the whole batch's


def test_kl_and_entropy_terms_match_policy_loss(tmp_path):
    model_dir = tmp_path / "tiny"  # beta > 0: TRL loads its reference model from the model's path
    tiny_model(len(tiny_tokenizer())).save_pretrained(model_dir)
    trainer = make_trainer(tmp_path, "spo", model=str(model_dir), beta=0.1, entropy_coef=0.01)
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = fixed_batch()
    batch["ref_per_token_logps"] = reference_logp(model, batch).detach() - 0.1 * torch.rand(6, 5)

    loss = trainer.compute_loss(model, batch)

    logits = reference_logits(model, batch)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    mask = batch["completion_mask"].float()
    ref, metrics = policy_loss(
        "spo",
        logp,
        mask,
        batch["advantages"],
        ref_logp=batch["ref_per_token_logps"],
        kl_coef=0.1,
        entropy=entropy,
        entropy_coef=0.01,
    )
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert metrics["kl/ref"] > 0
    assert trainer._metrics["train"]["kl/ref"][-1] == pytest.approx(metrics["kl/ref"], rel=1e-4)
    assert trainer._metrics["train"]["policy/entropy"][-1] == pytest.approx(
        metrics["policy/entropy"], rel=1e-4
    )


def test_trains_a_few_steps_on_cpu(tmp_path):
    trainer = make_trainer(tmp_path, "asympo")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 3
    changed = [not torch.equal(b, p.detach()) for b, p in zip(before, trainer.model.parameters())]
    assert all(changed)
    logs = [h for h in trainer.state.log_history if "loss/total" in h]
    assert len(logs) == 3
    for h in logs:
        assert torch.isfinite(torch.tensor([h["loss"], h["loss/policy"], h["reward"]])).all()
        assert {"nll/pos", "nll/neg", "asympo/scale_mean"} <= h.keys()


@pytest.mark.parametrize("loss_type, old_logp_passes", [("asympo", 0), ("spo", 0), ("dapo", 1)])
def test_stale_batches_skip_the_old_log_prob_pass(tmp_path, loss_type, old_logp_passes):
    """A generation batch reused for 2 optimiser steps: TRL's losses need old log-probs, ours do not."""
    # Generation batch of 8 completions (2 groups) split into 2 optimiser steps of 4.
    trainer = make_trainer(
        tmp_path, loss_type, per_device_train_batch_size=4, steps_per_generation=2, max_steps=2
    )
    no_grad_passes = []
    inner = trainer._get_per_token_logps_and_entropies

    def counting(*args, **kwargs):
        no_grad_passes.append(not torch.is_grad_enabled())
        return inner(*args, **kwargs)

    trainer._get_per_token_logps_and_entropies = counting
    trainer.train()
    assert trainer.state.global_step == 2
    assert sum(no_grad_passes) == old_logp_passes
    assert trainer.num_iterations == 1  # restored after generation


def test_trl_loss_types_still_run_trls_loss(tmp_path):
    trainer = make_trainer(tmp_path, "dapo")
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(model, fixed_batch())
    assert torch.isfinite(loss)
    assert "clip_ratio/region_mean" in trainer._metrics["train"]  # logged by GRPOTrainer's own loss
    assert "nll/ratio" not in trainer._metrics["train"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"loss_type": "ppo"}, "loss_type"),
        ({"asympo_eps": 0.0}, "asympo_eps"),
        ({"asympo_rescale": "batch"}, "asympo_rescale"),
        ({"spo_neg_scale": -1.0}, "spo_neg_scale"),
        ({"asympo_agg": "token-sum"}, "asympo_agg"),
        ({"vllm_importance_sampling_correction": True}, "vllm_importance_sampling_correction"),
        ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold"),
        ({"top_entropy_quantile": 0.2}, "top_entropy_quantile"),
        ({"beta": 0.1, "use_bias_correction_kl": True}, "use_bias_correction_kl"),
    ],
)
def test_config_errors_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=rf"ASymPOConfig\.{field}"):
        ASymPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kwargs)


def test_trainer_refuses_a_plain_grpo_config(tmp_path):
    from trl import GRPOConfig

    tokenizer = tiny_tokenizer()
    args = GRPOConfig(output_dir=str(tmp_path), loss_type="asympo", use_cpu=True, report_to="none")
    with pytest.raises(TypeError, match="ASymPOConfig"):
        ASymPOTrainer(
            model=tiny_model(len(tokenizer)), reward_funcs=count_a, args=args, processing_class=tokenizer
        )


def test_example_script_trains_a_local_model(tmp_path):
    """examples/trl/train_asympo.py end to end on a tiny model saved to disk (the hub is never reached)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "trl" / "train_asympo.py"
    spec = importlib.util.spec_from_file_location("train_asympo", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    tokenizer = tiny_tokenizer()
    model_dir = tmp_path / "tiny"
    tiny_model(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    trainer = example.main(
        [
            "--model", str(model_dir), "--out", str(tmp_path / "out"), "--cpu", "--max-steps", "2",
            "--num-prompts", "8", "--num-generations", "4", "--batch-size", "4", "--steps-per-generation", "2",
            "--max-completion-length", "4", "--loss-type", "spo", "--neg-scale", "0.2",
        ]
    )  # fmt: skip
    assert trainer.state.global_step == 2
    assert trainer.args.loss_type == "spo" and trainer.args.spo_neg_scale == 0.2
    assert example.exact_answer([" 12 apples", "13", "x"], ["12", "12", "12"]) == [1.0, 0.0, 0.0]
