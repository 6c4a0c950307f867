"""Tests for asympo.report: loading run/study directories, plots, the HTML page and the CLI."""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import re
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from asympo.report import ReportError, build_report, load_run, load_study, main, write_report
from asympo.report.data import align, auto_window, nan_mean_std, smooth, summarize
from asympo.report.plots import SPO_DEFAULT_NEG_SCALE, run_figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------- synthetic directories


def write_run(
    path: Path,
    *,
    steps: int = 60,
    delay: int = 4,
    seed: int = 0,
    final_pass1: float = 0.6,
    truncated_tail: bool = True,
    eval_every: int = 20,
    objective: str = "asympo",
    diagnostics: bool = False,
) -> dict:
    """A plausible run directory: rising reward, diverging NLLs, per-step staleness histograms, nulls and
    NaNs, a user-objective metric, and (optionally) a half-written last line. With `diagnostics`, also
    the response-length, clipping and per-response weight keys of newer runs (`<objective>/neg_weight`...;
    without, the run looks like one logged before they existed). Returns what it wrote."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    t = np.arange(steps)
    reward = 0.2 + 0.5 / (1 + np.exp(-(t - steps / 2) / (steps / 10))) + rng.normal(0, 0.03, steps)
    nll_pos = 1.0 - 0.5 * t / steps + rng.normal(0, 0.02, steps)
    nll_neg = 1.0 + 1.5 * t / steps + rng.normal(0, 0.02, steps)
    rows, hists = [], []
    for s in t:
        hist = rng.multinomial(64, np.full(delay + 1, 1 / (delay + 1))).tolist()
        hists.append(hist)
        no_pos = s % 13 == 5  # a batch without positive advantages: nll/pos is undefined
        row = {
            "step": int(s),
            "policy_version": int(s),
            "reward/mean": float(reward[s]),
            "reward/std": 0.3,
            "staleness/mean": float(np.dot(np.arange(delay + 1), hist) / 64),
            "staleness/max": int(max(i for i, c in enumerate(hist) if c)),
            "staleness/hist": hist,
            "nll/pos": None if no_pos else float(nll_pos[s]),
            "nll/neg": float(nll_neg[s]),
            "nll/ratio": math.nan if no_pos else float(nll_neg[s] / nll_pos[s]),
            "loss/pos": float(-0.3 * nll_pos[s]),
            "loss/neg": float(0.3 * nll_neg[s]),
            "loss/total": float(0.3 * (nll_neg[s] - nll_pos[s])),
            "grad/norm": float(1 + t[s] / 10),
            "grad/norm_pos": float(0.5 + rng.random()),
            "grad/norm_neg": float(0.5 + t[s] / 5),
            "policy/entropy": float(2.0 - t[s] / steps),
            "time/generate": 0.8 + 0.1 * rng.random(),
            "time/train": 0.5 + 0.1 * rng.random(),
            "time/wait": 0.05 * rng.random(),
            "throughput/tokens_per_s": 900 + 50 * rng.random(),
            "batch/zero_adv_groups": int(rng.integers(0, 4)),
            "myloss/scale": float(np.exp(-t[s] / 30)),  # a user objective's own metric
        }
        if diagnostics:
            row.update(
                {
                    "len/pos": 20.0 + s % 3,
                    "len/neg": 30.0 + s % 5,
                    "nll/len_corr": 0.5 - s / steps,
                    "grad/clipped": float(s % 4 == 0),
                    f"{objective}/neg_weight": 0.2 if objective == "spo" else 0.5 + 0.01 * s,
                    f"{objective}/weight_cv": 0.3,
                    f"{objective}/weight_min": 0.5,
                    f"{objective}/weight_max": 2.0 + s,
                }
            )
        rows.append(row)
    lines = [json.dumps(r) for r in rows]
    text = "\n".join(lines) + "\n"
    if truncated_tail:
        text += json.dumps({**rows[-1], "step": steps})[:57]  # the writer died mid-line
    (path / "metrics.jsonl").write_text(text)
    evals = [
        {
            "step": int(s),
            "pass@1": float(0.2 + (final_pass1 - 0.2) * s / (steps - 1)),
            "pass@k": {"8": 0.9},
            "n": 64,
        }
        for s in [*range(0, steps, eval_every), steps - 1]
    ]
    (path / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    config = {
        "objective": {"name": objective, "eps": 1e-6},
        "optim": {"lr": 1e-4},
        "learner": {"objective": objective, "hparams": {"neg_scale": 0.2} if objective == "spo" else {},
                    "max_grad_norm": 1.0},
        "seed": seed,
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    (path / "summary.json").write_text(
        json.dumps({"pass1_before": 0.2, "pass1_after": final_pass1, "wall_s": 12.5})
    )
    return {"rows": rows, "hists": hists, "evals": evals, "reward": reward}


OBJECTIVES = ["naive", "spo(neg_scale=0.2)", "asympo"]
STALENESS = [0, 8]
SEEDS = [0, 1, 2]


def final_pass1_of(objective: str, staleness: int, seed: int, lr: float = 1e-4) -> float:
    base = {"naive": 0.6, "spo(neg_scale=0.2)": 0.55, "asympo": 0.62}[objective]
    drop = {"naive": 0.05, "spo(neg_scale=0.2)": 0.01, "asympo": 0.005}[objective] * staleness
    return round(base - drop + 0.03 * seed - 0.1 * abs(math.log10(lr) + 4), 4)


def write_study(
    path: Path, *, cells: bool = True, lrs: tuple[float, ...] = (1e-4,), steps: int = 24
) -> list[dict]:
    """A study directory: results.csv (with start_pass1 and lr columns) and, optionally, one cell per row."""
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for objective in OBJECTIVES:
        for staleness in STALENESS:
            for lr in lrs:
                for seed in SEEDS:
                    pass1 = final_pass1_of(objective, staleness, seed, lr)
                    rows.append(
                        {
                            "objective": objective,
                            "staleness": staleness,
                            "seed": seed,
                            "final_reward": round(pass1 + 0.05, 4),
                            "final_pass1": pass1,
                            "collapsed": pass1 < 0.25,
                            "lr": lr,
                            "start_pass1": 0.4,
                        }
                    )
                    if cells:
                        name = f"{objective}_d{staleness}_lr{lr:g}_s{seed}"
                        cell = path / "cells" / name
                        write_run(
                            cell,
                            steps=steps,
                            delay=staleness,
                            seed=seed,
                            final_pass1=pass1,
                            eval_every=8,
                            truncated_tail=False,
                            objective=objective.partition("(")[0],
                            diagnostics=objective != "naive",  # naive's cells predate the diagnostics
                        )
                        info = {"objective": objective, "staleness": staleness, "seed": seed, "lr": lr}
                        (cell / "cell.json").write_text(json.dumps(info))
    with open(path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def assert_valid_png(path: Path, min_bytes: int = 8_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk always comes first
    assert width >= 300 and height >= 200, (path, width, height)
    assert len(data) >= min_bytes, (path, len(data))
    pixels = imread(path)
    assert pixels.std() > 0.05, f"{path} looks blank"


# ------------------------------------------------------------------------------------------------ numerics


def test_smooth_matches_a_loop_reference_and_skips_nans():
    rng = np.random.default_rng(1)
    y = rng.normal(size=37)
    y[[0, 5, 6, 7, 30]] = np.nan
    for window in (1, 3, 5, 9):
        got = smooth(y, window)
        for i in range(len(y)):
            half = min(window // 2, i, len(y) - 1 - i)
            neighbourhood = y[i - half : i + half + 1]
            neighbourhood = neighbourhood[np.isfinite(neighbourhood)]
            if len(neighbourhood) == 0:
                assert np.isnan(got[i])  # e.g. steps 5-7: no finite value within reach
            else:
                assert got[i] == pytest.approx(neighbourhood.mean(), abs=1e-12)
    assert np.isnan(smooth(np.array([np.nan, np.nan, np.nan]), 3)).all()
    np.testing.assert_allclose(smooth(np.arange(10.0), 5), np.arange(10.0))  # a trend stays straight


def test_auto_window_is_odd_and_grows_with_the_run():
    assert [auto_window(n) for n in (0, 10, 40, 60, 200)] == [1, 1, 3, 3, 11]


def test_align_and_mean_over_seeds_of_unequal_length():
    steps, matrix = align(
        [(np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0])), (np.array([0, 1]), np.array([3.0, 4.0]))]
    )
    assert steps.tolist() == [0, 1, 2]
    mean, std = nan_mean_std(matrix)
    np.testing.assert_allclose(mean, [2.0, 3.0, 3.0])
    np.testing.assert_allclose(std, [1.0, 1.0, 0.0])
    s = summarize([0.5, 0.7, np.nan])
    assert (s.n, s.missing) == (2, 1)
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(np.std([0.5, 0.7], ddof=1))


# ----------------------------------------------------------------------------------------------------- load


def test_load_run_reads_complete_lines_and_skips_a_half_written_tail(tmp_path):
    written = write_run(tmp_path / "run", steps=40)
    run = load_run(tmp_path / "run")
    assert len(run) == 40 and run.steps.tolist() == list(range(40))
    assert any("half-written" in w for w in run.warnings)
    np.testing.assert_allclose(run.series("reward/mean"), written["reward"], rtol=0, atol=1e-12)
    nll_pos = run.series("nll/pos")
    nulls = [r["step"] for r in written["rows"] if r["nll/pos"] is None]
    assert nulls and np.isnan(nll_pos[nulls]).all() and np.isfinite(np.delete(nll_pos, nulls)).all()
    assert np.isnan(run.series("nll/ratio")[nulls]).all()  # NaN in the JSON, not null
    np.testing.assert_array_equal(run.staleness_hist, np.array(written["hists"]))
    assert "myloss/scale" in run.scalars and run.has("myloss/scale")
    assert not run.has("kl/behavior") and np.isnan(run.series("kl/behavior")).all()
    assert [e.step for e in run.evals] == [e["step"] for e in written["evals"]]
    assert run.evals[-1].pass1 == pytest.approx(0.6) and run.evals[0].pass_k == {"pass@8": 0.9}
    assert run.evals[0].n == 64
    assert run.config["optim"]["lr"] == 1e-4 and run.summary["wall_s"] == 12.5


def test_load_run_keeps_the_last_of_steps_logged_twice_by_a_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [
        {"step": 0, "reward/mean": 0.1},
        {"step": 1, "reward/mean": 0.2},
        {"step": 2, "reward/mean": 0.3},
        {"step": 1, "reward/mean": 0.25},
        {"step": 2, "reward/mean": 0.35},
        {"step": 3, "reward/mean": 0.4},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    run = load_run(run_dir)
    assert run.steps.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(run.series("reward/mean"), [0.1, 0.25, 0.35, 0.4])
    assert any("more than once" in w for w in run.warnings)
    assert run.staleness_hist is None and run.evals == [] and run.config == {}


def test_a_malformed_line_before_the_end_is_an_error_naming_file_and_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, oops\n{"step": 2}\n')
    with pytest.raises(ReportError, match=r"metrics\.jsonl:2: malformed line"):
        load_run(run_dir)
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    (run_dir / "eval.jsonl").write_text('{"step": 0}\n{"step": 5, "pass@1": 0.5}\n')
    with pytest.raises(ReportError, match=r"eval\.jsonl:1: needs numeric 'step' and 'pass@1'"):
        load_run(run_dir)


def test_directories_that_are_not_runs_or_studies_are_clear_errors(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ReportError, match="not a directory"):
        load_run(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match=r"neither a run directory.*it is empty"):
        write_report(empty)
    with pytest.raises(ReportError, match=r"not a run directory: it has no metrics\.jsonl"):
        load_run(tmp_path)
    with pytest.raises(ReportError, match=r"not a study directory.*found: .*file\.txt"):
        load_study(tmp_path)


def test_results_csv_needs_the_documented_columns(tmp_path):
    (tmp_path / "results.csv").write_text("objective,staleness,seed,final_pass1\nnaive,0,0,0.5\n")
    with pytest.raises(ReportError, match=r"missing column\(s\) \['final_reward', 'collapsed'\]"):
        load_study(tmp_path)


def test_load_study_reads_rows_cells_and_a_half_written_last_row(tmp_path):
    rows = write_study(tmp_path, steps=12)
    with open(tmp_path / "results.csv", "a") as f:
        f.write("asympo,16,0,0.5")  # a row still being written
    (tmp_path / "cells" / "writing").mkdir()
    (tmp_path / "cells" / "writing" / "cell.json").write_text('{"objective": "asy')
    (tmp_path / "cells" / "queued").mkdir()
    (tmp_path / "cells" / "queued" / "cell.json").write_text(
        '{"objective": "grpo", "staleness": 4, "seed": 0}'
    )
    study = load_study(tmp_path)
    assert any("writing/cell.json: unreadable" in w for w in study.warnings)
    queued = [c for c in study.cells if c.name == "queued"]
    assert len(queued) == 1 and queued[0].run is None and queued[0].lr is None
    study.cells.remove(queued[0])
    assert len(study.rows) == len(rows) and any("half-written" in w for w in study.warnings)
    assert (
        study.objectives == OBJECTIVES
        and study.staleness_levels == STALENESS
        and study.result_lrs == study.cell_lrs == [1e-4]
    )
    first = study.rows[0]
    assert (first.objective, first.staleness, first.seed, first.collapsed) == ("naive", 0, 0, False)
    assert first.final_pass1 == rows[0]["final_pass1"] and first.extra == {"start_pass1": 0.4}
    assert len(study.cells) == len(rows) and all(c.run is not None and len(c.run) == 12 for c in study.cells)


def test_study_without_results_csv_is_rebuilt_from_its_cells(tmp_path):
    write_study(tmp_path, steps=30)
    (tmp_path / "results.csv").unlink()
    study = load_study(tmp_path)
    assert study.rows_from_cells and any("no results.csv" in w for w in study.warnings)
    by_key = {(r.objective, r.staleness, r.seed): r for r in study.rows}
    assert len(by_key) == len(OBJECTIVES) * len(STALENESS) * len(SEEDS)
    for (objective, staleness, seed), row in by_key.items():
        assert row.final_pass1 == pytest.approx(final_pass1_of(objective, staleness, seed))  # summary.json
        assert row.collapsed is None
    # final_reward is results.csv's definition (asympo.study.final_mean): the mean of the last 10% = 3 steps.
    cell = next(c for c in study.cells if (c.objective, c.staleness, c.seed) == ("asympo", 8, 2))
    lines = (cell.run.path / "metrics.jsonl").read_text().splitlines()
    tail = [json.loads(x)["reward/mean"] for x in lines[-3:]]
    assert by_key[("asympo", 8, 2)].final_reward == pytest.approx(sum(tail) / 3, abs=1e-12)


# ------------------------------------------------------------------------------------------ run report


@pytest.fixture(scope="module")
def run_report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    written = write_run(run_dir, steps=60)
    return run_dir, written, build_report(run_dir)


def test_run_report_writes_every_plot_as_a_real_png(run_report):
    run_dir, _, report = run_report
    assert report.kind == "run" and report.html == run_dir / "report.html"
    names = {p.path.name for p in report.plots}
    assert names == {
        "reward.png",
        "nll.png",
        "staleness.png",
        "loss.png",
        "grad.png",
        "time.png",
        "other_metrics.png",
    }
    for plot in report.plots:
        assert plot.path.parent == run_dir / "plots"
        assert_valid_png(plot.path)
    assert "myloss/scale" in next(p for p in report.plots if p.path.name == "other_metrics.png").caption


def test_run_report_html_embeds_the_plots_and_shows_the_numbers(run_report):
    _, written, report = run_report
    html = report.html.read_text()
    assert html.count('src="data:image/png;base64,') == len(report.plots)
    tail = written["reward"][-6:]  # the final 10% of 60 steps
    assert f"{tail.mean():.4g} (mean of last 6 steps)" in html
    last_eval = written["evals"][-1]
    assert (
        f'<td class="key">{last_eval["step"]}</td>'
        f"<td>{last_eval['pass@1']:.4g}</td><td>0.9</td><td>64</td>" in html
    )
    staleness = np.array(written["hists"]).sum(axis=0)
    assert f"{np.dot(np.arange(5), staleness) / staleness.sum():.2f} / 4" in html
    nll_pos = [r["nll/pos"] for r in written["rows"] if r["nll/pos"] is not None]
    row = re.search(r'<td class="key">nll/pos</td>(.*?)</tr>', html).group(1)
    assert row.endswith(f"<td>{len(nll_pos)}/60</td>") and f"<td>{min(nll_pos):.4g}</td>" in row
    assert '<td class="key">objective.eps</td><td class="key">1e-06</td>' in html
    assert "half-written" in html and "summary: wall_s" in html


def test_run_report_plots_the_length_and_weight_diagnostics_of_newer_runs(tmp_path):
    run_dir = tmp_path / "run"
    written = write_run(run_dir, steps=40, objective="spo", diagnostics=True)
    report = build_report(run_dir)
    names = [p.path.name for p in report.plots]
    assert names[:6] == ["reward.png", "nll.png", "staleness.png", "lengths.png", "weights.png", "loss.png"]
    for plot in report.plots:
        assert_valid_png(plot.path)
    others = next(p for p in report.plots if p.path.name == "other_metrics.png").caption
    assert "spo/neg_weight" not in others and "len/pos" not in others and "grad/clipped" in others
    # spo's effective negative weight is its neg_scale: the plot draws the configured one as a reference.
    weights = next(f for f in run_figures(load_run(run_dir), 1) if f.stem == "weights")
    assert (0.2, "spo neg_scale (0.2)") in weights.panels[0].hlines
    clipped = sum(r["grad/clipped"] for r in written["rows"])
    assert f"<td>{clipped / 40:.0%} ({clipped:.0f} of 40)</td>" in report.html.read_text()


def test_spo_reference_line_defaults_to_spos_own_default():
    torch_objectives = pytest.importorskip("asympo.objectives")
    default = inspect.signature(torch_objectives.spo).parameters["neg_scale"].default
    assert SPO_DEFAULT_NEG_SCALE == default


def test_minimal_run_without_histograms_links_its_plots(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [
        {"step": s, "reward/mean": s / 10, "staleness/mean": 1.0, "staleness/max": 2, "policy_version": s}
        for s in range(5)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build_report(run_dir, embed=False)
    assert [p.path.name for p in report.plots] == ["reward.png", "staleness.png", "other_metrics.png"]
    html = report.html.read_text()
    assert 'src="plots/reward.png"' in html and "base64" not in html
    for plot in report.plots:
        assert_valid_png(plot.path, min_bytes=5_000)


def test_a_run_that_has_not_finished_a_step_still_gets_a_page(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "rew')
    (run_dir / "eval.jsonl").write_text('{"step": 0, "pass@1": 0.25}\n')
    report = build_report(run_dir)
    assert [p.path.name for p in report.plots] == ["reward.png"]  # the step-0 evaluation alone
    html = report.html.read_text()
    assert "has no complete step yet" in html and "<td>0.25 (step 0) → 0.25 (step 0)</td>" in html


# ---------------------------------------------------------------------------------------- study report


@pytest.fixture(scope="module")
def study_report(tmp_path_factory):
    study_dir = tmp_path_factory.mktemp("report") / "study"
    rows = write_study(study_dir)
    return study_dir, rows, build_report(study_dir)


def test_study_report_plots(study_report):
    study_dir, _, report = study_report
    assert report.kind == "study" and report.html == study_dir / "report.html"
    names = [p.path.name for p in report.plots]
    assert names[:2] == ["final_vs_staleness.png", "curves_pass1.png"]
    for name in (
        "curves_reward.png",
        "curves_nll_ratio.png",
        "curves_grad_norm_neg.png",
        "curves_len_pos.png",
    ):
        assert name in names
    assert "curves_neg_weight.png" in names and "curves_entropy.png" in names
    assert "final_vs_lr.png" not in names  # a single learning rate
    for plot in report.plots:
        assert_valid_png(plot.path)


def test_study_report_tables_hold_the_means_over_seeds(study_report):
    _, rows, report = study_report
    html = report.html.read_text()
    for objective in OBJECTIVES:
        for staleness in STALENESS:
            group = [r for r in rows if r["objective"] == objective and r["staleness"] == staleness]
            pass1 = np.array([r["final_pass1"] for r in group])
            collapsed = sum(r["collapsed"] for r in group)
            expected = f"{pass1.mean():.3f} ± {pass1.std(ddof=1):.3f}"
            assert f"<td>{expected} ({collapsed}/3 collapsed)</td>" in html, (objective, staleness)
            reward = np.array([r["final_reward"] for r in group])
            row = f'<td class="key">{objective}</td><td>{staleness}</td><td>3</td><td>{expected}</td><td>{reward.mean():.3f} ± {reward.std(ddof=1):.3f}</td><td>{collapsed}/3</td><td>0.400 ± 0.000</td>'
            assert row in html, (objective, staleness)
    assert "(2/3 collapsed)" in html  # naive at staleness 8: two seeds below 0.25
    assert html.count('<tr><td class="key">naive</td>') >= 2
    assert (
        "Config keys that vary across cells" in html and '<td class="key">seed</td><td>0, 1, 2</td>' in html
    )


def test_study_summary_markdown_holds_the_same_numbers(study_report):
    study_dir, rows, _ = study_report
    md = (study_dir / "summary.md").read_text()
    assert "| objective | staleness 0 | staleness 8 |" in md
    for objective in OBJECTIVES:
        cells = []
        for staleness in STALENESS:
            group = [r for r in rows if r["objective"] == objective and r["staleness"] == staleness]
            pass1 = np.array([r["final_pass1"] for r in group])
            collapsed = sum(r["collapsed"] for r in group)
            cells.append(f"{pass1.mean():.3f} ± {pass1.std(ddof=1):.3f} ({collapsed}/3)")
        assert f"| {objective} | {cells[0]} | {cells[1]} |" in md, objective
    assert "## start_pass1" in md and "| naive | 0.400 ± 0.000 | 0.400 ± 0.000 |" in md
    # From the cells' own logs: the best evaluation (the last, as pass@1 rises in write_run) and the
    # end-of-training diagnostics (entropy 2 - t/24 over the last 10% = 2 of 24 steps: 2 - 22.5/24, the
    # tail asympo.study.final_mean uses for results.csv too).
    best = md.split("## Best held-out pass@1", 1)[1]
    group = [max(0.2, r["final_pass1"]) for r in rows if r["objective"] == "asympo" and r["staleness"] == 8]
    assert f"{np.mean(group):.3f} ± {np.std(group, ddof=1):.3f} |" in best.split("##")[0]
    entropy = md.split("## policy/entropy at the end of training", 1)[1].split("##")[0]
    assert "| naive | 1.062 ± 0.000 | 1.062 ± 0.000 |" in entropy
    # Newer diagnostics: naive's cells predate them and show "—"; the objective-namespaced weights of
    # spo and asympo share one table. Over the last 2 of 24 steps asympo's weight is 0.5 + 0.01 * 22.5.
    weight = md.split("## Effective negative weight (asympo/neg_weight, spo/neg_weight) at the end", 1)[1]
    weight = weight.split("##")[0]
    assert (
        "| naive | — | — |" in weight and "| spo(neg_scale=0.2) | 0.200 ± 0.000 | 0.200 ± 0.000 |" in weight
    )
    assert "| asympo | 0.725 ± 0.000 | 0.725 ± 0.000 |" in weight
    clipped = md.split("## Share of steps with gradient clipping active", 1)[1].split("##")[0]
    assert (
        "| naive | — | — |" in clipped and "| asympo | 0.250 ± 0.000 | 0.250 ± 0.000 |" in clipped
    )  # 6 of 24
    for key in ("len/pos", "len/neg", "nll/len_corr"):
        assert f"## {key} at the end of training" in md


def test_study_report_html_has_the_same_diagnostics(study_report):
    _, _, report = study_report
    html = report.html.read_text()
    diagnostics = html.split('<h2 id="diagnostics">', 1)[1].split("<h2", 1)[0]
    assert "<h3>Share of steps with gradient clipping active" in diagnostics
    assert '<td class="key">asympo</td><td>0.725 ± 0.000</td><td>0.725 ± 0.000</td>' in diagnostics


def test_no_plot_section_or_table_goes_missing(run_report, study_report):
    # A guard for refactors: every PNG, page section, table and summary.md heading of the fixtures, in order.
    def outline(html: str) -> tuple[list[str], list[str], list[str]]:
        return (
            re.findall(r'<h2 id="[^"]*">([^<]*)</h2>', html),
            re.findall(r'<table id="table-([^"]*)"', html),
            re.findall(r'<figure id="([^"]*)"', html),
        )

    _, _, run = run_report
    plots = ["reward", "nll", "staleness", "loss", "grad", "time", "other_metrics"]
    assert [p.path.stem for p in run.plots] == plots
    assert outline(run.html.read_text()) == (
        ["Summary", "Plots", "Held-out evaluations", "Metrics", "Config"],
        ["evals", "metrics", "config"],
        plots,
    )
    study_dir, _, study = study_report
    curves = ["pass1", "reward", "nll_pos", "nll_neg", "nll_ratio", "entropy", "len_pos", "len_neg"]
    curves += ["nll_len_corr", "neg_weight", "grad_norm", "grad_norm_pos", "grad_norm_neg"]
    plots = ["final_vs_staleness", *(f"curves_{c}" for c in curves)]
    assert [p.path.stem for p in study.plots] == plots
    html = study.html.read_text()
    sections = ["Final pass@1", "Results by group", "Diagnostics", "Plots", "All results", "Cells"]
    assert outline(html) == (sections, ["pivot", "groups", "results", "cells"], plots)
    end = "at the end of training (mean of the last 10% of steps)"
    diagnostics = [
        "Best held-out pass@1 at any evaluation (start included)",
        "Share of steps with gradient clipping active (mean of grad/clipped over the run)",
        *(
            f"{key} {end}"
            for key in ("nll/pos", "nll/neg", "grad/norm_pos", "grad/norm_neg", "policy/entropy")
        ),
        *(f"{key} {end}" for key in ("len/pos", "len/neg", "nll/len_corr")),
        f"Effective negative weight (asympo/neg_weight, spo/neg_weight) {end}",
        f"Spread of the per-response weights (asympo/weight_cv, spo/weight_cv) {end}",
    ]
    assert re.findall(r"<h3>([^<]*)</h3>", html) == diagnostics
    headings = re.findall(r"^## (.*)$", (study_dir / "summary.md").read_text(), flags=re.M)
    first = [
        "Final held-out pass@1 (collapsed seeds / seeds)",
        "Final training reward (mean of the last 10% of steps)",
    ]
    assert headings == [*first, "start_pass1", *diagnostics]


def test_learning_rate_sweep_gets_its_own_plot_and_groups(tmp_path):
    rows = write_study(tmp_path, cells=False, lrs=(3e-5, 1e-4, 3e-4))
    report = build_report(tmp_path)
    assert [p.path.name for p in report.plots] == ["final_vs_staleness.png", "final_vs_lr.png"]
    for plot in report.plots:
        assert_valid_png(plot.path)
    html = report.html.read_text()
    group = np.array(
        [
            r["final_pass1"]
            for r in rows
            if r["objective"] == "asympo" and r["staleness"] == 8 and r["lr"] == 3e-4
        ]
    )
    assert (
        f'<td class="key">asympo</td><td>0.0003</td><td>8</td><td>3</td><td>{group.mean():.3f} ± {group.std(ddof=1):.3f}</td>'
        in html
    )
    assert '<td class="key">asympo lr=0.0003</td>' in html


# ----------------------------------------------------------------------------------------------------- CLI


def test_main_prints_the_report_and_plots_and_fails_cleanly(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "reward/mean": 0.5}) + "\n")
    assert main([str(run_dir), "--window", "3"]) == 0
    out = capsys.readouterr().out
    assert f"run report: {run_dir / 'report.html'}" in out and str(run_dir / "plots" / "reward.png") in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert main([str(run_dir), "--window", "0"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "study directory" in capsys.readouterr().out


def test_report_files_are_written_with_the_ordinary_umask_mode(tmp_path):
    # An atomic write must not leave the page private (mkstemp's 0600): a web server or a colleague reads it.
    write_study(tmp_path, cells=False)
    old = os.umask(0o022)
    try:
        report = build_report(tmp_path)
    finally:
        os.umask(old)
    for path in (report.html, tmp_path / "summary.md"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_the_report_reads_study_definitions_without_importing_torch():
    # report/ takes RESULT_COLUMNS and final_mean from asympo.study, which must stay cheap to import:
    # `asympo report` on a laptop should not load torch for a page of tables and PNGs.
    code = "import sys, asympo.report; print('torch' in sys.modules)"
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}
    )
    assert out.stdout.split() == ["False"], out.stderr
