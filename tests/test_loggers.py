"""logging.backends: TensorBoard event files and a W&B offline run, read back; a missing package is a
clear error at start naming the pip extra."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from asympo.config import TrainConfig
from asympo.loggers import check_backends, make_loggers

EVENTS = [
    *(
        {"event": "step", "step": s, "reward/mean": 0.25 * s, "loss/total": 1.0 - s, "ok": True}
        for s in range(3)
    ),
    {"event": "step", "step": 3, "reward/mean": math.nan, "loss/total": -2.0},  # a NaN is left out
    {"event": "eval", "step": 2, "pass@1": 0.5, "n": 4},
]


def _log(backends: list[str], out: Path) -> None:
    cfg = TrainConfig.from_dict({"logging": {"backends": ["jsonl", *backends]}, "out": str(out)})
    loggers = make_loggers(cfg, out)
    assert len(loggers) == len(backends)
    for event in EVENTS:
        for logger in loggers:
            logger(event)
    for logger in loggers:
        logger.close()


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log(["tensorboard"], tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"reward/mean", "loss/total", "eval/pass@1", "eval/n"} <= set(scalars)
    assert "ok" not in scalars  # booleans are not plotted
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(0, 0.0), (1, 0.25), (2, 0.5)]
    assert [(e.step, e.value) for e in acc.Scalars("loss/total")] == [
        (0, 1.0),
        (1, 0.0),
        (2, -1.0),
        (3, -2.0),
    ]
    assert [(e.step, e.value) for e in acc.Scalars("eval/pass@1")] == [(2, 0.5)]


def _wandb_records(path: Path):
    """Records of a .wandb transaction log (LevelDB log format: 32 KiB blocks, 7-byte record headers)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _log(["wandb"], tmp_path)
    import wandb

    wandb.teardown()  # the wandb-core service writes the log asynchronously; this waits for it
    (log,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = [], {}
    for data in _wandb_records(log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind in ("run", "config"):
            update = record.run.config.update if kind == "run" else record.config.update
            config.update({i.key: json.loads(i.value_json) for i in update})
    assert [(row["_step"], row["reward/mean"]) for row in history if "reward/mean" in row] == [
        (0, 0.0),
        (1, 0.25),
        (2, 0.5),
    ]
    evals = [row for row in history if "eval/pass@1" in row]
    assert len(evals) == 1 and evals[0]["eval/pass@1"] == 0.5 and evals[0]["eval/step"] == 2
    assert config["learner"]["objective"] == "asympo"  # the run's config is attached


def test_trackio_run_reads_back(tmp_path):
    pytest.importorskip("trackio")
    import os
    import sqlite3
    import subprocess
    import sys

    # trackio reads TRACKIO_DIR when imported, so the run is logged from a fresh process.
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    code = f"from pathlib import Path; from tests.test_loggers import _log; _log(['trackio'], Path({str(tmp_path / 'run')!r}))"
    (tmp_path / "run").mkdir()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "trackio" / "asympo.db") as db:
        rows = [json.loads(m) for (m,) in db.execute("SELECT metrics FROM metrics ORDER BY id")]
        (config,) = [json.loads(c) for (c,) in db.execute("SELECT config FROM configs")]
    assert [r["reward/mean"] for r in rows if "reward/mean" in r] == [0.0, 0.25, 0.5]
    assert [r["eval/pass@1"] for r in rows if "eval/pass@1" in r] == [0.5]
    assert config["learner"]["objective"] == "asympo"


def test_a_missing_backend_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"needs the wandb package: pip install 'asympo\[wandb\]'"):
        check_backends(["jsonl", "wandb"])
    check_backends(["jsonl"])  # jsonl needs nothing
