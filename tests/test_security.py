"""Safe defaults, audited: no unpickling of files, no remote code unless asked, weights only in
safetensors, outputs with the normal (umask-respecting) file modes."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

import asympo
from asympo.config import TrainConfig, apply_overrides
from asympo.presets import preset_dict

SRC = Path(asympo.__file__).parent


def _sources():
    return [(p, p.read_text()) for p in sorted(SRC.rglob("*.py"))]


def test_no_file_is_ever_unpickled():
    """torch.load only with weights_only=True; no pickle/joblib/numpy-pickle loading of files. (The reward
    pool's pipes carry pickles between the pool and the worker processes it started itself.)"""
    unsafe = re.compile(
        r"torch\.load\((?![^)]*weights_only\s*=\s*True)|pickle\.loads?\(|joblib\.load|dill\.load|"
        r"allow_pickle\s*=\s*True|cloudpickle\.loads?\("
    )
    hits = [f"{p.relative_to(SRC)}: {m.group()}" for p, text in _sources() for m in unsafe.finditer(text)]
    assert hits == []


def test_remote_code_runs_only_when_the_user_asks():
    hits = [
        str(p.relative_to(SRC)) for p, text in _sources() if re.search(r"trust_remote_code\s*=\s*True", text)
    ]
    assert hits == []
    assert TrainConfig().model.trust_remote_code is False
    cfg = TrainConfig.from_dict({"model": {"trust_remote_code": True}})
    assert cfg.model.trust_remote_code is True
    with pytest.raises(ValueError, match="model.trust_remote_code must be true or false"):
        TrainConfig.from_dict({"model": {"trust_remote_code": "yes"}})


@pytest.mark.slow
def test_run_outputs_have_normal_modes_and_weights_are_safetensors(tmp_path, tiny_model_dir):
    """Every file a run writes (metrics, config, eval, summary, checkpoints, report) is readable by the
    group and others as the umask allows (0644 under umask 022), like any file the user creates, and
    the checkpoint holds no pickle-based weights (.bin, .pt, .pkl)."""
    from asympo.train import train

    out = tmp_path / "run"
    sets = [
        f"out={json.dumps(str(out))}",
        f"model.path={json.dumps(str(tiny_model_dir))}",
        "mode=sync",
        "steps=2",
        "rollout.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=4",
        "eval.limit=2",
        "eval.n=1",
        "checkpoint_every=1",
        "report=true",
        'task.arithmetic={"n_train": 40, "n_test": 6}',
    ]
    old_umask = os.umask(0o022)
    try:
        train(TrainConfig.from_dict(apply_overrides(preset_dict("demo"), sets)), progress=False)
    finally:
        os.umask(old_umask)
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"metrics.jsonl", "eval.jsonl", "config.json", "summary.json", "report.html"} <= names
    assert "model.safetensors" in names and "optimizer.safetensors" in names
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert {k: v for k, v in modes.items() if v != "0o644"} == {}
    pickled = [str(p.relative_to(out)) for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert pickled == []
