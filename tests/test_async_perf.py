"""What keeps the async mode's learner-side overhead small: weight versions published as one shared
block per dtype, a dispatcher that blocks instead of polling, and the learner's thread setting."""

from __future__ import annotations

import os
import time
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
from safetensors.torch import save_file

from asympo.config import TrainConfig
from asympo.engines.base import SamplingParams
from asympo.learner import LearnerConfig
from asympo.runtime.backend import WorkerSpec
from asympo.runtime.buffer import BufferConfig
from asympo.runtime.local import ProcessBackend
from asympo.runtime.scheduler import PromptScheduler
from asympo.runtime.staleness import make_policy
from asympo.runtime.sync import SharedState, snapshot
from asympo.train import learner_threads

from .test_backends import PROBLEMS


def mixed_state() -> dict[str, torch.Tensor]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = dict(model.state_dict())
    state["steps"] = torch.arange(5)  # a second dtype gets a block of its own
    state["t"] = torch.randn(4, 3).t()  # non-contiguous source
    return state


def storages(state) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in state.values()}


def test_shared_snapshot_is_one_block_per_dtype_and_a_detached_copy():
    state = mixed_state()
    snap = snapshot(state, share_memory=True)
    assert isinstance(snap, SharedState)
    assert list(snap) == list(state)
    assert all(torch.equal(snap[k], v) and snap[k].dtype == v.dtype for k, v in state.items())
    assert all(t.is_shared() for t in snap.values())
    assert len(storages(snap)) == 2  # float32 and int64, not one segment per tensor
    state["0.weight"].add_(1.0)  # the learner's next step must not reach a published version
    assert not torch.equal(snap["0.weight"], state["0.weight"])


def test_shared_snapshot_pickles_as_blocks_and_rebuilds_the_views():
    state = mixed_state()
    snap = snapshot(state, share_memory=True)
    # What the process backend's weight queues do: torch's reductions share the blocks by handle.
    back = ForkingPickler.loads(ForkingPickler.dumps(snap))
    assert isinstance(back, SharedState) and list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert len(storages(back)) == 2
    snap["0.bias"].fill_(7.0)  # the same memory, not a copy
    assert torch.equal(back["0.bias"], torch.full((4,), 7.0))


def test_independent_copies_can_be_checkpointed(tmp_path):
    snap = snapshot(mixed_state(), share_memory=True)
    # Checkpoints get copies: safetensors versions we allow (>= 0.4) may refuse tensors sharing a storage.
    copies = snap.independent()
    save_file(copies, tmp_path / "w.safetensors")
    assert len(storages(copies)) == len(copies)


def process_backend(model_dir, buffer: BufferConfig | None = None) -> ProcessBackend:
    spec = WorkerSpec(
        engine="torch",
        model_path=str(model_dir),
        reward="arithmetic",
        sampling=SamplingParams(temperature=1.0, max_new_tokens=4),
    )
    policy = make_policy(buffer or BufferConfig(max_staleness=2), "async")
    sched = PromptScheduler(PROBLEMS, prompts_per_step=2, group_size=2, policy=policy, seed=1)
    return ProcessBackend(spec, sched, batch_timeout_s=60)


def test_history_returns_plain_copies_of_the_published_versions(tiny_model_dir):
    # Not started: no worker process, only the bookkeeping. fixed_delay keeps the older version.
    backend = process_backend(tiny_model_dir, BufferConfig(max_staleness=1, fixed_delay=1))
    try:
        state = mixed_state()
        backend.publish(state, 0)
        backend.publish(state, 1)
        history = backend.history()
        assert list(history) == [0]
        assert not isinstance(history[0], SharedState)
        assert all(torch.equal(history[0][k], state[k]) for k in state)
    finally:
        backend.close()


def test_dispatcher_wait_wakes_on_the_learner_and_drains_the_wake_pipe(tiny_model_dir):
    backend = process_backend(tiny_model_dir)
    try:
        assert wait([backend._wake_r], timeout=0) == []
        backend.publish(mixed_state(), 0)  # a new version may let more prompts be issued: wake
        backend._wake()
        assert wait([backend._wake_r], timeout=0) == [backend._wake_r]
        backend._wait_for_event()  # returns at once (nothing else to wait on) and drains every byte
        assert wait([backend._wake_r], timeout=0) == []
    finally:
        backend.close()
    assert backend._wake_r == -1
    backend._wake()  # after close: a no-op, not an error on a closed descriptor


def test_dispatcher_blocks_between_events(tiny_model_dir):
    """A started backend with nothing to do sleeps in `wait` (the old one polled every 20 ms)."""
    backend = process_backend(tiny_model_dir)
    calls = []
    backend._collect = lambda _orig=backend._collect: (calls.append(1), _orig())[1]
    backend.start(mixed_state(), 0)
    try:
        batch = backend.next_batch(0, 2)  # the worker is up and has generated
        assert len(batch.groups) == 2
        # Steps 0-2 may be issued at version 0 (max_staleness 2); the worker may still be generating
        # them, then nothing happens until the learner publishes. Count the dispatcher's rounds meanwhile.
        before = len(calls)
        time.sleep(2.0)
        idle = len(calls) - before
        # Two results' arrivals plus the 1 s safety-net wake-ups; 20 ms polling made ~100 (fewer only
        # under load, so this bound cannot fail because the machine is slow).
        assert idle <= 8, idle
    finally:
        backend.close()


@pytest.mark.parametrize(
    "mode,threads,omp,expected",
    [
        ("async", 0, None, max(1, len(os.sched_getaffinity(0)) - 1)),
        ("async", 0, "3", None),  # torch already follows OMP_NUM_THREADS
        ("sync", 0, None, None),
        ("async", 2, None, 2),
        ("sync", 1, "3", 1),  # an explicit setting wins
    ],
)
def test_learner_threads(monkeypatch, mode, threads, omp, expected):
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    cfg = TrainConfig.from_dict({"mode": mode, "learner": {"threads": threads}})
    assert learner_threads(cfg) == expected


def test_learner_threads_is_validated():
    with pytest.raises(ValueError, match="learner.threads must be an int >= 0"):
        LearnerConfig(threads=-1)
