"""SFT warm-up: loss falls, the result loads as a HF model, the cache is keyed, atomic and reused."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

from asympo.data.arithmetic import ArithmeticConfig, arithmetic_problems
from asympo.engines.base import SamplingParams
from asympo.engines.torch import TorchEngine
from asympo.evaluate import evaluate
from asympo.models.tiny import TinyModelConfig
from asympo.rewards.arithmetic import arithmetic_reward
from asympo.sft import SFTConfig, _lr_factor, cache_root, sft_cache_path, train_sft, warmup

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
TASK = ArithmeticConfig(digits=1, ops=("+",), n_train=80, n_test=20)


def small_cfg(**kwargs) -> SFTConfig:
    base = {"steps": 40, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "target_pass1": None}
    return SFTConfig(model=SMALL, task=TASK, **(base | kwargs))


def test_loss_falls_and_only_answer_tokens_are_trained():
    model, tok, stats = train_sft(small_cfg(), progress=False)
    assert stats["loss_last"] < 0.6 * stats["loss_first"], stats
    assert len(stats["losses"]) == 40
    # The loss is on the answer: the model now ends answers with EOS right after the digits.
    engine = TorchEngine(model, tok)
    out = engine.generate(
        [p.prompt for p in arithmetic_problems(TASK, "train")[:20]],
        SamplingParams(temperature=0.0, max_new_tokens=4),
    )
    assert sum(c.finish_reason == "stop" for c in out) >= 15
    assert all(c.text.strip().lstrip("-").isdigit() for c in out if c.finish_reason == "stop")


def test_stops_when_validation_target_is_reached(monkeypatch):
    scripted = iter([0.1, 0.25, 0.31, 0.9])
    seen = []

    def fake_val(model, tokenizer, problems, cfg):
        seen.append(len(problems))
        return next(scripted)

    monkeypatch.setattr("asympo.sft._val_pass1", fake_val)
    cfg = small_cfg(steps=100, target_pass1=0.3, eval_every=4, n_val=10)
    _, _, stats = train_sft(cfg, progress=False)
    assert stats["steps"] == 12 and stats["reached_target"] and stats["val_pass1"] == 0.31
    assert stats["chosen_step"] == 12
    assert stats["val_curve"] == [(4, 0.1), (8, 0.25), (12, 0.31)]
    assert seen == [10, 10, 10]  # the held-out slice of the train split


def test_overshoot_keeps_the_checkpoint_closest_to_the_target(monkeypatch):
    scripted = iter([0.1, 0.28, 0.6])
    snapshots = {}

    def fake_val(model, tokenizer, problems, cfg):
        snapshots[len(snapshots)] = {k: v.clone() for k, v in model.state_dict().items()}
        return next(scripted)

    monkeypatch.setattr("asympo.sft._val_pass1", fake_val)
    model, _, stats = train_sft(
        small_cfg(steps=100, target_pass1=0.3, eval_every=4, n_val=10), progress=False
    )
    assert stats["steps"] == 12 and stats["chosen_step"] == 8 and stats["val_pass1"] == 0.28
    final = model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in snapshots[1].items())  # the weights of step 8
    assert not all(torch.equal(final[k], v) for k, v in snapshots[2].items())


def test_validation_problems_are_not_trained_on():
    from asympo.sft import _split

    cfg = small_cfg(target_pass1=0.3, n_val=10)
    train, val = _split(cfg)
    assert len(train) == 70 and len(val) == 10 and not {p.id for p in train} & {p.id for p in val}
    assert {p.id for p in train + val} == {p.id for p in arithmetic_problems(TASK, "train")}
    assert not {p.id for p in val} & {p.id for p in arithmetic_problems(TASK, "test")}
    train_all, val_none = _split(small_cfg(target_pass1=None))
    assert len(train_all) == 80 and val_none == []


def test_real_validation_check_runs(monkeypatch):
    """The real check (sampling the validation problems) on a briefly trained model: a valid fraction."""
    cfg = small_cfg(steps=30, target_pass1=1.0, eval_every=15, n_val=10)
    _, _, stats = train_sft(cfg, progress=False)
    assert stats["steps"] == 30 and [s for s, _ in stats["val_curve"]] == [15, 30]
    assert all(0.0 <= v <= 1.0 and v * 20 == int(v * 20) for _, v in stats["val_curve"])  # k of 20 samples


def test_warmup_caches_atomically_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMPO_CACHE", str(tmp_path / "cache"))
    cfg = small_cfg(steps=10)
    path = warmup(cfg, progress=False)
    assert path == tmp_path / "cache" / "sft" / cfg.key() == sft_cache_path(cfg)
    meta = json.loads((path / "sft.json").read_text())
    assert meta["key"] == cfg.key() and meta["config"]["steps"] == 10
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]  # no temp dir left
    engine = TorchEngine.from_pretrained(path)
    assert engine.generate(["1+2="], SamplingParams(max_new_tokens=2, seed=0))

    # Second call: no training (train_sft would raise), same path.
    monkeypatch.setattr("asympo.sft.train_sft", lambda *a, **k: pytest.fail("retrained a cached config"))
    assert warmup(cfg, progress=False) == path
    # Another config is another entry.
    assert small_cfg(steps=11).key() != cfg.key() and small_cfg(seed=1).key() != cfg.key()
    assert cache_root() == tmp_path / "cache" and cache_root(tmp_path / "x") == tmp_path / "x"


def test_failed_warmup_leaves_no_entry(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("asympo.sft.save_pretrained", boom)
    cfg = small_cfg(steps=2)
    with pytest.raises(RuntimeError, match="disk full"):
        warmup(cfg, cache_dir=tmp_path, progress=False)
    assert not sft_cache_path(cfg, tmp_path).exists()
    assert os.listdir(tmp_path / "sft") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"max_grad_norm": 0}, "max_grad_norm"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SFTConfig(**kwargs)


def test_config_from_dicts_has_same_key():
    model = {"hidden_size": 64, "num_layers": 2, "intermediate_size": 128}
    task = {"digits": 1, "n_train": 80, "n_test": 20}
    from_dicts = SFTConfig(model=model, task=task, n_val=10)
    typed = SFTConfig(model=TinyModelConfig(**model), task=ArithmeticConfig(**task), n_val=10)
    assert from_dicts.key() == typed.key()
    assert SFTConfig(model=model, task=task, n_val=11).key() != typed.key()


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    cfg = small_cfg(steps=100, warmup_steps=10, lr_schedule="cosine")
    factors = [_lr_factor(s, cfg) for s in range(cfg.steps + 1)]
    assert factors[9] == 1.0 and factors[0] == 0.1
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[55] == pytest.approx(0.5) and factors[100] == pytest.approx(0.0)
    assert all(_lr_factor(s, small_cfg(warmup_steps=10)) == 1.0 for s in range(9, 100))


def test_constant_schedule_keeps_the_cache_keys_made_before_the_field():
    # The demo's cached warm-ups were keyed before lr_schedule existed; only a new value may change a key.
    assert SFTConfig().key() == "9e3c75fe5b4c7991"
    assert SFTConfig(lr_schedule="cosine").key() != SFTConfig().key()


@pytest.mark.slow
def test_default_warmup_lands_in_the_target_range(tmp_path):
    """The shipped defaults: held-out pass@1 at temperature 1 in roughly [0.2, 0.5] (room for RL)."""
    cfg = SFTConfig()
    path = warmup(cfg, cache_dir=tmp_path, progress=False)
    assert json.loads((path / "sft.json").read_text())["stats"]["reached_target"]
    engine = TorchEngine.from_pretrained(path)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=cfg.task.max_answer_chars + 1, seed=0)
    result = evaluate(
        engine, arithmetic_problems(cfg.task, "test"), arithmetic_reward, n=4, sampling=sampling
    )
    assert 0.15 <= result["pass@1"] <= 0.6, result
