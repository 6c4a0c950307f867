"""The staleness policy, driven directly by a simulation of workers + learner, and the buffer + scheduler
around it: the bound is never exceeded, fixed_delay is exact, drop/wait as documented, nothing lost."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asympo.data.problem import Problem
from asympo.runtime.buffer import BufferClosed, BufferConfig, StalenessBuffer
from asympo.runtime.records import PromptTask, RolloutGroup, Sample
from asympo.runtime.scheduler import PromptScheduler
from asympo.runtime.staleness import (
    SYNC,
    Drop,
    FixedDelay,
    VersionRule,
    Wait,
    check_resumable,
    choose_version,
    make_policy,
)
from asympo.runtime.sync import WeightStore

PROBLEMS = [Problem(f"p{i}", f"{i}+1=", str(i + 1)) for i in range(50)]
MAX_ITERATIONS = 10_000  # a livelock (no batch ever complete) fails the test instead of hanging it


def group(gid, version, batch_index=0, G=2):
    s = [Sample([1], [2], "x", 1.0, "stop", version) for _ in range(G)]
    return RolloutGroup(gid, f"p{gid}", "1", batch_index, version, s)


def simulate(policy, steps: int, N: int, seed: int):
    """A deterministic event simulation: workers finish tasks in random order with the weights the policy
    lets them use, the learner takes what the policy admits and the scheduler replaces the dropped groups.
    Returns (batches as (version, groups), dropped records, every issued group id)."""
    rng = random.Random(seed)
    sched = PromptScheduler(PROBLEMS, prompts_per_step=N, group_size=2, policy=policy, seed=seed)
    buf = StalenessBuffer(policy)
    store = WeightStore()
    store.add(0, {})
    waiting, batches, dropped, issued, v = [], [], [], [], 0
    for _ in range(MAX_ITERATIONS):
        if len(batches) == steps:
            break
        new = sched.issue(v)
        issued += [t.group_id for t in new]
        waiting += new
        rng.shuffle(waiting)  # workers finish in any order
        for t in list(waiting):
            if rng.random() < 0.7 and store.select(t) is not None:
                waiting.remove(t)
                sched.done(t.group_id)
                buf.put(group(t.group_id, store.select(t), t.batch_index))
        ready, drops = buf.take(N, v)
        for _ in drops:
            sched.replace_dropped(v)
        dropped += drops
        if ready is None:
            continue
        batches.append((v, ready))
        v += 1
        store.add(v, {})
        store.prune(policy.keep_from(v))
    else:
        pytest.fail(f"livelock: {len(batches)} of {steps} batches after {MAX_ITERATIONS} iterations")
    pending = [g.group_id for g in buf.pending()] + [t.group_id for t in waiting]
    return batches, dropped, issued, pending


def staleness(v, groups):
    return [v - g.policy_version for g in groups]


@settings(max_examples=40, deadline=None)
@given(d=st.integers(0, 5), policy=st.sampled_from(["wait", "drop"]), seed=st.integers(0, 10_000))
def test_bound_never_exceeded_and_every_prompt_is_accounted_for(d, policy, seed):
    pol = make_policy(BufferConfig(max_staleness=d, policy=policy, max_ahead=3))
    batches, dropped, issued, pending = simulate(pol, steps=12, N=3, seed=seed)
    for v, groups in batches:
        assert len(groups) == 3
        assert all(0 <= s <= d for s in staleness(v, groups))
    trained = [g.group_id for _, gs in batches for g in gs]
    accounted = trained + [r.group_id for r in dropped] + pending
    assert sorted(accounted) == sorted(issued)  # none lost, none twice


@settings(max_examples=30, deadline=None)
@given(d=st.integers(0, 5), seed=st.integers(0, 10_000))
def test_fixed_delay_is_exact(d, seed):
    batches, dropped, _, _ = simulate(FixedDelay(d), steps=10, N=3, seed=seed)
    assert not dropped
    for i, (v, groups) in enumerate(batches):
        assert v == i
        assert set(staleness(v, groups)) == {min(v, d)}, f"step {v}: {staleness(v, groups)}"
        assert all(g.batch_index == v for g in groups)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(0, 4), seed=st.integers(0, 10_000))
def test_wait_policy_drops_nothing(d, seed):
    _, dropped, _, _ = simulate(Wait(d), steps=12, N=3, seed=seed)
    assert dropped == []


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_sync_is_wait_zero(seed):
    assert make_policy(BufferConfig(max_staleness=3, policy="drop"), "sync") == SYNC == Wait(0)
    batches, dropped, _, _ = simulate(SYNC, steps=6, N=2, seed=seed)
    assert not dropped and all(set(staleness(v, gs)) == {0} for v, gs in batches)


def test_drop_policy_drops_stale_groups():
    policy = Drop(1)
    sched = PromptScheduler(PROBLEMS, prompts_per_step=2, group_size=2, policy=policy)
    buf = StalenessBuffer(policy)
    for t in sched.issue(0)[:2]:
        sched.done(t.group_id)
        buf.put(group(t.group_id, 0))
    ready, drops = buf.take(2, 5)  # version 5: both version-0 groups are 5 stale
    assert ready is None
    assert [(r.reason, r.staleness) for r in drops] == [("stale", 5), ("stale", 5)]
    assert buf.state.dropped == {"stale": 2} and len(buf) == 0
    for _ in drops:
        sched.replace_dropped(5)
    replacements = [t for t in sched.issue(5) if t.batch_index == 5]
    assert len(replacements) >= 2


def test_versions_must_not_decrease():
    buf = StalenessBuffer(Wait(4))
    buf.put(group(0, 3))
    buf.take(1, 3)
    with pytest.raises(ValueError, match="must not decrease"):
        buf.take(1, 2)


def test_take_blocks_until_groups_arrive_and_close_wakes():
    buf = StalenessBuffer(Wait(2))
    threading.Timer(0.1, lambda: [buf.put(group(i, 0)) for i in range(2)]).start()
    ready, _ = buf.take(2, 0, timeout=5)
    assert len(ready) == 2
    threading.Timer(0.1, lambda: buf.close("shutdown")).start()
    with pytest.raises(BufferClosed, match="shutdown"):
        buf.take(1, 0, timeout=5)
    with pytest.raises(TimeoutError, match="no batch of 1 groups"):
        StalenessBuffer(Wait(4)).take(1, 0, timeout=0.05)
    assert StalenessBuffer(Wait(4)).take(1, 0, timeout=0) == (None, [])


def test_fixed_delay_rejects_wrong_version():
    buf = StalenessBuffer(FixedDelay(2))
    buf.put(group(0, 3, batch_index=5))
    buf.put(group(1, 1, batch_index=5))
    with pytest.raises(RuntimeError, match="expected 3"):
        buf.take(2, 5)


def test_policy_rules():
    assert FixedDelay(3).version_rule(7) == VersionRule(exact=4)
    assert FixedDelay(3).version_rule(1) == VersionRule(exact=0)
    assert Wait(2).version_rule(7) == VersionRule(min=5)
    assert Drop(2, 5).version_rule(7) == VersionRule()
    assert [p.last_issuable_step(10) for p in (FixedDelay(3), Wait(2), Drop(2, 5), SYNC)] == [13, 12, 15, 10]
    # FixedDelay keeps the d versions behind the newest that steps not yet trained still need.
    assert [p.keep_from(10) for p in (FixedDelay(3), Wait(2), Drop(2, 5))] == [7, 10, 10]
    assert make_policy(BufferConfig(fixed_delay=2, policy="drop"), "sync") == FixedDelay(2)
    assert make_policy(BufferConfig(max_staleness=3, policy="drop", max_ahead=1)) == Drop(3, 1)
    with pytest.raises(ValueError, match="mode must be sync or async"):
        make_policy(BufferConfig(), "later")


def test_policy_state_round_trip_and_mismatch_is_refused():
    buf = StalenessBuffer(Drop(0))
    buf.put(group(0, 0))
    buf.take(1, 3)
    buf.put(group(1, 3))
    state = buf.state_dict()
    again = StalenessBuffer(Drop(0))
    again.load_state_dict(state)
    assert again.state == buf.state and again.state.dropped == {"stale": 1}
    assert [g.group_id for g in again.pending()] == [1]
    with pytest.raises(ValueError, match="versions must not decrease"):
        again.take(1, 2)
    with pytest.raises(ValueError, match=r"staleness policy .*'fixed_delay'.* resume with the original"):
        StalenessBuffer(Wait(2)).load_state_dict(
            {**state, "policy": {**state["policy"], "params": FixedDelay(2).params()}}
        )
    check_resumable(Wait(2), {"params": Wait(2).params()})


def test_config_validation():
    with pytest.raises(ValueError, match="buffer.policy must be one of wait, drop"):
        BufferConfig(policy="block")
    with pytest.raises(ValueError, match="max_staleness"):
        BufferConfig(max_staleness=-1)
    with pytest.raises(ValueError, match="fixed_delay"):
        BufferConfig(fixed_delay=-2)


# ------------------------------------------------------------------ scheduler


def test_scheduler_epochs_cover_every_problem_once():
    sched = PromptScheduler(PROBLEMS, prompts_per_step=5, group_size=2, policy=SYNC)
    ids = []
    for v in range(10):
        ids += [t.problem.id for t in sched.issue(v)]
    assert sorted(ids) == sorted(p.id for p in PROBLEMS)
    assert sched.epoch == 0 and sched.position == 50


def test_scheduler_state_roundtrip_requeues_inflight():
    cfg = Wait(2)
    a = PromptScheduler(PROBLEMS, prompts_per_step=3, group_size=2, policy=cfg, seed=7)
    issued = a.issue(0)
    for t in issued[:4]:
        a.done(t.group_id)
    state = a.state_dict()
    b = PromptScheduler(PROBLEMS, prompts_per_step=3, group_size=2, policy=cfg, seed=7)
    b.load_state_dict(state)
    again = b.issue(0)
    assert [t.group_id for t in again] == [t.group_id for t in issued[4:]]
    assert [t.problem.id for t in again] == [t.problem.id for t in issued[4:]]
    # and the data order continues identically afterwards
    assert [t.problem.id for t in a.issue(1)] == [t.problem.id for t in b.issue(1)]


def test_scheduler_requeue_after_worker_death():
    sched = PromptScheduler(PROBLEMS, prompts_per_step=2, group_size=2, policy=Wait(0))
    first = sched.issue(0)
    sched.requeue([first[1].group_id])
    again = sched.issue(0)
    assert again == [first[1]]


def test_weight_store_selection():
    store = WeightStore()
    for v in range(4):
        store.add(v, {})
    t = PromptTask(0, PROBLEMS[0], 2, 5, VersionRule(exact=2))
    assert store.select(t) == 2
    assert store.select(PromptTask(0, PROBLEMS[0], 2, 5, VersionRule(min=3))) == 3
    assert store.select(PromptTask(0, PROBLEMS[0], 2, 5, VersionRule(min=4))) is None
    assert store.select(PromptTask(0, PROBLEMS[0], 2, 5)) == 3
    assert choose_version(VersionRule(exact=9), [3]) is None  # not published yet
    store.prune(3)
    with pytest.raises(RuntimeError, match="already discarded"):
        store.select(t)
    with pytest.raises(ValueError, match="must increase"):
        store.add(2, {})
