"""The reasoning task (word problems with worked solutions), its SFT warm-up and the second-scale studies."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from fractions import Fraction

import pytest

from asympo.config import TrainConfig, apply_overrides
from asympo.data.arithmetic import ArithmeticConfig
from asympo.data.reasoning import TEMPLATES, ReasoningConfig, reasoning_problems
from asympo.models.tiny import SIZES, TinyModelConfig
from asympo.presets import preset_dict
from asympo.rewards.math import math_reward
from asympo.sft import SFT_FORMAT_VERSION, SFTConfig, sft_cache_path, train_sft, warmup
from asympo.study import STUDY_PRESETS, StudyConfig, cell_config, cells_of, run_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_TASK = {"n_train": 60, "n_test": 10}
_EQUATION = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def _key(problem) -> tuple:
    return problem.meta["template"], tuple(problem.meta["numbers"])


# ----------------------------------------------------------------------------------------- the task


def test_splits_are_deterministic_disjoint_and_cover_every_template():
    cfg = ReasoningConfig(n_train=700, n_test=140)
    train, test = reasoning_problems(cfg, "train"), reasoning_problems(cfg, "test")
    assert len(train) == 700 and len(test) == 140
    assert reasoning_problems(cfg, "train") == train  # same config, same problems
    train_keys, test_keys = {_key(p) for p in train}, {_key(p) for p in test}
    assert len(train_keys) == 700 and len(test_keys) == 140  # no duplicates within a split
    assert not train_keys & test_keys  # no template-and-number pair in both
    # Templates take turns, so each is equally common although their number spaces differ 25-fold.
    for split in (train, test):
        counts = {t: sum(p.meta["template"] == t for p in split) for t in TEMPLATES}
        assert max(counts.values()) - min(counts.values()) <= 1, counts
    other_seed = reasoning_problems(ReasoningConfig(n_train=700, n_test=140, seed=1), "test")
    assert {_key(p) for p in other_seed} != test_keys


def test_solutions_are_correct_worked_calculations_of_40_to_200_characters():
    cfg = ReasoningConfig(n_train=2000, n_test=100)
    problems = reasoning_problems(cfg, "train") + reasoning_problems(cfg, "test")
    lengths = [len(p.reference) for p in problems]
    assert 40 <= min(lengths) and max(lengths) <= 200 and max(lengths) - min(lengths) >= 50
    assert cfg.max_answer_chars >= max(lengths)  # the longest solution of the whole problem space
    for p in problems:
        *steps, last = p.reference.split("\n")
        assert last == f"#### {p.meta['answer']}"
        equations = [_EQUATION.search(s) for s in steps]
        assert all(equations) and 2 <= len(equations) == TEMPLATES[p.meta["template"]].ops <= 4, p
        for m in equations:
            a, op, b, result = int(m[1]), m[2], int(m[3]), int(m[4])
            exact = {"+": a + b, "-": a - b, "*": a * b, "/": Fraction(a, b)}[op]
            assert exact == result, p.reference  # every step is true, divisions come out whole
        assert int(equations[-1][4]) == p.meta["answer"] >= 0
        assert p.prompt.endswith("?\n") and str(p.meta["numbers"][0]) in p.prompt


def test_max_number_bounds_every_number_of_the_solution():
    cfg = ReasoningConfig(n_train=2000, n_test=200, max_number=20)
    problems = reasoning_problems(cfg, "train") + reasoning_problems(cfg, "test")
    assert max(int(n) for p in problems for n in re.findall(r"\d+", p.reference)) <= 20
    assert {p.meta["template"] for p in problems} == set(TEMPLATES)
    # The bound shrinks the space; a split larger than what is left is refused with the fix.
    assert cfg.n_distinct < ReasoningConfig(n_train=0, n_test=0).n_distinct
    with pytest.raises(ValueError, match="exceeds .* max_number 20; .* raise max_number"):
        ReasoningConfig(n_train=cfg.n_distinct, n_test=1, max_number=20)
    with pytest.raises(ValueError, match="max_number must be None or an int >= 1"):
        ReasoningConfig(max_number=0)


def test_extras_give_about_half_the_solutions_a_true_check_or_restated_answer():
    plain = reasoning_problems(ReasoningConfig(n_train=1000, n_test=0), "train")
    cfg = ReasoningConfig(n_train=1000, n_test=0, extras=("check", "restate"))
    extra = reasoning_problems(cfg, "train")
    assert [_key(p) for p in extra] == [_key(p) for p in plain]  # the same problems, other solutions
    checks = restates = 0
    for p, q in zip(plain, extra, strict=True):
        *plain_steps, _ = p.reference.split("\n")
        *steps, last = q.reference.split("\n")
        assert steps[: len(plain_steps)] == plain_steps and last == f"#### {q.meta['answer']}"
        added = steps[len(plain_steps) :]
        if added and added[0].startswith("Check: "):
            checks += 1
            c, op, b, a = _EQUATION.search(added.pop(0)).groups()
            # The last step backwards, and true.
            assert _EQUATION.search(plain_steps[-1]).groups() == (
                a,
                {"-": "+", "+": "-", "/": "*", "*": "/"}[op],
                b,
                c,
            )
        if added:
            restates += 1
            assert added == [f"So the answer is {q.meta['answer']}."]
        assert math_reward(q.reference, q.reference) == 1.0
    assert 400 <= checks <= 600 and 400 <= restates <= 600, (checks, restates)
    # So the lengths of one template's solutions differ by whole lines.
    assert cfg.max_answer_chars > ReasoningConfig().max_answer_chars
    with pytest.raises(ValueError, match="extras must be distinct names from"):
        ReasoningConfig(extras=("check", "detour"))


def test_math_reward_grades_the_final_answer_after_hashes():
    problem = reasoning_problems(ReasoningConfig(n_train=10, n_test=10), "test")[0]
    answer = problem.meta["answer"]
    assert math_reward(problem.reference, problem.reference) == 1.0
    assert math_reward(f"#### {answer}", problem.reference) == 1.0
    # Only the final answer counts: a wrong step with the right answer passes, the reverse fails.
    assert math_reward(f"1+1=3\n#### {answer}", problem.reference) == 1.0
    wrong = problem.reference.rsplit("####", 1)[0] + f"#### {answer + 1}"
    assert math_reward(wrong, problem.reference) == 0.0
    truncated = problem.reference.rsplit("####", 1)[0]  # ran out of tokens before the answer
    assert math_reward(truncated, problem.reference) == 0.0
    assert math_reward(f"#### {answer}\n#### {answer + 2}", problem.reference) == 0.0  # the last one counts


def test_config_errors_name_the_field_and_the_fix():
    with pytest.raises(ValueError, match="templates must be distinct names from"):
        ReasoningConfig(templates=("buy", "nope"))
    with pytest.raises(ValueError, match="templates must be distinct"):
        ReasoningConfig(templates=())
    with pytest.raises(ValueError, match="exceeds the .* distinct problems"):
        ReasoningConfig(templates=("buy",), n_train=5000)
    with pytest.raises(ValueError, match="n_test must be an int >= 0"):
        ReasoningConfig(n_test=-1)
    with pytest.raises(ValueError, match="split must be one of"):
        reasoning_problems(ReasoningConfig(n_train=5, n_test=5), "validation")


def test_train_config_selects_the_task_and_the_math_reward():
    from asympo.train import load_task, validate

    cfg = TrainConfig.from_dict(apply_overrides(TrainConfig().to_dict(), ["task.name=reasoning"]))
    cfg.task.reasoning = dict(SMALL_TASK)
    validate(cfg)
    assert cfg.task.reward_name == "math"
    train, test = load_task(cfg.task, "train"), load_task(cfg.task, "test")
    assert len(train) == 60 and len(test) == 10
    assert test == reasoning_problems(ReasoningConfig(**SMALL_TASK), "test")
    cfg.task.reasoning = {"n_tests": 3}  # a misspelt setting is named, not ignored
    with pytest.raises(TypeError, match="n_tests"):
        load_task(cfg.task, "test")


# ----------------------------------------------------------------------------------------- SFT


def test_sft_config_for_reasoning_and_the_arithmetic_cache_key_is_unchanged():
    cfg = SFTConfig(task_name="reasoning", task=dict(SMALL_TASK), n_val=10)
    assert isinstance(cfg.task, ReasoningConfig) and cfg.key() != SFTConfig().key()
    # The arithmetic key is computed as before the field existed, so existing caches stay valid.
    before = json.dumps(
        {"format": SFT_FORMAT_VERSION, "config": _without_task_name(SFTConfig())}, sort_keys=True
    )
    assert SFTConfig().key() == hashlib.sha256(before.encode()).hexdigest()[:16]
    with pytest.raises(ValueError, match="task_name must be one of"):
        SFTConfig(task_name="gsm8k")
    with pytest.raises(ValueError, match="must be a ReasoningConfig"):
        SFTConfig(task_name="reasoning", task=ArithmeticConfig())


def _without_task_name(cfg: SFTConfig) -> dict:
    """The config as it was before `task_name` (and `lr_schedule`, at its default) existed."""
    d = dataclasses.asdict(cfg)
    del d["task_name"], d["lr_schedule"]
    return d


def test_reasoning_preset_warms_up_its_own_task_and_model():
    """The train preset and `python -m asympo.sft --task reasoning` resolve to the same cached warm-up."""
    from asympo.sft import _task_defaults

    cfg = TrainConfig.from_dict(preset_dict("reasoning"))
    assert cfg.task.name == "reasoning" and cfg.task.reward_name == "math"
    sft = {"task_name": "reasoning", **cfg.sft, "task": cfg.task.reasoning}
    assert SFTConfig(**sft).key() == _task_defaults("reasoning").key()
    assert SFTConfig(**sft).model == TinyModelConfig(**SIZES["reasoning"])
    task = ReasoningConfig(**cfg.task.reasoning)
    # A whole worked solution fits in a response, and prompt + response in the model's positions.
    assert cfg.rollout.max_new_tokens > task.max_answer_chars
    longest_prompt = max(len(p.prompt) for p in reasoning_problems(task, "train"))
    assert longest_prompt + 1 + cfg.rollout.max_new_tokens <= SIZES["reasoning"]["max_position_embeddings"]


def test_sft_learns_the_worked_solution_format(tmp_path):
    small = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    cfg = SFTConfig(
        model=small,
        task=dict(SMALL_TASK),
        task_name="reasoning",
        steps=30,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        target_pass1=None,
    )
    _, _, stats = train_sft(cfg, progress=False)
    # Most of a solution is copied numbers and fixed words: the loss falls far in a few steps.
    assert stats["loss_last"] < 0.6 * stats["loss_first"], stats
    path = warmup(cfg, cache_dir=tmp_path, progress=False)
    assert path == sft_cache_path(cfg, tmp_path)
    meta = json.loads((path / "sft.json").read_text())
    assert meta["config"]["task_name"] == "reasoning" and meta["config"]["task"]["n_train"] == 60


# ----------------------------------------------------------------------------------------- studies


def test_new_study_presets_have_the_promised_grids():
    def grid(name):
        study = STUDY_PRESETS[name]
        return [o.label for o in study.objectives], study.staleness, study.seeds, len(cells_of(study))

    labels, staleness, seeds, n = grid("reasoning")
    assert labels == [
        "naive",
        "spo(neg_scale=0.5)",
        "spo(neg_scale=0.2)",
        "asympo",
        "asympo(rescale=batch_mean)",
        "grpo",
        "cispo",
    ]
    assert (staleness, seeds, n) == ([0, 4, 16], [0, 1, 2, 3, 4], 7 * 3 * 5)
    labels, staleness, seeds, n = grid("async")
    assert labels == ["naive", "spo(neg_scale=0.2)", "asympo", "grpo"]
    assert (staleness, seeds, n) == ([4, 16], [0, 1, 2, 3, 4], 4 * 2 * 5)
    assert STUDY_PRESETS["async"].mode == "async"
    labels, staleness, seeds, n = grid("aggregation")
    assert labels == [
        "naive[agg=seq-mean-token-mean]",
        "naive[agg=token-mean]",
        "asympo[agg=seq-mean-token-mean]",
        "asympo[agg=token-mean]",
    ]
    assert (staleness, seeds, n) == ([0, 16], [0, 1, 2, 3, 4], 4 * 2 * 5)
    assert (
        STUDY_PRESETS["staleness"].seeds == [0, 1, 2, 3, 4]
        and len(cells_of(STUDY_PRESETS["staleness"])) == 140
    )


def test_cell_configs_of_each_mode(tmp_path):
    study = STUDY_PRESETS["async"]
    cfg = cell_config(study, cells_of(study)[-1], tmp_path)
    assert cfg.mode == "async" and cfg.task.name == "reasoning"
    assert (cfg.buffer.fixed_delay, cfg.buffer.max_staleness, cfg.buffer.policy) == (None, 16, "wait")
    # The first scale's async preset: the staleness preset's task and steps, in real async mode.
    study, fixed = STUDY_PRESETS["async-arithmetic"], STUDY_PRESETS["staleness"]
    cfg = cell_config(study, cells_of(study)[0], tmp_path)
    assert cfg.mode == "async" and cfg.task.name == "arithmetic" and cfg.buffer.max_staleness == 4
    twin = cell_config(fixed, next(c for c in cells_of(fixed) if c.staleness == 4), tmp_path)
    assert (cfg.steps, cfg.eval.limit, cfg.model.path) == (twin.steps, twin.eval.limit, twin.model.path)
    study = STUDY_PRESETS["aggregation"]
    cells = cells_of(study)
    aggs = {cell_config(study, c, tmp_path).learner.agg for c in cells}
    assert aggs == {"seq-mean-token-mean", "token-mean"}
    cfg = cell_config(study, cells[-1], tmp_path)
    assert (cfg.mode, cfg.buffer.fixed_delay, cfg.learner.agg, cfg.learner.objective) == (
        "sync",
        16,
        "token-mean",
        "asympo",
    )
    with pytest.raises(ValueError, match="study mode must be one of fixed_delay, async"):
        StudyConfig(objectives=study.objectives, staleness=[0], seeds=[0], mode="realtime")


def _one_cell(preset: str, objective_index: int, staleness: int, model_dir) -> StudyConfig:
    base = STUDY_PRESETS[preset]
    return dataclasses.replace(
        base,
        objectives=[base.objectives[objective_index]],
        staleness=[staleness],
        seeds=[0],
        overrides=[
            *base.overrides,
            f"model.path={json.dumps(str(model_dir))}",
            "steps=3",
            f"task.reasoning={json.dumps(SMALL_TASK)}",
            "rollout.prompts_per_step=2",
            "rollout.group_size=2",
            "rollout.max_new_tokens=6",
            "eval.limit=4",
            "eval.n=1",
        ],
    )


@pytest.mark.parametrize(
    ("preset", "objective_index", "staleness"),
    [
        ("reasoning", 4, 4),
        ("async", 2, 4),
        # The same fixed-delay path as `reasoning` plus one learner field (checked in test_cell_configs...).
        pytest.param("aggregation", 3, 16, marks=pytest.mark.slow),
    ],
)
def test_one_tiny_cell_of_each_new_preset_end_to_end(
    tmp_path, tiny_model_dir, preset, objective_index, staleness
):
    study = _one_cell(preset, objective_index, staleness, tiny_model_dir)
    out = tmp_path / preset
    (row,) = csv.DictReader(run_study(study, out, parallel=1, progress=False, report=False).open())
    assert row["objective"] == study.objectives[0].label and int(row["staleness"]) == staleness
    assert 0.0 <= float(row["final_pass1"]) <= 1.0
    (cell,) = (out / "cells").iterdir()
    config = json.loads((cell / "config.json").read_text())
    assert config["task"]["name"] == "reasoning" and config["learner"]["agg"] == (
        "token-mean" if preset == "aggregation" else "seq-mean-token-mean"
    )
    records = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for step, rec in enumerate(records):
        hist = rec["staleness/hist"]  # samples per staleness 0..max: what the async report plots
        assert sum(hist) == 2 * 2 and len(hist) - 1 == rec["staleness/max"]
        if preset == "async":
            assert config["mode"] == "async" and config["buffer"]["fixed_delay"] is None
            assert rec["staleness/max"] <= staleness
        else:
            assert config["mode"] == "sync" and rec["staleness/max"] == min(step, staleness)
