"""Every backend (inline, processes, Ray) against the same protocol tests, with a real tiny model."""

from __future__ import annotations

import os
import time

import pytest
import torch

from asympo.data.arithmetic import ArithmeticConfig, arithmetic_problems
from asympo.engines.base import SamplingParams
from asympo.runtime.backend import WorkerSpec
from asympo.runtime.buffer import BufferConfig
from asympo.runtime.local import InlineBackend, ProcessBackend
from asympo.runtime.scheduler import PromptScheduler
from asympo.runtime.staleness import make_policy

PROBLEMS = arithmetic_problems(ArithmeticConfig(n_train=200, n_test=10), "train")
N, G = 2, 3


def make(kind, model_dir, buffer, *, logprobs=False, reward_workers=0, max_restarts=3):
    spec = WorkerSpec(
        engine="torch",
        model_path=str(model_dir),
        reward="arithmetic",
        sampling=SamplingParams(temperature=1.0, max_new_tokens=4, return_logprobs=logprobs),
        reward_workers=reward_workers,
    )
    policy = make_policy(buffer, "sync" if kind == "inline" else "async")
    sched = PromptScheduler(PROBLEMS, prompts_per_step=N, group_size=G, policy=policy, seed=1)
    if kind == "inline":
        return InlineBackend(spec, sched)
    kw = dict(num_workers=1, batch_timeout_s=120, max_restarts=max_restarts)
    if kind == "ray":
        from asympo.runtime.ray import RayBackend

        return RayBackend(spec, sched, **kw)
    return ProcessBackend(spec, sched, **kw)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for this module's Ray cases, started only if one of them runs."""
    state = {}
    yield state
    if state.get("started"):
        import ray

        ray.shutdown()


@pytest.fixture(params=["inline", "process", "ray"])
def kind(request, ray_cluster):
    if request.param == "ray" and not ray_cluster:
        pytest.importorskip("ray")
        from asympo.runtime.ray import init_ray

        ray_cluster["started"] = init_ray(num_cpus=2)
    return request.param


def weights(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def drive(backend, state, steps, start=0):
    """Stand in for the learner: take a batch, 'train', publish a new version."""
    batches = []
    if start == 0:
        backend.start(state, 0)
    for v in range(start, start + steps):
        b = backend.next_batch(v, N)
        batches.append(b)
        state = {k: t + 1e-3 for k, t in state.items()}  # versions really differ
        backend.publish(state, v + 1)
    return batches


def test_fixed_delay_is_exact(kind, tiny_model_dir):
    backend = make(kind, tiny_model_dir, BufferConfig(fixed_delay=2), logprobs=True)
    try:
        batches = drive(backend, weights(tiny_model_dir), 5)
    finally:
        backend.close()
    for v, b in enumerate(batches):
        assert len(b.groups) == N and all(len(g.samples) == G for g in b.groups)
        assert set(b.staleness) == {min(v, 2)}
        for g in b.groups:
            for s in g.samples:
                assert s.behavior_logp is not None and len(s.behavior_logp) == len(s.response_ids)
                assert s.reward in (0.0, 1.0) and s.policy_version == g.policy_version


def test_wait_policy_bound(kind, tiny_model_dir):
    backend = make(kind, tiny_model_dir, BufferConfig(max_staleness=1, policy="wait"))
    try:
        batches = drive(backend, weights(tiny_model_dir), 5)
        m = backend.metrics()
    finally:
        backend.close()
    assert all(0 <= s <= 1 for b in batches for s in b.staleness)
    if kind == "inline":
        assert all(s == 0 for b in batches for s in b.staleness)  # generate, then train
    assert m["workers/restarts"] == 0 and m.get("dropped/stale", 0) == 0


def test_state_dict_keeps_every_prompt(kind, tiny_model_dir):
    backend = make(kind, tiny_model_dir, BufferConfig(max_staleness=2, policy="wait"))
    state = weights(tiny_model_dir)
    try:
        trained = drive(backend, state, 2)
        time.sleep(0.5)
        saved = backend.state_dict()
    finally:
        backend.close()
    seen = {g.group_id for b in trained for g in b.groups}
    buffered = {g["group_id"] for g in saved["buffer"]["groups"]}
    requeued = {r["group_id"] for r in saved["scheduler"]["requeue"]}
    issued = set(range(saved["scheduler"]["next_group_id"]))
    assert seen | buffered | requeued == issued  # nothing lost
    assert not (seen & buffered) and not (buffered & requeued)
    resumed = make(kind, tiny_model_dir, BufferConfig(max_staleness=2, policy="wait"))
    resumed.load_state_dict(saved)
    try:
        resumed.start(state, 2)
        b = resumed.next_batch(2, N)
    finally:
        resumed.close()
    ids, carried = {g.group_id for g in b.groups}, buffered | requeued
    fresh = {i for i in ids if i >= saved["scheduler"]["next_group_id"]}
    assert ids <= carried | fresh  # the saved groups and prompts come back, not other old ones
    if carried:
        assert ids & carried


def test_dead_worker_is_restarted_and_prompts_requeued(tiny_model_dir):
    backend = make("process", tiny_model_dir, BufferConfig(max_staleness=2, policy="wait"))
    state = weights(tiny_model_dir)
    try:
        backend.start(state, 0)
        backend.next_batch(0, N)
        os.kill(backend.workers[0].process.pid, 9)
        batches = drive(backend, state, 3, start=1)
        assert backend.metrics()["workers/restarts"] >= 1
    finally:
        backend.close()
    assert all(len(b.groups) == N for b in batches)


def test_worker_error_reaches_the_learner(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    spec = WorkerSpec(
        engine="torch",
        model_path=str(tmp_path),
        reward="arithmetic",
        sampling=SamplingParams(max_new_tokens=2),
    )
    sched = PromptScheduler(PROBLEMS, prompts_per_step=1, group_size=2, policy=make_policy(BufferConfig()))
    backend = ProcessBackend(spec, sched, batch_timeout_s=60)
    try:
        backend.start({"w": torch.zeros(1)}, 0)
        with pytest.raises(Exception, match="rollout worker 0 failed"):
            backend.next_batch(0, 1)
    finally:
        backend.close()


def test_rollout_workers_run_a_reward_pool_and_leave_no_process_behind(tiny_model_dir):
    """A worker process grades in its own reward pool (processes of its own, as the gsm8k preset does),
    and close() ends the worker and its pool."""
    backend = make("process", tiny_model_dir, BufferConfig(max_staleness=1, policy="wait"), reward_workers=2)
    state = weights(tiny_model_dir)
    try:
        batches = drive(backend, state, 2)
        proc = backend.workers[0].process
    finally:
        backend.close()
    assert all(len(b.groups) == N for b in batches)
    assert not proc.is_alive() and proc.exitcode == 0


def kill_worker(backend, kind) -> None:
    """SIGKILL the process of rollout worker 0 (a Ray actor's worker process, for Ray)."""
    if kind == "ray":
        import ray

        pid = ray.get(backend.slots[0].actor.ready.remote(), timeout=120)
    else:
        pid = backend.workers[0].process.pid
    os.kill(pid, 9)


@pytest.mark.parametrize("backend_kind", ["process", "ray"])
def test_worker_that_keeps_dying_stops_the_run_with_the_reason(backend_kind, ray_cluster, tiny_model_dir):
    """Both backends: a killed worker is restarted (its prompts re-queued) up to rollout.max_restarts
    times; one more death stops the run and the learner hears why."""
    from asympo.runtime.buffer import BufferClosed

    if backend_kind == "ray" and not ray_cluster:
        pytest.importorskip("ray")
        from asympo.runtime.ray import init_ray

        ray_cluster["started"] = init_ray(num_cpus=2)
    backend = make(backend_kind, tiny_model_dir, BufferConfig(max_staleness=1), max_restarts=1)
    state = weights(tiny_model_dir)
    try:
        backend.start(state, 0)
        backend.next_batch(0, N)
        kill_worker(backend, backend_kind)
        drive(backend, state, 2, start=1)  # the restarted worker serves steps 1 and 2
        assert backend.metrics()["workers/restarts"] == 1
        kill_worker(backend, backend_kind)
        with pytest.raises(BufferClosed, match=r"rollout worker 0 died .*max_restarts=1"):
            for v in range(3, 50):
                backend.next_batch(v, N)
                backend.publish(state, v + 1)
    finally:
        backend.close()
