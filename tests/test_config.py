"""Config dataclasses: validation names the field and the allowed values; presets and overrides compose."""

from __future__ import annotations

import json

import pytest

from asympo.config import TrainConfig, apply_overrides, describe, parse_value
from asympo.presets import PRESETS, preset_dict


def test_presets_build_and_round_trip():
    for name in PRESETS:
        cfg = TrainConfig.from_dict(preset_dict(name))
        assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_overrides():
    d = apply_overrides(
        preset_dict("demo"),
        [
            "learner.lr=3e-4",
            'learner.hparams={"neg_scale": 0.2}',
            "learner.objective=spo",
            "buffer.fixed_delay=4",
            "out=x/y",
        ],
    )
    cfg = TrainConfig.from_dict(d)
    assert cfg.learner.lr == 3e-4 and cfg.learner.hparams == {"neg_scale": 0.2}
    assert cfg.buffer.fixed_delay == 4 and cfg.out == "x/y"
    assert parse_value("true") is True and parse_value("abc") == "abc" and parse_value("[1, 2]") == [1, 2]


@pytest.mark.parametrize(
    "override,message",
    [
        ("learner.objective=nope", r"unknown objective 'nope'; valid objectives: asympo, cispo"),
        ("learner.agg=sum", r"learner.agg must be one of seq-mean-token-mean, token-mean"),
        ("buffer.policy=block", r"buffer.policy must be one of wait, drop"),
        ("rollout.group_size=1", r"rollout.group_size must be >= 2"),
        ("rollout.engine=sglang", r"rollout.engine must be one of torch, vllm, openai"),
        ("backend=slurm", r"backend must be one of local"),
        ("learner.lr=0", r"learner.lr must be > 0"),
        ("learner.bogus=1", r"unknown config key\(s\) learner.bogus; valid keys in learner: objective"),
        (
            'learner.hparams={"neg_scale": 0.2}',
            r"neg_scale not valid for 'asympo'; valid: eps, rescale",
        ),
    ],
)
def test_validation_errors_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(apply_overrides(preset_dict("demo"), [override]))


def test_behavior_corrected_objective_with_text_only_engine_is_rejected():
    d = apply_overrides(preset_dict("demo"), ["learner.objective=grpo", "rollout.engine=openai"])
    with pytest.raises(ValueError, match="needs behavior log-probs, which the openai engine does not return"):
        TrainConfig.from_dict(d)


def test_bad_override_syntax():
    with pytest.raises(ValueError, match="must look like section.field=value"):
        apply_overrides({}, ["learner.lr"])
    with pytest.raises(ValueError, match="is not a config section"):
        apply_overrides({"out": "x"}, ["out.sub=1"])


def test_describe_documents_every_field():
    rows = describe()
    keys = [k for k, _, _ in rows]
    assert "learner.objective" in keys and "buffer.fixed_delay" in keys and "rollout.group_size" in keys
    undocumented = [k for k, _, doc in rows if not doc]
    assert undocumented == [], undocumented


def test_unusable_device_is_a_clear_error(monkeypatch):
    import torch

    from asympo.train import check_device

    check_device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no CUDA GPU.*model.device=cpu"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda:0")
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        check_device("cuda:1")
