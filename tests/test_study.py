"""The study command end to end on the smoke grid: one results row per cell, plots, report, resumability."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from asympo.study import (
    STUDY_PRESETS,
    ObjectiveSpec,
    StudyConfig,
    cell_config,
    cells_of,
    final_mean,
    find_reusable,
    parse_objective_spec,
    run_order,
    run_study,
    warn_if_busy,
)


def smoke(model_dir) -> StudyConfig:
    base = STUDY_PRESETS["smoke"]
    return StudyConfig(
        objectives=base.objectives,
        staleness=base.staleness,
        seeds=base.seeds,
        overrides=[
            *base.overrides,
            f"model.path={json.dumps(str(model_dir))}",
            "steps=3",
            'task.arithmetic={"n_train": 100, "n_test": 10}',
            "rollout.max_new_tokens=4",
        ],
    )


def test_cells_run_seed_by_seed():
    study = STUDY_PRESETS["reasoning"]
    order = sorted(cells_of(study), key=lambda c: run_order(study, c))
    seeds = [c.seed for c in order]
    assert seeds == sorted(seeds, key=study.seeds.index)
    per_seed = len(study.objectives) * len(study.staleness)
    assert {(c.spec.label, c.staleness) for c in order[:per_seed]} == {
        (o.label, d) for o in study.objectives for d in study.staleness
    }


def test_smoke_study_end_to_end(tmp_path, tiny_model_dir):
    study = smoke(tiny_model_dir)
    out = tmp_path / "study"
    path = run_study(study, out, parallel=2, progress=False)
    rows = list(csv.DictReader(path.open()))
    cells = cells_of(study)
    assert len(rows) == len(cells) == 4
    assert {(r["objective"], int(r["staleness"]), int(r["seed"])) for r in rows} == {
        (c.spec.label, c.staleness, c.seed) for c in cells
    }
    for r in rows:
        assert 0.0 <= float(r["final_pass1"]) <= 1.0 and 0.0 <= float(r["final_reward"]) <= 1.0
        assert r["collapsed"] in ("True", "False")
        cell = (
            out
            / "cells"
            / next(
                c.name for c in cells if c.spec.label == r["objective"] and c.staleness == int(r["staleness"])
            )
        )
        recs = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
        d = int(r["staleness"])
        assert [rec["staleness/max"] for rec in recs] == [min(v, d) for v in range(3)]  # exact fixed delay
    assert (out / "report.html").stat().st_size > 1000
    plots = list((out / "plots").glob("*.png"))
    assert any("staleness" in p.name for p in plots) and len(plots) >= 3

    # A re-run skips the finished cells: their files are untouched.
    before = {p: os.stat(p).st_mtime_ns for p in (out / "cells").glob("*/summary.json")}
    run_study(study, out, parallel=2, progress=False, report=False)
    assert {p: os.stat(p).st_mtime_ns for p in before} == before


def test_unfinished_cell_is_rerun(tmp_path, tiny_model_dir, monkeypatch, caplog):
    study = smoke(tiny_model_dir)
    study.objectives = study.objectives[:1]
    study.staleness = [0]
    out = tmp_path / "study"
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))  # a machine busy with other work
    run_study(study, out, parallel=1, progress=False, report=False)
    assert "already busy (1-minute load average 64.0" in caplog.text
    caplog.clear()
    run_study(study, out, parallel=1, progress=False, report=False)  # nothing left to run: no warning
    assert "busy" not in caplog.text
    (cell,) = list((out / "cells").iterdir())
    (cell / "summary.json").unlink()  # as if it had been killed before finishing
    run_study(study, out, parallel=1, progress=False, report=False)
    assert (cell / "summary.json").exists()
    assert len((cell / "metrics.jsonl").read_text().splitlines()) == 3
    assert "already busy" in caplog.text


def test_a_busy_machine_is_named_before_the_cells_start(monkeypatch, caplog):
    load = [0.9]
    monkeypatch.setattr(os, "getloadavg", lambda: (load[0], 0.0, 0.0))
    assert warn_if_busy(2, "fixed_delay") == 0.9 and not caplog.text  # under half a runnable process per CPU
    load[0] = 1.0
    warn_if_busy(2, "fixed_delay")
    assert "load average 1.0 on 2 usable CPUs" in caplog.text and "wall_s will not compare" in caplog.text
    caplog.clear()
    warn_if_busy(2, "async")
    assert "staleness an async cell sees depends on timing" in caplog.text

    def no_load_average():
        raise OSError("no /proc/loadavg")

    monkeypatch.setattr(os, "getloadavg", no_load_average)
    caplog.clear()
    assert warn_if_busy(2, "async") is None and not caplog.text


def test_identical_cells_of_another_study_are_reused_not_rerun(tmp_path, tiny_model_dir):
    first = smoke(tiny_model_dir)
    first.objectives, first.staleness = first.objectives[:1], [2]  # naive at d=2
    run_study(first, tmp_path / "a", parallel=1, progress=False, report=False)
    (source,) = list((tmp_path / "a" / "cells").iterdir())
    # The same cell, named differently (an explicit default) and beside a cell no other study has.
    second = smoke(tiny_model_dir)
    second.objectives = [
        ObjectiveSpec("naive", {}, learner={"agg": "seq-mean-token-mean"}),
        ObjectiveSpec("naive", {}, learner={"agg": "token-mean"}),
    ]
    second.staleness = [2]
    path = run_study(second, tmp_path / "b", parallel=1, progress=False, report=False, reuse=[tmp_path / "a"])
    rows = {r["objective"]: r for r in csv.DictReader(path.open())}
    same, other = cells_of(second)
    reused = json.loads((tmp_path / "b" / "cells" / same.name / "cell.json").read_text())
    ran = json.loads((tmp_path / "b" / "cells" / other.name / "cell.json").read_text())
    assert reused["reused_from"] == str(source) and "reused_from" not in ran
    (a_row,) = csv.DictReader((tmp_path / "a" / "results.csv").open())
    assert rows[same.spec.label]["final_reward"] == a_row["final_reward"]
    # A real-async cell is never taken from elsewhere: it is not deterministic.
    async_cfg = cell_config(second, cells_of(second)[0], tmp_path / "b")
    async_cfg.mode = "async"
    assert find_reusable(async_cfg, [tmp_path / "a"]) is None


def test_objective_specs_parse_names_and_hyperparameters():
    assert parse_objective_spec("naive") == ObjectiveSpec("naive", {})
    spec = parse_objective_spec("spo:neg_scale=0.2")
    assert spec.hparams == {"neg_scale": 0.2} and spec.label == "spo(neg_scale=0.2)"
    assert parse_objective_spec("asympo: rescale=batch_mean, eps=1e-3").hparams == {
        "rescale": "batch_mean",
        "eps": 0.001,
    }
    for bad in (":eps=1", "spo:neg_scale", "spo:=3"):
        with pytest.raises(ValueError, match="objective spec"):
            parse_objective_spec(bad)


def test_study_cli_grid_overrides_are_validated_before_any_work(tmp_path):
    def study(*args):
        return subprocess.run(
            [sys.executable, "-m", "asympo", "study", "--out", str(tmp_path / "s"), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = study("--objectives", "naive", "spo:nope=1", "--staleness", "0")
    assert r.returncode == 2 and "nope not valid for 'spo'" in r.stderr, r.stderr
    r = study("--objectives", "spo:neg_scale=", "--staleness", "0")  # an empty value: text, not a number
    assert r.returncode == 2 and "spo: neg_scale must be a number, got ''" in r.stderr, r.stderr
    for args, message in [
        (["--seeds", "0", "0"], "study seeds must be distinct, got [0, 0]"),
        (["--staleness", "4", "4"], "study staleness must be distinct, got [4, 4]"),
        (["--parallel", "0"], "parallel (cells run at once) must be an int >= 1, got 0"),
        (["--steps", "0"], "steps must be an int >= 1, got 0"),  # 0 is not "not given"
    ]:
        r = study("--preset", "smoke", *args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s" / "cells").exists()  # no cell started
    r = study("--objectives", "bogus", "--staleness", "0")
    assert r.returncode == 2 and "bogus" in r.stderr and "Traceback" not in r.stderr
    r = study("--staleness", "-1")
    assert r.returncode == 2 and "staleness levels must be ints >= 0" in r.stderr
    assert not (tmp_path / "s" / "cells").exists()


@pytest.mark.slow
def test_smoke_preset_from_the_command_line(tmp_path):
    """The real `smoke` preset (SFT start, embedded task) through the CLI, as a user runs it."""
    out = tmp_path / "smoke"
    cmd = [sys.executable, "-m", "asympo", "study", "--preset", "smoke", "--out", str(out), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(cells_of(STUDY_PRESETS["smoke"])) == 4
    for row in rows:
        assert 0.0 < float(row["start_pass1"]) <= 1.0 and 0.0 <= float(row["final_pass1"]) <= 1.0
    assert (out / "report.html").exists() and (out / "plots" / "final_vs_staleness.png").exists()
    assert "| naive |" in (out / "summary.md").read_text()
    before = {p: os.stat(p).st_mtime_ns for p in (out / "cells").glob("*/summary.json")}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert {p: os.stat(p).st_mtime_ns for p in before} == before and len(before) == 4


def test_final_mean_is_the_mean_of_the_last_tenth_of_steps_skipping_gaps():
    assert final_mean([0.0] * 20 + [1.0, 3.0]) == 2.0  # 22 steps: the last 2
    assert final_mean([5.0, 7.0]) == 7.0  # fewer than 10 steps: the last one
    assert final_mean([0.0] * 8 + [None, 4.0]) == 4.0  # null (a batch without the key) is skipped
    assert math.isnan(final_mean([1.0] * 9 + [float("nan")])) and math.isnan(final_mean([]))
