"""End to end: `train` in sync and async mode, resume, and the CLI's errors before any work starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asympo.config import TrainConfig, apply_overrides
from asympo.presets import preset_dict


def run_config(out, model_dir, *extra):
    sets = [
        f"out={json.dumps(str(out))}",
        f"model.path={json.dumps(str(model_dir))}",
        "steps=3",
        "rollout.prompts_per_step=2",
        "rollout.group_size=3",
        "rollout.max_new_tokens=4",
        "eval.limit=4",
        "eval.n=1",
        "eval.every=2",
        "checkpoint_every=2",
        "report=false",
        'task.arithmetic={"n_train": 100, "n_test": 10}',
        *extra,
    ]
    return TrainConfig.from_dict(apply_overrides(preset_dict("demo"), sets))


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_sync_and_async_runs_share_the_metrics_schema(tmp_path, tiny_model_dir):
    from asympo.train import train

    keys = {}
    for mode in ("sync", "async"):
        cfg = run_config(tmp_path / mode, tiny_model_dir, f"mode={mode}", "buffer.max_staleness=1")
        res = train(cfg, progress=False)
        recs = lines(tmp_path / mode / "metrics.jsonl")
        assert [r["step"] for r in recs] == [0, 1, 2]
        assert all(r["staleness/max"] <= 1 for r in recs)
        keys[mode] = set(recs[-1])
        assert res.pass1_before is not None and res.pass1_after is not None
        assert (tmp_path / mode / "checkpoints" / "step_00000003").is_dir()
        assert [e["step"] for e in lines(tmp_path / mode / "eval.jsonl")] == [0, 2, 3]
    assert keys["sync"] == keys["async"]
    for k in (
        "step",
        "policy_version",
        "reward/mean",
        "reward/std",
        "staleness/mean",
        "staleness/max",
        "nll/pos",
        "nll/neg",
        "nll/ratio",
        "loss/pos",
        "loss/neg",
        "loss/total",
        "grad/norm",
        "policy/entropy",
        "time/generate",
        "time/train",
        "time/wait",
        "throughput/tokens_per_s",
        "batch/zero_adv_groups",
    ):
        assert k in keys["sync"], k


def test_resume_continues_the_same_run(tmp_path, tiny_model_dir):
    from asympo.checkpoint import latest_checkpoint
    from asympo.train import train

    cfg = run_config(tmp_path / "run", tiny_model_dir, "mode=sync", "steps=2")
    train(cfg, progress=False)
    state = json.loads(
        (latest_checkpoint(tmp_path / "run" / "checkpoints") / "trainer_state.json").read_text()
    )
    assert state["step"] == 2 and state["version"] == 2
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg, progress=False)
    cfg4 = run_config(tmp_path / "run", tiny_model_dir, "mode=sync", "steps=4")
    res = train(cfg4, resume=True, progress=False)
    recs = lines(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    assert [r["policy_version"] for r in recs] == [0, 1, 2, 3]
    assert res.pass1_before is None  # the resumed part does not re-evaluate its start
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from"] == 2


def test_reward_batch_timeout_reaches_every_reward_pool(tmp_path, tiny_model_dir, monkeypatch):
    """`rollout.reward_batch_timeout_s` is the deadline of the training rollouts' pool and the held-out
    evaluation's pool (each pool records its config; it grades inline so that no process is started)."""
    import dataclasses

    from asympo.rewards import pool as pool_module

    configs = []

    class RecordingPool(pool_module.RewardPool):
        def __init__(self, reward, config):
            configs.append(config)
            super().__init__(reward, dataclasses.replace(config, num_workers=0))

    monkeypatch.setattr(pool_module, "RewardPool", RecordingPool)
    from asympo.train import train

    sets = ("mode=sync", "steps=1", "rollout.reward_workers=1", "rollout.reward_batch_timeout_s=7.5")
    train(run_config(tmp_path / "run", tiny_model_dir, *sets), progress=False)
    assert len(configs) == 2  # the rollout worker's and the held-out evaluation's
    assert [(c.num_workers, c.batch_timeout_s) for c in configs] == [(1, 7.5), (1, 7.5)]
    assert TrainConfig().rollout.reward_batch_timeout_s == pool_module.RewardPoolConfig().batch_timeout_s
    cfg = run_config(tmp_path / "none", tiny_model_dir, "rollout.reward_batch_timeout_s=null")
    assert cfg.rollout.reward_batch_timeout_s is None
    with pytest.raises(
        ValueError, match="rollout.reward_batch_timeout_s must be a finite number > 0 or null"
    ):
        run_config(tmp_path / "bad", tiny_model_dir, "rollout.reward_batch_timeout_s=0")


def cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "asympo.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--preset", "nope", "--out", "x"], "unknown preset 'nope'; valid presets: demo, gsm8k"),
        (["train", "--preset", "demo", "--objective", "bogus", "--out", "x"], "unknown objective 'bogus'"),
        (
            [
                "train",
                "--preset",
                "demo",
                "--objective",
                "grpo",
                "--set",
                "rollout.engine=openai",
                "--out",
                "x",
            ],
            "needs behavior log-probs, which the openai engine does not return",
        ),
        (["train", "--preset", "demo", "--model", "/no/such/model", "--out", "OUT"], "does not exist"),
        (["train", "--out", "OUT", "--resume"], "holds no run"),
        (["eval", "--model", "/no/such/model", "--dataset", "gsm8k"], "does not exist"),
        (["eval", "--dataset", "gsm8k"], "exactly one of --model PATH (with --dataset) or --run DIR"),
        (["eval", "--model", "embedded"], "--model needs --dataset"),
        (["eval", "--run", "OUT"], "is not a run directory (no config.json)"),
        (
            ["eval", "--model", "embedded", "--dataset", "arith", "--device", "gpu"],
            "'gpu' is not a torch device",
        ),
        # Before the embedded model's warm-up, which can take minutes.
        (["eval", "--model", "embedded", "--dataset", "arith", "--n", "0"], "--n must be >= 1, got 0"),
        (
            ["eval", "--run", "OUT", "--temperature", "-1"],
            "--temperature must be >= 0 (0 = greedy), got -1.0",
        ),
    ],
)
def test_cli_errors_are_clear_and_early(args, message, tmp_path):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_eval_of_a_run_uses_its_checkpoint_and_task(tmp_path, tiny_model_dir):
    from asympo.train import train

    cfg = run_config(
        tmp_path / "run", tiny_model_dir, "mode=sync", 'task.arithmetic={"n_train": 100, "n_test": 7}'
    )
    train(cfg, progress=False)
    r = cli("eval", "--run", str(tmp_path / "run"), "--limit", "0")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["model"].endswith("step_00000003") and res["dataset"] == "arithmetic:test"
    assert res["problems"] == 7  # the run's own n_test, not the default arithmetic task
    assert res["n"] == 1  # the run's eval.n


@pytest.mark.slow
def test_short_async_run_raises_reward(tmp_path):
    """The embedded task from the cached SFT start (held-out pass@1 ~0.3): 100 steps of asynchronous
    ASymPO with real staleness must clearly raise held-out pass@1."""
    from asympo.train import train

    cfg = TrainConfig.from_dict(
        apply_overrides(
            preset_dict("demo"),
            [
                f"out={json.dumps(str(tmp_path / 'run'))}",
                "steps=100",
                "eval.every=0",
                "report=false",
                "checkpoint_every=0",
            ],
        )
    )
    res = train(cfg, progress=False)
    recs = lines(tmp_path / "run" / "metrics.jsonl")
    assert max(r["staleness/max"] for r in recs) >= 2  # really asynchronous
    assert res.pass1_after > res.pass1_before + 0.08, (res.pass1_before, res.pass1_after)
