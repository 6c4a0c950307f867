"""Training through an OpenAI-compatible server: `rollout.serve=true` (asympo serve started for the run),
an external `asympo serve` with the disk sync, config checks, and one-line errors from `asympo train`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from asympo.config import TrainConfig, apply_overrides
from asympo.presets import preset_dict
from asympo.serve import ServerProcess, free_port

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_config(out, model_dir, *extra):
    sets = [
        f"out={json.dumps(str(out))}",
        f"model.path={json.dumps(str(model_dir))}",
        "steps=4",
        "mode=async",
        "buffer.max_staleness=2",
        "rollout.engine=openai",
        "rollout.prompts_per_step=2",
        "rollout.group_size=3",
        "rollout.max_new_tokens=4",
        "eval.limit=4",
        "eval.n=1",
        "eval.every=0",
        "checkpoint_every=0",
        "report=false",
        'task.arithmetic={"n_train": 100, "n_test": 10}',
        *extra,
    ]
    return TrainConfig.from_dict(apply_overrides(preset_dict("demo"), sets))


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def health(root: str) -> dict | None:
    try:
        with urllib.request.urlopen(root + "/health", timeout=5) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, ConnectionError):
        return None


def test_train_starts_asympo_serve_syncs_every_version_and_stops_it(tmp_path, tiny_model_dir):
    from asympo.train import train

    cfg = run_config(tmp_path / "run", tiny_model_dir, "rollout.serve=true")
    train(cfg, progress=False)
    recs = lines(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    assert max(r["staleness/max"] for r in recs) >= 1  # really asynchronous, through the server
    assert all(r["staleness/max"] <= 2 for r in recs)
    assert all("time/weight_sync" in r for r in recs)
    log = (tmp_path / "run" / "serve.log").read_text()
    root = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", log).group(1)
    assert health(root) is None  # the server was stopped with the run


def test_external_asympo_serve_with_disk_sync_and_model_path_notifier(tmp_path, tiny_model_dir):
    from asympo.train import train

    weights = tmp_path / "run" / "weights"
    weights.mkdir(parents=True)
    with ServerProcess(
        str(tiny_model_dir), weights_root=str(weights), log_path=tmp_path / "serve.log"
    ) as url:
        kwargs = json.dumps({"base_url": url})
        cfg = run_config(
            tmp_path / "run",
            tiny_model_dir,
            f"rollout.engine_kwargs={kwargs}",
            "rollout.weight_sync=disk",
            "rollout.weight_notifier=model-path",
        )
        train(cfg, progress=False)
        served = health(url[: -len("/v1")])
        kept = sorted(p.name for p in weights.iterdir())
        # Old versions are pruned once the server serves a newer one; no temporary directory is left.
        assert len(kept) == 1 and re.fullmatch(r"v\d+", kept[0]), kept
        assert served["weight_version"] == int(kept[0][1:]) >= 1  # the server loaded what was written
    recs = lines(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"serve": True}, "set rollout.engine=openai"),
        ({"engine": "openai"}, "needs a server"),
        ({"engine": "openai", "serve": True, "weight_sync": "none"}, "frozen"),
        ({"engine": "openai", "serve": True, "weight_sync": "disk"}, "needs rollout.weight_notifier"),
        ({"engine": "openai", "serve": True, "weight_sync": "nccl"}, "weight_sync must be one of"),
        ({"engine": "openai", "serve": True, "num_workers": 2}, "num_workers=1"),
        (
            {"engine": "openai", "serve": True, "engine_kwargs": {"base_url": "http://x"}},
            "drop engine_kwargs",
        ),
    ],
)
def test_server_config_errors_name_the_fix(fields, match):
    d = preset_dict("demo")
    d["rollout"] = {**d["rollout"], **fields}
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(d)


def test_unreachable_server_is_a_one_line_error_from_asympo_train(tmp_path, tiny_model_dir):
    kwargs = json.dumps({"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m", "max_retries": 0})
    cmd = [sys.executable, "-m", "asympo", "train", "--preset", "demo", "--out", str(tmp_path / "run")]
    cmd += ["--no-progress", "--set", f"model.path={tiny_model_dir}", "--set", "rollout.engine=openai"]
    cmd += ["--set", f"rollout.engine_kwargs={kwargs}", "--set", "eval.limit=2", "--set", "eval.n=1"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "cannot reach the server" in proc.stderr


@pytest.mark.slow
def test_demo_through_asympo_serve_learns(tmp_path):
    """The README command: the demo through `asympo serve` (async, max_staleness 4) must raise held-out
    pass@1 like the torch engine does, with real staleness."""
    cmd = [sys.executable, "-m", "asympo", "train", "--preset", "demo", "--steps", "30"]
    cmd += ["--out", str(tmp_path / "run"), "--no-progress", "--set", "rollout.engine=openai"]
    cmd += ["--set", "rollout.serve=true", "--set", "eval.every=0", "--set", "report=false"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = lines(tmp_path / "run" / "metrics.jsonl")
    assert max(r["staleness/max"] for r in recs) >= 1
    evals = lines(tmp_path / "run" / "eval.jsonl")
    assert evals[-1]["pass@1"] > evals[0]["pass@1"], evals


def test_a_group_without_token_ids_is_dropped_with_a_reason_and_replaced():
    from asympo.data.problem import Problem
    from asympo.runtime.backend import BackendBase
    from asympo.runtime.buffer import BufferConfig
    from asympo.runtime.records import RolloutGroup, Sample
    from asympo.runtime.scheduler import PromptScheduler
    from asympo.runtime.staleness import make_policy

    problems = [Problem(f"p{i}", f"{i}+1=", str(i + 1)) for i in range(10)]
    sched = PromptScheduler(problems, prompts_per_step=2, group_size=2, policy=make_policy(BufferConfig()))
    backend = BackendBase(sched)
    tasks = sched.issue(0)

    def group(task, prompt_ids, response_ids):
        samples = [Sample(prompt_ids, response_ids, "x", 1.0, "stop", 0) for _ in range(2)]
        return RolloutGroup(task.group_id, task.problem.id, "1", task.batch_index, 0, samples)

    backend._arrived(group(tasks[0], [1], []))  # a text-only server, no tokenizer: no response ids
    backend._arrived(group(tasks[1], [1], [2]))
    assert backend.metrics()["dropped/no_token_ids"] == 1.0 and len(backend.buffer) == 1
    replacement = sched.issue(0)  # a fresh prompt for the same step takes the dropped one's place
    assert [t.batch_index for t in replacement] == [tasks[0].batch_index]
    backend._arrived(group(replacement[0], [1], [3]))
    batch = backend._take(0, 2, timeout=0)  # the drop is reported with the batch (groups.jsonl lists it)
    assert [(d.group_id, d.reason) for d in batch.dropped] == [(tasks[0].group_id, "no_token_ids")]
    assert sorted(g.group_id for g in batch.groups) == sorted([tasks[1].group_id, replacement[0].group_id])
