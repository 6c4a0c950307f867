"""Atomic checkpoints: round trip of weights, optimiser, RNG and trainer state; torn writes never count."""

from __future__ import annotations

import json
import logging
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asympo.checkpoint import (
    CheckpointError,
    atomic_write_text,
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    load_weight_history,
    save_checkpoint,
    verify_checkpoint,
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


def three_checkpoints(root, **kw):
    model = tiny_model()
    opt, sched = trained_state(model)
    ls = {"version": 1, "optimizer": opt.state_dict(), "lr_sched": sched.state_dict()}
    return [
        save_checkpoint(root, step, model=model, learner_state=ls, trainer_state={}, keep=3, **kw)
        for step in (1, 2, 3)
    ]


def truncate(f):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def flip_byte(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage,problem",
    [
        (lambda c: truncate(c / "model.safetensors"), "model.safetensors has .* bytes, the manifest says"),
        (lambda c: flip_byte(c / "optimizer.safetensors"), "optimizer.safetensors does not match its sha256"),
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda c: (c / "manifest.json").unlink(), "has no manifest.json"),
        (lambda c: (c / "manifest.json").write_text("{"), "manifest.json is unreadable"),
    ],
)
def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog, damage, problem):
    ckpts = three_checkpoints(tmp_path)
    assert all(verify_checkpoint(c) is None for c in ckpts)
    damage(ckpts[-1])
    assert re.search(problem, verify_checkpoint(ckpts[-1]))
    with caplog.at_level(logging.WARNING, logger="asympo.checkpoint"):
        assert latest_checkpoint(tmp_path, strict=True) == ckpts[1]
    (warning,) = caplog.records
    assert "step_00000003 is damaged" in warning.getMessage() and "\n" not in warning.getMessage()


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    for c in three_checkpoints(tmp_path):
        truncate(c / "model.safetensors")
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(
        CheckpointError, match=r"no intact checkpoint under .*step_00000001/model.safetensors"
    ):
        latest_checkpoint(tmp_path, strict=True)
    assert isinstance(CheckpointError("x"), ValueError)  # the CLI reports it as a user error, exit 2


def test_weight_history_round_trip_and_is_covered_by_the_manifest(tmp_path):
    history = {v: {"w": torch.full((2, 3), float(v)), "b": torch.arange(3.0) + v} for v in (4, 5)}
    ckpt = three_checkpoints(tmp_path, weight_history=history)[-1]
    loaded = load_weight_history(ckpt)
    assert list(loaded) == [4, 5]
    for v in (4, 5):
        assert set(loaded[v]) == {"w", "b"}
        assert all(torch.equal(loaded[v][k], history[v][k]) for k in ("w", "b"))
    assert "weights_v4.safetensors" in json.loads((ckpt / "manifest.json").read_text())["files"]
    truncate(ckpt / "weights_v4.safetensors")
    assert "weights_v4.safetensors" in verify_checkpoint(ckpt)


KILL_DURING_WRITE = """
import os, signal, sys
import safetensors.torch as st
import asympo.checkpoint as ck
sys.path.insert(0, {tests!r})
from test_checkpoint import three_checkpoints, tiny_model, trained_state

root = sys.argv[1]
three_checkpoints(root)
real = st.save_file

def torn(tensors, path, *a, **k):  # write half of the file, then die as a SIGKILL would
    real(tensors, path, *a, **k)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

ck.save_file = torn
model = tiny_model()
opt, sched = trained_state(model)
ls = {{"version": 4, "optimizer": opt.state_dict(), "lr_sched": sched.state_dict()}}
ck.save_checkpoint(root, 4, model=model, learner_state=ls, trainer_state={{}}, keep=3)
"""


def test_kill_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    tests = str(Path(__file__).parent)
    script = KILL_DURING_WRITE.format(tests=tests)
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".step_00000004")]  # the torn write
    assert latest_checkpoint(tmp_path, strict=True).name == "step_00000003"
    assert verify_checkpoint(tmp_path / "step_00000003") is None


def save_step(root, step, model, opt, sched, keep):
    ls = {"version": step, "optimizer": opt.state_dict(), "lr_sched": sched.state_dict()}
    return save_checkpoint(root, step, model=model, learner_state=ls, trainer_state={}, keep=keep)


def test_a_damaged_checkpoint_does_not_count_as_a_kept_one(tmp_path, caplog):
    """keep=2 with the newest older checkpoint truncated: the older intact one is kept (a resume can use it),
    the damaged one is removed with a warning naming it."""
    model = tiny_model()
    opt, sched = trained_state(model)
    for step in (1, 2):
        save_step(tmp_path, step, model, opt, sched, keep=2)
    truncate(tmp_path / "step_00000002" / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="asympo.checkpoint"):
        save_step(tmp_path, 3, model, opt, sched, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000003"]
    assert all(verify_checkpoint(p) is None for p in list_checkpoints(tmp_path))
    (warning,) = caplog.records
    assert "removing damaged checkpoint" in warning.getMessage() and "step_00000002" in warning.getMessage()
    # The next save prunes as usual: the two newest intact ones stay.
    save_step(tmp_path, 4, model, opt, sched, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]


def test_a_full_disk_during_a_save_removes_the_temporary_directory(tmp_path, monkeypatch):
    """ENOSPC from the optimizer's safetensors write: the error reaches the caller (the CLI names the file),
    no half-written `.step_*.tmp-*` directory is left holding space, and the previous checkpoint is intact."""
    import errno
    import os

    import asympo.checkpoint as ck

    model = tiny_model()
    opt, sched = trained_state(model)
    save_step(tmp_path, 1, model, opt, sched, keep=2)

    def no_space(tensors, path, *a, **k):
        Path(path).write_bytes(b"\0" * 100)  # part of the file got written before the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ck, "save_file", no_space)
    with pytest.raises(OSError, match="No space left on device") as e:
        save_step(tmp_path, 2, model, opt, sched, keep=2)
    assert e.value.errno == errno.ENOSPC and e.value.filename.endswith("optimizer.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]
    assert latest_checkpoint(tmp_path, strict=True).name == "step_00000001"
