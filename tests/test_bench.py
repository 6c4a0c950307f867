"""The bench scripts' own logic (never their timings): what they feed the code under test must be right,
or the ratios they print compare different work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_learner_step import make_batch, with_behavior_logp
from bench_weight_sync import flat_shared_snapshot
from benchlib import interleaved, random_model
from study_paired import paired_rows
from study_rerun import rerun_rows
from study_staleness import cell_staleness

from asympo.learner import collate
from asympo.logprobs import causal_lm_logprobs
from asympo.report.data import load_study


def test_recomputed_behavior_logp_lands_on_the_response_tokens():
    # The grpo+recompute variant must hand the learner exactly the log-probs of the response tokens, in
    # collate's alignment; a shift by one would make grpo's ratio != 1 and change its work.
    model = random_model(vocab=50, hidden_size=32, layers=1, max_positions=32)
    batch = make_batch(groups=2, group_size=2, prompt_len=3, response_len=5, vocab=50, seed=0)
    samples = [s for g in batch.groups for s in g.samples]
    ids, attn, mask, blp = collate(samples, 0)
    assert blp is None
    with torch.no_grad():
        logp, _ = causal_lm_logprobs(model, ids, attn)
    given = with_behavior_logp(batch, logp)
    _, _, mask2, blp2 = collate([s for g in given.groups for s in g.samples], 0)
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(blp2, logp * mask, rtol=0, atol=1e-6)
    assert all(len(s.behavior_logp) == 5 for g in given.groups for s in g.samples)


def test_make_batch_groups_have_a_learning_signal():
    batch = make_batch(groups=3, group_size=4, prompt_len=2, response_len=3, vocab=20, seed=1)
    for g in batch.groups:
        rewards = [s.reward for s in g.samples]
        assert min(rewards) < max(rewards)  # else the advantages are 0 and the step is not representative


def test_flat_shared_snapshot_is_a_shared_detached_copy():
    model = random_model(vocab=40, hidden_size=32, layers=1, max_positions=16)
    state = model.state_dict()
    snap = flat_shared_snapshot(state)
    assert snap.keys() == state.keys()
    for k, v in state.items():
        assert snap[k].is_shared()
        assert torch.equal(snap[k], v)
    with torch.no_grad():
        next(iter(model.parameters())).add_(1.0)  # the learner's next step must not reach the snapshot
    changed = [k for k, v in model.state_dict().items() if not torch.equal(snap[k], v)]
    assert changed


def test_interleaved_rotates_the_order_and_times_each_variant():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
    assert all(t >= 0 for v in times.values() for t in v)


def test_paired_rows_pair_seeds_and_measure_from_each_start(tmp_path):
    (tmp_path / "results.csv").write_text(
        "objective,staleness,seed,final_reward,final_pass1,collapsed,lr,start_pass1\n"
        "naive,0,0,0.5,0.40,False,,0.50\n"
        "naive,0,1,0.5,0.30,False,,0.40\n"
        "asympo,0,0,0.5,0.45,False,,0.50\n"
        "asympo,0,1,0.5,0.29,False,,0.40\n"
    )
    naive, asympo = paired_rows(load_study(tmp_path))
    assert naive["vs"] is None and naive["moved"] == pytest.approx((-0.1, 0.0))
    assert asympo["moved"] == pytest.approx((-0.08, 0.03))  # -0.05 and -0.11
    # Seed 0: +0.05, seed 1: -0.01 against naive at the same seed.
    assert asympo["vs"] == pytest.approx((0.02, 0.03)) and asympo["ahead"] == (1, 2)
    with pytest.raises(SystemExit, match="--reference"):
        paired_rows(load_study(tmp_path), "grpo")


def test_rerun_rows_count_identical_cells_and_measure_the_others(tmp_path):
    header = "objective,staleness,seed,final_reward,final_pass1,collapsed,lr\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "results.csv").write_text(
        header + "naive,4,0,0.5,0.40,False,\nnaive,4,1,0.5,0.30,False,\nnaive,16,0,0.5,0.20,False,\n"
        "naive,16,9,0.5,0.20,False,\n"
    )
    (tmp_path / "b" / "results.csv").write_text(
        header + "naive,4,0,0.5,0.40,False,\nnaive,4,1,0.6,0.30,False,\nnaive,16,0,0.5,0.25,False,\n"
    )
    d4, d16 = rerun_rows(load_study(tmp_path / "a"), load_study(tmp_path / "b"))
    # Seed 1 at d=4 kept its pass@1 but not its reward: not identical. Seed 9 is in one run only.
    assert (d4["staleness"], d4["cells"], d4["identical"], d4["max_abs"]) == (4, 2, 1, 0.0)
    assert (d16["cells"], d16["identical"]) == (1, 0)
    assert d16["mean_abs"] == pytest.approx(0.05) and d16["max_abs"] == pytest.approx(0.05)


def test_cell_staleness_against_a_fixed_delay_over_the_same_steps(tmp_path):
    (tmp_path / "cell.json").write_text('{"objective": "naive", "staleness": 2, "seed": 0}')
    steps = [[4], [0, 4], [2, 0, 2], [0, 0, 4]]  # staleness/hist per step; step 2 mixes versions
    (tmp_path / "metrics.jsonl").write_text(
        "".join(f'{{"step": {i}, "staleness/hist": {h}, "time/train": 1.0}}\n' for i, h in enumerate(steps))
    )
    stats = cell_staleness(tmp_path)
    assert stats["at_bound"] == pytest.approx(6 / 16) and stats["mean"] == pytest.approx(1.0)
    # A fixed delay of 2 over 4 steps: staleness 0, 1, 2, 2.
    assert stats["fixed_mean"] == pytest.approx(1.25) and stats["mixed"] == pytest.approx(0.25)
    assert stats["time/train"] == 1.0
