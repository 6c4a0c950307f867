"""The study command end to end on the smoke grid: one results row per cell, plots, report, resumability."""

from __future__ import annotations

import csv
import json
import os

from asympo.study import STUDY_PRESETS, StudyConfig, cells_of, run_study


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


def test_unfinished_cell_is_rerun(tmp_path, tiny_model_dir):
    study = smoke(tiny_model_dir)
    study.objectives = study.objectives[:1]
    study.staleness = [0]
    out = tmp_path / "study"
    run_study(study, out, parallel=1, progress=False, report=False)
    (cell,) = list((out / "cells").iterdir())
    (cell / "summary.json").unlink()  # as if it had been killed before finishing
    run_study(study, out, parallel=1, progress=False, report=False)
    assert (cell / "summary.json").exists()
    assert len((cell / "metrics.jsonl").read_text().splitlines()) == 3
