"""The multi-rank learner's building blocks: FSDP2 on CPU with gloo, 2 ranks (docs/design.md, "Scale")."""

from __future__ import annotations

import json

import pytest
import torch

from asympo.distributed import (
    SINGLE,
    DistContext,
    ParallelConfig,
    RankExit,
    RankFailed,
    describe_failures,
    launch,
    load_sharded,
)
from tests import dist_fns


def test_parallel_config_validates():
    assert not ParallelConfig().enabled
    assert ParallelConfig(kind="fsdp2", procs=2).enabled
    with pytest.raises(ValueError, match="needs kind='fsdp2'"):
        ParallelConfig(procs=2)
    with pytest.raises(ValueError, match="learner.parallel.kind"):
        ParallelConfig(kind="ddp")
    with pytest.raises(ValueError, match="learner.parallel.procs"):
        ParallelConfig(kind="fsdp2", procs=0)


@pytest.mark.parametrize("n, world", [(5, 2), (4, 2), (1, 2), (7, 3), (0, 2)])
def test_shards_cover_the_batch_once(n, world):
    slices = [DistContext(r, world).shard(n) for r in range(world)]
    covered = [i for s in slices for i in range(n)[s]]
    assert covered == list(range(n))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1


def test_single_process_context_is_identity():
    t = torch.tensor([1.0, 2.0])
    assert SINGLE.reduce_sum(t) is t and SINGLE.broadcast({"a": 1}) == {"a": 1}
    assert SINGLE.shard(5) == slice(0, 5)


@pytest.mark.slow  # spawns 2 ranks (~30 s on 2 cores)
def test_two_ranks_equal_one_process_and_checkpoint_round_trips(tmp_path):
    ref = dist_fns.reference_step()
    got = launch(dist_fns.sharded_step, (str(tmp_path / "ckpt"),), 2)
    assert got["world"] == 2
    assert got["norm"] == pytest.approx(ref["norm"], rel=1e-5)
    for k, v in ref["weights"].items():
        torch.testing.assert_close(got["weights"][k], v, atol=1e-5, rtol=1e-5)
    assert got["reload_err"] == 0.0 and got["opt_err"] == 0.0
    # A different world size is refused with the number to resume with.
    model = dist_fns.tiny_qwen2(seed=0)
    with pytest.raises(ValueError, match="procs=2"):
        load_sharded(tmp_path / "ckpt", model, torch.optim.AdamW(model.parameters()), SINGLE)


RESET = "RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection reset by peer"


@pytest.mark.parametrize("first", [[1], [0, 1], [1, 0]])
def test_the_rank_that_died_is_named_not_the_one_that_lost_its_peer(first):
    # Whichever dead rank the OS reports first, rank 0's "connection reset" does not make it the cause.
    exits = [RankExit(0, 1, RESET), RankExit(1, 3)]
    msg = describe_failures(exits, first)
    assert msg.startswith("learner rank 1 failed (exit code 3)")
    assert msg.endswith("then rank 0 lost its peer (exit code 1)")


def test_failure_message_names_signals_exceptions_and_stopped_ranks():
    exits = [RankExit(0, -15, stopped=True), RankExit(1, 0), RankExit(2, -9)]
    msg = describe_failures(exits, [2])
    assert msg == (
        "learner rank 2 failed (killed by SIGKILL, often the out-of-memory killer); "
        "then rank 0 was stopped by the launcher"
    )
    # Two ranks failing on their own are both named, the first found first; a lone peer loss is still named.
    exits = [RankExit(0, 1, "ValueError: bad batch"), RankExit(1, 1, "OSError: disk full")]
    assert describe_failures(exits, [1, 0]).startswith(
        "learner rank 1 failed (exit code 1): OSError: disk full; learner rank 0"
    )
    assert (
        describe_failures([RankExit(0, 1, RESET), RankExit(1, 0)], [0])
        == f"learner rank 0 failed (exit code 1): {RESET}"
    )


@pytest.mark.slow
def test_a_dead_rank_is_named():
    with pytest.raises(RankFailed, match=r"rank 1 failed \(exit code 3\).*resume"):
        launch(dist_fns.failing_rank, (), 2, resume_hint="resume from checkpoints/step_x")


# Uneven shares (5 and 4 responses) and micro-batches of 2 (3 passes on rank 0, 2 on rank 1: rank 1 runs an
# idle pass); seq-mean-token-mean needs the global response count, token-mean the global token count.
STEP_CFGS = [
    dict(objective="asympo", agg="seq-mean-token-mean", lr=1e-2, micro_batch_size=2, grad_split_every=0),
    dict(
        objective="asympo",
        hparams={"rescale": "batch_mean"},
        agg="token-mean",
        lr=1e-2,
        max_grad_norm=0.05,
        grad_split_every=0,
    ),
]


@pytest.mark.slow  # spawns 2 ranks
def test_two_rank_learner_step_equals_one_process():
    ref = dist_fns.learner_steps(STEP_CFGS, dist=False)
    got = launch(dist_fns.learner_steps, (STEP_CFGS,), 2)
    for cfg, r, g in zip(STEP_CFGS, ref, got):
        for key in ("loss/total", "nll/pos", "nll/neg", "grad/norm", "grad/clipped", "batch/responses"):
            assert g["metrics"][key] == pytest.approx(r["metrics"][key], rel=1e-5, abs=1e-7), (cfg, key)
        moved = max(
            float((r["weights"][k] - v).abs().max())
            for k, v in dist_fns.tiny_qwen2(seed=0).state_dict().items()
        )
        assert moved > 1e-3  # the step changed the weights, so equal weights mean equal updates
        for k, v in r["weights"].items():
            torch.testing.assert_close(g["weights"][k], v, atol=1e-5, rtol=1e-5)


def test_sharded_learner_refuses_kl_and_fp16():
    from asympo.learner import LearnerConfig

    with pytest.raises(ValueError, match="kl_coef > 0 is not supported with learner.parallel.kind=fsdp2"):
        LearnerConfig(kl_coef=0.1, parallel={"kind": "fsdp2", "procs": 2})
    with pytest.raises(ValueError, match="fp16-mixed is not supported"):
        LearnerConfig(precision="fp16-mixed", parallel={"kind": "fsdp2", "procs": 2})
    assert LearnerConfig(parallel={"kind": "fsdp2", "procs": 2}).parallel.procs == 2


@pytest.mark.slow  # three short 2-rank trainings (~2 min on 2 cores)
def test_train_with_two_ranks_checkpoints_resumes_and_names_a_dead_rank(
    tmp_path, tiny_model_dir, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from asympo.checkpoint import latest_checkpoint
    from asympo.train import KILL_ENV, train
    from tests.test_train import lines, run_config

    par = 'learner.parallel={"kind": "fsdp2", "procs": 2}'
    out = tmp_path / "run"
    res = train(run_config(out, tiny_model_dir, "mode=sync", "steps=3", par), progress=False)
    recs = lines(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2] and res.steps == 3
    assert all(r["time/weight_gather"] >= 0 and r["batch/responses"] == 6 for r in recs)
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt.name == "step_00000003"
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert "sharded.json" in manifest and sum(f.startswith("sharded/") for f in manifest) == 2
    # The consolidated export is a plain HF model (asympo eval --run and from_pretrained read it).
    AutoModelForCausalLM.from_pretrained(ckpt)

    # Another number of ranks is refused before any rank starts, with the number to use.
    with pytest.raises(ValueError, match="written by 2 learner rank.*procs.: 2"):
        train(run_config(out, tiny_model_dir, "mode=sync", "steps=5"), resume=True, progress=False)

    # Rank 1 dies at step 4 (after checkpoint step_00000004): the error names it and that checkpoint.
    monkeypatch.setenv(KILL_ENV, "1:4")
    cfg5 = run_config(out, tiny_model_dir, "mode=sync", "steps=5", par)
    with pytest.raises(RankFailed, match=r"rank 1 failed \(exit code 17\).*step_00000004 with --resume"):
        train(cfg5, resume=True, progress=False)
    monkeypatch.delenv(KILL_ENV)
    res = train(cfg5, resume=True, progress=False)
    recs = lines(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    assert [r["policy_version"] for r in recs] == [0, 1, 2, 3, 4]
    assert latest_checkpoint(out / "checkpoints").name == "step_00000005"


def test_callbacks_need_one_learner_process(tmp_path, tiny_model_dir):
    from asympo.train import train
    from tests.test_train import run_config

    cfg = run_config(tmp_path / "run", tiny_model_dir, 'learner.parallel={"kind": "fsdp2", "procs": 2}')
    with pytest.raises(ValueError, match="callbacks.*procs=1"):
        train(cfg, callbacks=[print], progress=False)
