"""Atomic checkpoints: round trip of weights, optimiser, RNG and trainer state; torn writes never count."""

from __future__ import annotations

import json
import random

import pytest
import torch

from asympo.checkpoint import (
    atomic_write_text,
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    save_checkpoint,
)


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg)


def trained_state(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for _ in range(2):
        model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
        opt.step()
        sched.step()
    return opt, sched


def test_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model()
    opt, sched = trained_state(model)
    torch.manual_seed(123)
    random.seed(5)
    expected_torch, expected_py = torch.rand(3), random.random()
    torch.manual_seed(123)
    random.seed(5)
    path = save_checkpoint(
        tmp_path,
        7,
        model=model,
        learner_state={"version": 7, "optimizer": opt.state_dict(), "lr_sched": sched.state_dict()},
        trainer_state={"backend": {"x": [1, 2]}},
    )
    assert latest_checkpoint(tmp_path) == path
    torch.manual_seed(999)
    random.seed(999)
    learner_state, trainer_state = load_training_state(path)
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py
    assert trainer_state == {"backend": {"x": [1, 2]}, "step": 7, "version": 7}
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(learner_state["optimizer"])
    for k, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            torch.testing.assert_close(opt2.state_dict()["state"][k][name], v, rtol=0, atol=0)
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    for (n, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_keep_and_torn_checkpoint_is_ignored(tmp_path):
    model = tiny_model()
    opt, sched = trained_state(model)
    ls = {"version": 1, "optimizer": opt.state_dict(), "lr_sched": sched.state_dict()}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, learner_state=ls, trainer_state={}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    # A crash mid-write leaves only a hidden temporary directory, which is never taken as a checkpoint.
    (tmp_path / ".step_00000004.tmp-1").mkdir()
    (tmp_path / "latest").write_text("step_00000009\n")  # a pointer to something that never completed
    assert latest_checkpoint(tmp_path).name == "step_00000003"


def test_atomic_write_text(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_text(p, json.dumps({"a": 1}))
    atomic_write_text(p, json.dumps({"a": 2}))
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_missing_checkpoint():
    assert latest_checkpoint("/nonexistent/dir") is None
    with pytest.raises(FileNotFoundError):
        load_training_state("/nonexistent/dir")
