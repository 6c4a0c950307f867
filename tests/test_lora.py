"""LoRA through peft: only the adapter trains and is checkpointed, engines get exactly the merged weights,
resume continues the adapter, and evaluation of a LoRA run merges it."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

pytest.importorskip("peft")

from safetensors.torch import load_file

from asympo.config import ModelConfig, TrainConfig, apply_overrides
from asympo.engines.torch import TorchEngine
from asympo.learner import Learner, LearnerConfig
from asympo.lora import (
    LoraSettings,
    adapter_files,
    load_merged,
    merged_state_dict,
    policy_copy,
    policy_state_dict,
    wrap_lora,
)
from asympo.presets import preset_dict
from tests.test_learner import make_batch, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = LoraSettings(r=4, alpha=8)


def randomised_adapter(model):
    """A LoRA model whose B matrices are non-zero (a fresh adapter is an exact no-op)."""
    wrapped = wrap_lora(model, SETTINGS)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return wrapped


@pytest.mark.parametrize(
    "lora,message",
    [
        ({"rank": 4}, "unknown key(s) rank; valid: r, alpha, dropout, target_modules"),
        ({"r": 0}, "model.lora.r must be an int >= 1"),
        ({"r": 4, "alpha": -1}, "model.lora.alpha must be a number > 0"),
        ({"r": 4, "dropout": 1.0}, "model.lora.dropout must be in [0, 1)"),
        ({"r": 4, "target_modules": "attention"}, 'list of module names or "all-linear"'),
        ({"r": 4, "target_modules": []}, "non-empty list of module names"),
    ],
)
def test_bad_settings_name_the_field(lora, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(lora=lora)


def test_one_step_changes_only_the_adapter():
    model = wrap_lora(tiny_model(), SETTINGS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = Learner(model, LearnerConfig(lr=1e-2, grad_split_every=0), pad_id=0)
    adapter = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert {id(p) for p in learner.params} == adapter  # the optimiser holds the adapter and nothing else
    learner.step(make_batch())
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # B starts at zero: the update must move it


def test_merged_state_dict_equals_peft_merge_and_leaves_the_model_alone():
    model = randomised_adapter(tiny_model())
    ids = torch.tensor([[2, 3, 5, 6, 7]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    merged = merged_state_dict(model)
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(merged) == set(reference) == set(tiny_model().state_dict())  # the base model's key names
    for k in reference:
        torch.testing.assert_close(merged[k], reference[k], rtol=0, atol=1e-6)
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"],
        tiny_model().state_dict()["model.layers.0.self_attn.q_proj.weight"],
    )
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, logits, rtol=0, atol=0)  # still a LoRA model
    assert policy_state_dict(model).keys() == merged.keys()
    # An engine on the plain base architecture serves exactly the LoRA policy.
    engine = TorchEngine(tiny_model(seed=1), tokenizer=_FakeTok())
    engine.load_weights(merged, version=3)
    with torch.no_grad():
        torch.testing.assert_close(engine.model(input_ids=ids).logits, logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(policy_copy(model)(input_ids=ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_adapter_the_same_gradient():
    ids = torch.tensor([[2, 3, 5, 6, 7, 8]])
    grads = []
    for checkpointing in (False, True):
        model = randomised_adapter(tiny_model())
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.train()
        model(input_ids=ids).logits.float().logsumexp(-1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert all(g is not None for g in grads[1].values())
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-6)


def test_engine_samples_a_lora_model_as_its_merged_weights():
    from asympo.engines.base import SamplingParams

    model = randomised_adapter(tiny_model())
    greedy = SamplingParams(temperature=0.0, max_new_tokens=5, ignore_eos=True)
    tok = _FakeTok()
    merged_engine = TorchEngine(tiny_model(seed=1), tokenizer=tok)
    merged_engine.load_weights(merged_state_dict(model), version=1)
    lora_engine = TorchEngine(model, tokenizer=tok)  # the adapter stays active inside the engine
    for prompt in ("ab", "cde"):
        assert (
            lora_engine.generate([prompt], greedy)[0].response_ids
            == merged_engine.generate([prompt], greedy)[0].response_ids
        )


class _FakeTok:
    """Enough of a tokenizer for TorchEngine: one token per character (ids 2..19 of the tiny vocab)."""

    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [2 + (ord(c) % 18) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_adapter_files_and_load_merged(tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / "base"
    tiny_model().save_pretrained(base_dir)
    model = randomised_adapter(AutoModelForCausalLM.from_pretrained(base_dir))
    files = adapter_files(model)
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json"}
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == str(base_dir)
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    for name, data in files.items():
        (adapter_dir / name).write_bytes(data)
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    assert tensors and all("lora_" in k for k in tensors)
    plain = load_merged(adapter_dir)  # the base model named in adapter_config.json
    expected = merged_state_dict(model)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="holds no adapter_config.json"):
        load_merged(base_dir)


# ---------------------------------------------------------------------------------------------- train


def parity_reward(completion: str, reference: str) -> float:
    """A reward a random model earns half the time, so every batch has non-zero advantages."""
    return float(len(completion) % 2)


def lora_config(out, model_dir, *extra):
    sets = [
        f"out={json.dumps(str(out))}",
        f"model.path={json.dumps(str(model_dir))}",
        'model.lora={"r": 4, "alpha": 8}',
        "mode=sync",
        "steps=4",
        "rollout.prompts_per_step=2",
        "rollout.group_size=3",
        "rollout.max_new_tokens=4",
        "eval.limit=4",
        "eval.n=1",
        "eval.every=0",
        "checkpoint_every=2",
        "keep_checkpoints=5",
        "report=false",
        "learner.lr=1e-2",
        "task.reward=tests.test_lora:parity_reward",
        'task.arithmetic={"n_train": 100, "n_test": 5}',
        *extra,
    ]
    return TrainConfig.from_dict(apply_overrides(preset_dict("demo"), sets))


def test_lora_checkpoint_holds_only_the_adapter_and_resume_continues_it(tmp_path, tiny_model_dir):
    from asympo.train import train

    full = lora_config(tmp_path / "full", tiny_model_dir)
    train(full, progress=False)
    ckpt = tmp_path / "full" / "checkpoints" / "step_00000004"
    assert not (ckpt / "model.safetensors").exists() and (ckpt / "adapter_config.json").is_file()
    adapter = load_file(ckpt / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    n_adapter = sum(t.numel() for t in adapter.values())
    opt = load_file(ckpt / "optimizer.safetensors")
    # AdamW keeps two moments per trained tensor (plus a step counter): adapter-sized, not model-sized.
    moments = [t for k, t in opt.items() if k.endswith(("exp_avg", "exp_avg_sq"))]
    assert sum(t.numel() for t in moments) == 2 * n_adapter
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in adapter.items())  # trained

    # Stop after 2 steps, resume to 4: the same adapter as the uninterrupted run.
    train(lora_config(tmp_path / "split", tiny_model_dir, "steps=2"), progress=False)
    train(lora_config(tmp_path / "split", tiny_model_dir), resume=True, progress=False)
    resumed = load_file(tmp_path / "split" / "checkpoints" / "step_00000004" / "adapter_model.safetensors")
    step2 = load_file(tmp_path / "split" / "checkpoints" / "step_00000002" / "adapter_model.safetensors")
    assert resumed.keys() == adapter.keys()
    assert any(not torch.equal(resumed[k], step2[k]) for k in adapter)  # it kept training the adapter
    for k in adapter:
        torch.testing.assert_close(resumed[k], adapter[k], rtol=1e-5, atol=1e-6)

    # `asympo eval --run` merges the adapter into the run's base model.
    from asympo.cli import main

    assert main(["eval", "--run", str(tmp_path / "full"), "--limit", "0"]) == 0
    engine = TorchEngine.from_pretrained(ckpt)
    expected = load_merged(ckpt).state_dict()
    for k, v in engine.model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0)


@pytest.mark.slow
def test_demo_with_lora_learns(tmp_path):
    """The demo preset (embedded model from its cached SFT start) trained through a rank-8 adapter must
    clearly raise held-out pass@1."""
    from asympo.train import train

    cfg = TrainConfig.from_dict(
        apply_overrides(
            preset_dict("demo"),
            [
                f"out={json.dumps(str(tmp_path / 'run'))}",
                'model.lora={"r": 8, "alpha": 16}',
                "learner.lr=2e-3",
                "steps=60",
                "eval.every=0",
                "report=false",
                "checkpoint_every=0",
            ],
        )
    )
    res = train(cfg, progress=False)
    assert res.pass1_after > res.pass1_before + 0.05, (res.pass1_before, res.pass1_after)
