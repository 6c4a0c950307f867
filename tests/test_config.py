"""Config dataclasses: validation names the field and the allowed values; presets and overrides compose."""

from __future__ import annotations

import json

import pytest

from asympo.config import TrainConfig, apply_overrides, describe, parse_value
from asympo.data.arithmetic import ArithmeticConfig
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
        # A wrong kind or value of a known hparam: refused here, not at the first training step.
        ('learner.hparams={"eps": "abc"}', r"learner.hparams: asympo: eps must be a number, got 'abc'"),
        ('learner.hparams={"eps": true}', r"learner.hparams: asympo: eps must be a number, got True"),
        ('learner.hparams={"rescale": 1}', r"learner.hparams: asympo: rescale must be a string, got 1"),
        ('learner.hparams={"rescale": "batch"}', r"learner.hparams: asympo: rescale must be 'none' or"),
        ('learner.hparams={"eps": 0}', r"learner.hparams: asympo: eps must be > 0, got 0"),
        # The nested settings dicts: a typo or a bad value is named here, not as a TypeError mid-run.
        (
            'task.arithmetic={"n_trian": 10}',
            r"unknown config key\(s\) task.arithmetic.n_trian \(did you mean",
        ),
        ('task.arithmetic={"n_train": "x"}', r"task.arithmetic.n_train must be an integer"),
        ('task.reasoning={"max_number": -1}', r"ReasoningConfig.max_number must be None or an int >= 1"),
        ('sft={"step": 10}', r"unknown config key\(s\) sft.step; valid keys in sft: model, task, steps"),
        ('sft={"lr": -1}', r"SFTConfig.lr must be > 0, got -1"),
        ('sft={"task": {"bogus": 1}}', r"sft: .*unexpected keyword argument 'bogus'"),
        (
            'rollout.engine_kwargs={"max_batch": 4}',
            r"unknown key\(s\) max_batch for the torch engine \(did you mean",
        ),
        ('rollout.engine_kwargs={"path": "x"}', r"unknown key\(s\) path for the torch engine"),
        ("learner.adam_betas=[0.9, 1.0]", r"learner.adam_betas must both be in \[0, 1\), got \[0.9, 1.0\]"),
        ("learner.estimator=nopkg.mod:fn", r"learner.estimator: estimator 'nopkg.mod:fn' cannot be imported"),
        ("learner.estimator=mean", r"learner.estimator: unknown estimator 'mean'; valid estimators: dr_grpo"),
        (
            'ray.worker_resources={"num_cpus": -1}',
            r"ray.worker_resources.num_cpus must be a number >= 0, got -1",
        ),
        (
            'ray.worker_resources={"num_gpus": "1"}',
            r"ray.worker_resources.num_gpus must be a number >= 0, got '1'",
        ),
    ],
)
def test_validation_errors_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(apply_overrides(preset_dict("demo"), [override]))


@pytest.mark.parametrize(
    "objective,hparams,message",
    [
        ("spo", {"neg_scale": -1}, r"spo: neg_scale must be >= 0, got -1"),
        ("spo", {"neg_scale": ""}, r"spo: neg_scale must be a number, got ''"),
        ("grpo", {"clip_ratio_c": 0.5}, r"grpo: clip_ratio_c must be > 1, got 0.5"),
        ("grpo", {"clip_ratio_c": "x"}, r"grpo: hparams \{'clip_ratio_c': 'x'\} fail on a dry run"),
        ("tests.custom_objective:half_naive", {"factor": "2"}, r"half_naive: factor must be a number"),
    ],
)
def test_objective_hparams_are_checked_before_any_work(objective, hparams, message):
    d = apply_overrides(preset_dict("demo"), [f"learner.objective={objective}"])
    d["learner"]["hparams"] = hparams
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(d)
    fine = {"spo": {"neg_scale": 1}, "grpo": {"clip_ratio_c": 3}}.get(objective, {"factor": 2})
    d["learner"]["hparams"] = fine  # an int where the default is a float is a number too
    assert TrainConfig.from_dict(d).learner.hparams == fine


def test_task_settings_are_kept_as_checked_and_read_back_equal():
    d = apply_overrides(preset_dict("demo"), ['task.arithmetic={"n_train": 1e3, "ops": ["+", "-"]}'])
    cfg = TrainConfig.from_dict(d)
    assert cfg.task.arithmetic == {"n_train": 1000, "ops": ["+", "-"]}
    assert type(cfg.task.arithmetic["n_train"]) is int  # 1000.0 would pass the config and fail the task
    assert ArithmeticConfig(**cfg.task.arithmetic).n_train == 1000
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_engine_kwargs_are_checked_against_the_engines_own_arguments():
    openai = ["rollout.engine=openai", "rollout.serve=true"]
    d = apply_overrides(preset_dict("demo"), [*openai, 'rollout.engine_kwargs={"concurency": 4}'])
    with pytest.raises(ValueError, match=r"concurency for the openai engine \(did you mean concurrency\?\)"):
        TrainConfig.from_dict(d)
    d = apply_overrides(preset_dict("demo"), [*openai, 'rollout.engine_kwargs={"concurrency": 4}'])
    assert TrainConfig.from_dict(d).rollout.engine_kwargs == {"concurrency": 4}
    d = apply_overrides(
        preset_dict("demo"), ['rollout.engine_kwargs={"max_batch_size": 4, "use_kv_cache": false}']
    )
    assert TrainConfig.from_dict(d).rollout.engine_kwargs["max_batch_size"] == 4
    # vllm passes the options it does not know to vllm.LLM: any key goes (vllm itself need not be installed).
    d = apply_overrides(
        preset_dict("demo"), ["rollout.engine=vllm", 'rollout.engine_kwargs={"enforce_eager": true}']
    )
    assert TrainConfig.from_dict(d).rollout.engine_kwargs == {"enforce_eager": True}


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


# ---------------------------------------------------------------------------------------------- types


def _config_fields(cls=TrainConfig, prefix: str = ""):
    """(key, type hint) of every field of every config dataclass, sections included."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _config_fields(hints[f.name], f"{prefix}{f.name}.")


def _accepts_text(hint) -> bool:
    import types
    import typing

    if hint is str:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint)


def _nested(key: str, value) -> dict:
    d = value
    for part in reversed(key.split(".")):
        d = {part: d}
    return d


FIELDS = dict(_config_fields())


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_every_field_rejects_a_wrong_type_naming_the_field(key):
    """A value of the wrong type is a ValueError `key must be <type>, got <value>` for every field, including
    fields added later (the check is generic over the type hints)."""
    wrong = 12.5 if _accepts_text(FIELDS[key]) else "fast"
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict(_nested(key, wrong))
    assert str(info.value).startswith(f"{key} must be "), str(info.value)
    assert str(info.value).endswith(f"got {wrong!r}")


def test_wrong_type_messages():
    cases = {
        '{"learner": {"lr": "fast"}}': "learner.lr must be a number (float), got 'fast'",
        '{"steps": true}': "steps must be an integer (int), got True",
        '{"steps": 2.5}': "steps must be an integer (int), got 2.5",
        '{"report": "yes"}': "report must be true or false (bool), got 'yes'",
        '{"buffer": {"fixed_delay": "4"}}': "buffer.fixed_delay must be an integer (int) or null, got '4'",
        '{"learner": {"adam_betas": [0.9]}}': "learner.adam_betas must be a list of 2 values (float, float)",
        '{"logging": {"backends": "tensorboard"}}': "logging.backends must be a list of a string (str)",
        '{"logging": {"backends": [1]}}': "logging.backends[0] must be a string (str), got 1",
        '{"rollout": 3}': "rollout must be a mapping of RolloutConfig fields, got 3",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError) as info:
            TrainConfig.from_dict(json.loads(text))
        assert str(info.value).startswith(message), (text, str(info.value))


def test_right_types_are_converted():
    cfg = TrainConfig.from_dict(
        {"steps": 1e3, "learner": {"lr": 1, "adam_betas": [0.9, 0.95]}, "ray": {"address": None}}
    )
    assert cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert cfg.learner.lr == 1.0 and isinstance(cfg.learner.lr, float)
    assert cfg.learner.adam_betas == (0.9, 0.95)


def test_text_fields_keep_number_like_overrides_as_text():
    d = apply_overrides(preset_dict("demo"), ["out=2024", "learner.lr=1e-3", "ray.address=auto"])
    cfg = TrainConfig.from_dict(d)
    assert cfg.out == "2024" and cfg.learner.lr == 1e-3 and cfg.ray.address == "auto"


@pytest.mark.parametrize(
    "d,message",
    [
        ({"learner": {"lrr": 1e-3}}, "unknown config key(s) learner.lrr (did you mean learner.lr?)"),
        ({"lr": 1e-3}, "unknown config key(s) lr (did you mean learner.lr?)"),
        ({"reprt": False}, "unknown config key(s) reprt (did you mean report?)"),
        ({"rollout": {"groupsize": 4}}, "rollout.groupsize (did you mean rollout.group_size?)"),
        ({"zzzz": 1}, "unknown config key(s) zzzz; valid keys: out, steps"),
    ],
)
def test_unknown_keys_suggest_a_close_match(d, message):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict(d)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("rollout.top_p=0", "rollout.top_p must be in (0, 1]"),
        ("rollout.top_p=1.5", "rollout.top_p must be in (0, 1]"),
        ("rollout.reward_workers=-1", "rollout.reward_workers must be >= 0"),
        ("rollout.reward_timeout_s=0", "rollout.reward_timeout_s must be a finite number > 0"),
        ("rollout.temperature=1e999", "rollout.temperature must be > 0"),
        ("eval.temperature=-1", "eval.temperature must be >= 0"),
        ("eval.n=0", "eval.n must be an int >= 1"),
        ("checkpoint_every=-5", "checkpoint_every must be >= 0"),
        ("keep_checkpoints=-1", "keep_checkpoints must be >= 0"),
        ("steps=0", "steps must be an int >= 1"),
        ("out=", "out must name a run directory"),
        ("task.name=", "task.name must not be empty"),
        ("buffer.max_staleness=-1", "buffer.max_staleness must be an int >= 0"),
        ("learner.kl_coef=-0.1", "learner.kl_coef must be >= 0"),
        ('logging.backends=["jsonl", "mlflow"]', "logging.backends: unknown backend(s) 'mlflow'"),
        ('logging.backends=["jsonl", "jsonl"]', "logging.backends lists a backend twice"),
    ],
)
def test_out_of_range_values_name_the_field(override, message):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict(apply_overrides(preset_dict("demo"), [override]))
    assert message in str(info.value)
