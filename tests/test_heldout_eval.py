"""In-training held-out evaluation off the learner's critical path: graded through the reward pool with
timeouts (a hanging grader costs the timeout, not the run), on a snapshot of the weights in the rollout
dtype, in a background thread in async mode."""

from __future__ import annotations

import json
import time

import pytest

from asympo.config import TrainConfig, apply_overrides
from asympo.presets import preset_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GRADER = "tests.hanging_grader:hang_on_listed_references"


def _config(out, model_dir, *extra) -> TrainConfig:
    sets = [
        f"out={json.dumps(str(out))}",
        f"model.path={json.dumps(str(model_dir))}",
        "steps=3",
        "rollout.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=4",
        "eval.limit=3",
        "eval.n=1",
        "checkpoint_every=0",
        "report=false",
        'task.arithmetic={"n_train": 40, "n_test": 6}',
        f"task.reward={GRADER}",
        "rollout.reward_workers=1",
        "rollout.reward_timeout_s=1.0",
        *extra,
    ]
    return TrainConfig.from_dict(apply_overrides(preset_dict("demo"), sets))


def _hang_on_eval_references(tmp_path, monkeypatch, cfg: TrainConfig) -> set[str]:
    """Make the grader hang on the held-out references that no training problem shares."""
    from asympo.train import load_task

    train_refs = {p.reference for p in load_task(cfg.task, cfg.task.train_split)}
    eval_refs = {p.reference for p in load_task(cfg.task, cfg.task.eval_split)[: cfg.eval.limit]} - train_refs
    assert eval_refs, "the split has no held-out-only reference to hang on"
    (tmp_path / "hang.txt").write_text(" ".join(sorted(eval_refs)))
    monkeypatch.setenv("ASYMPO_TEST_HANG_REFS", str(tmp_path / "hang.txt"))
    return eval_refs


def test_a_hanging_grader_costs_the_timeout_not_the_evaluation(tmp_path, monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asympo.train import HeldOutEval, load_task

    cfg = _config(tmp_path / "o", tiny_model_dir)
    hung = _hang_on_eval_references(tmp_path, monkeypatch, cfg)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    problems = load_task(cfg.task, cfg.task.eval_split)
    evaluator = HeldOutEval(cfg, model, tok, problems)
    try:
        assert evaluator.engine.model is not model  # its own copy: the learner may step meanwhile
        start = time.monotonic()
        res = evaluator(model)
        assert time.monotonic() - start < 600  # a stall lasts the grader's 3600 s
    finally:
        evaluator.close()
    expected = sum(p.reference in hung for p in problems[: cfg.eval.limit])
    assert res["reward/timeouts"] == expected and res["n_problems"] == cfg.eval.limit


def test_eval_snapshot_is_isolated_from_the_learner(tiny_model_dir):
    """The background evaluation generates with the weights of its step, whatever the learner does next."""
    import torch
    from transformers import AutoModelForCausalLM

    from asympo.train import HeldOutEval

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    snap = HeldOutEval.snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    name, value = next(iter(model.state_dict().items()))
    assert torch.equal(snap[name] + 1.0, value)


@pytest.mark.slow
def test_async_run_with_a_hanging_eval_grader_finishes_with_every_eval_row(
    tmp_path, monkeypatch, tiny_model_dir
):
    """Async mode, an evaluation after every step in the background, a grader that hangs on held-out
    answers: the run finishes, eval.jsonl has a row per evaluation with the timeouts counted, and the
    TensorBoard logger mirrors metrics and evals."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from asympo.train import train

    cfg = _config(
        tmp_path / "run",
        tiny_model_dir,
        "mode=async",
        "eval.every=1",
        'logging.backends=["jsonl", "tensorboard"]',
    )
    _hang_on_eval_references(tmp_path, monkeypatch, cfg)
    start = time.monotonic()
    train(cfg, progress=False)
    assert time.monotonic() - start < 900  # four evaluations stalled on a 3600 s grader would take hours
    rows = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["reward/timeouts"] >= 1 for r in rows)
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/pass@1")] == [0, 1, 2, 3]
    assert [e.step for e in acc.Scalars("reward/mean")] == [0, 1, 2]
