"""RewardPool: ordering, timeouts, crashes, killed workers, threads, inline mode, config validation."""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import pytest

from asympo.rewards import get_reward
from asympo.rewards.pool import RewardPool, RewardPoolConfig

TIMEOUT_S = 1.0


# Graders for the tests: module level, so spawned workers can import them by name.
def exact_reward(completion: str, reference: str) -> float:
    return 1.0 if completion.strip() == reference.strip() else 0.0


def misbehaving_reward(completion: str, reference: str) -> float:
    """Exact match, except for completions that ask the grader to misbehave."""
    if completion == "sleep":
        time.sleep(60)
    elif completion == "sleep-long":
        time.sleep(3600)
    elif completion == "crash":
        os._exit(3)
    elif completion == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif completion == "raise":
        raise ZeroDivisionError("grader bug")
    elif completion == "nan":
        return math.nan
    elif completion == "string":
        return "1.0"  # type: ignore[return-value]
    elif completion == "hog":
        return float(len(bytearray(8 * 1024**3)))  # more than the pool's memory limit
    elif completion == "pid":
        return float(os.getpid())
    return exact_reward(completion, reference)


def never_ready() -> None:
    time.sleep(60)


@pytest.fixture(scope="module")
def pool():
    config = RewardPoolConfig(num_workers=2, timeout_s=TIMEOUT_S, preload=(), memory_limit_mb=1024)
    with RewardPool(misbehaving_reward, config) as p:
        yield p


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a killed but unreaped child is a zombie: not alive
        return f.read().split(") ", 1)[1][0] != "Z"


def test_results_in_order_and_equal_to_inline(pool):
    completions = [str(i % 7) for i in range(300)]
    references = [str(i % 5) for i in range(300)]
    expected = [exact_reward(c, r) for c, r in zip(completions, references)]
    batch = pool.score_batch(completions, references)
    assert batch.rewards == expected
    assert batch.status == ["ok"] * 300
    assert batch.metrics()["reward/graded"] == 300
    with RewardPool(exact_reward, RewardPoolConfig(num_workers=0)) as inline:
        assert inline.score(completions, references) == expected
    assert pool.score([], []) == []


def test_both_workers_share_the_batch(pool):
    pool.wait_ready()
    pids = set(pool.score(["pid"] * 64, ["x"] * 64))
    assert pids == {float(p) for p in pool.worker_pids()}


def test_timeout_yields_zero_and_is_counted(pool):
    before = pool.metrics()
    start = time.monotonic()
    batch = pool.score_batch(["1", "sleep", "2", "3", "sleep", "4"], ["1", "1", "2", "3", "1", "0"])
    elapsed = time.monotonic() - start
    assert batch.rewards == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert batch.status == ["ok", "timeout", "ok", "ok", "timeout", "ok"]
    assert "timeout" in batch.messages[1]
    assert elapsed < 10  # the sleeps last 60 s; the rest is replacing two workers
    after = pool.metrics()
    assert after["reward/timeouts"] - before["reward/timeouts"] == 2
    assert after["reward/worker_restarts"] - before["reward/worker_restarts"] == 2
    assert pool.score(["5"], ["5"]) == [1.0]  # replacements work


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("crash", "exit code 3"),
        ("segfault", "exit code -11"),
        ("raise", "ZeroDivisionError: grader bug"),
        ("nan", "finite float"),
        ("string", "finite float"),
        ("hog", "MemoryError"),
    ],
)
def test_errors_yield_zero_and_are_counted(pool, bad, message):
    before = pool.metrics()
    batch = pool.score_batch(["a", bad, "b", "c"], ["a", "x", "b", "x"])
    assert batch.rewards == [1.0, 0.0, 1.0, 0.0]
    assert batch.status == ["ok", "error", "ok", "ok"]
    assert message in batch.messages[1]
    assert pool.metrics()["reward/errors"] - before["reward/errors"] == 1


def test_pool_survives_a_killed_worker(pool):
    pool.wait_ready()
    victim = pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(victim) and time.monotonic() < deadline:
        time.sleep(0.01)
    completions = [str(i) for i in range(50)]
    assert pool.score(completions, completions) == [1.0] * 50
    pids = pool.worker_pids()
    assert victim not in pids and len(pids) == 2
    assert all(_alive(p) for p in pids)


def test_worker_killed_mid_call(pool):
    pool.wait_ready()
    victim = pool.worker_pids()[0]

    def kill_when_busy():
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    # Both workers are inside a 60 s sleep when the victim dies; the other one times out.
    batch = pool.score_batch(["sleep", "sleep", "7"], ["x", "x", "7"])
    killer.join()
    assert batch.rewards == [0.0, 0.0, 1.0]
    assert sorted(batch.status) == ["error", "ok", "timeout"]


def test_score_from_another_thread(pool):
    result = {}

    def run():
        result["batch"] = pool.score_batch(["1", "sleep", "2"], ["1", "1", "2"])

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert result["batch"].rewards == [1.0, 0.0, 1.0]
    assert result["batch"].status[1] == "timeout"


def test_inline_mode_catches_errors():
    with RewardPool(misbehaving_reward, RewardPoolConfig(num_workers=0)) as inline:
        batch = inline.score_batch(["a", "raise", "nan", "b"], ["a", "a", "a", "c"])
        assert batch.rewards == [1.0, 0.0, 0.0, 0.0]
        assert batch.status == ["ok", "error", "error", "ok"]
        assert inline.metrics()["reward/errors"] == 2
        assert inline.worker_pids() == []


def test_context_manager_stops_workers():
    with RewardPool(exact_reward, RewardPoolConfig(num_workers=2, preload=())) as p:
        assert p.score(["1"], ["1"]) == [1.0]
        pids = p.worker_pids()
    assert not any(_alive(pid) for pid in pids)
    p.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        p.score(["1"], ["1"])


def test_reward_by_name_and_import_path():
    with RewardPool("tests.test_reward_pool:exact_reward", RewardPoolConfig(num_workers=1, preload=())) as p:
        assert p.score(["1", "2"], ["1", "1"]) == [1.0, 0.0]
    assert get_reward("tests.test_reward_pool:exact_reward") is exact_reward


def test_reward_that_cannot_load_fails_loudly():
    config = RewardPoolConfig(num_workers=1, preload=("asympo_no_such_module",))
    with RewardPool(exact_reward, config) as p, pytest.raises(RuntimeError, match="asympo_no_such_module"):
        p.score(["1"], ["1"])


def test_worker_that_never_gets_ready_fails_loudly():
    config = RewardPoolConfig(
        num_workers=1,
        preload=("tests.test_reward_pool:never_ready",),
        startup_timeout_s=1.0,
        max_start_failures=1,
    )
    start = time.monotonic()
    with RewardPool(exact_reward, config) as p, pytest.raises(RuntimeError, match=r"not ready after 1\.0 s"):
        p.score(["1"], ["1"])
    assert time.monotonic() - start < 10


def test_bad_arguments(pool):
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        pool.score(["a", "b"], ["a"])
    with pytest.raises(TypeError, match=r"completions\[1\] is a NoneType"):
        pool.score(["a", None], ["a", "b"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="cannot be sent to worker processes"):
        RewardPool(lambda c, r: 1.0, RewardPoolConfig(num_workers=1))
    with pytest.raises(ValueError, match=r"unknown reward 'nope'.*'math'"):
        RewardPool("nope")


def test_get_reward_registry():
    with pytest.raises(ValueError, match=r"valid names: \['arithmetic', 'math', 'reasoning_gym'\]"):
        get_reward("gsm8k")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        get_reward("asympo.rewards.math:missing")
    with pytest.raises(ImportError, match="no_such_package"):
        get_reward("no_such_package.mod:fn")
    try:
        fn = get_reward("arithmetic")
    except ImportError as e:  # until the arithmetic task lands, the error says what is missing
        assert "asympo.rewards.arithmetic" in str(e)
    else:
        assert callable(fn)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_workers": -1}, "num_workers"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": math.inf}, "timeout_s"),
        ({"start_method": "thread"}, "start_method"),
        ({"startup_timeout_s": -1}, "startup_timeout_s"),
        ({"max_inflight_per_worker": 0}, "max_inflight_per_worker"),
        ({"memory_limit_mb": 10}, "memory_limit_mb"),
        ({"preload": ["x"]}, "preload"),
        ({"max_start_failures": 0}, "max_start_failures"),
        ({"batch_timeout_s": 0}, "batch_timeout_s"),
        ({"batch_timeout_s": math.nan}, "batch_timeout_s"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RewardPoolConfig(**kwargs)


def test_a_long_completion_behind_a_hanging_call_does_not_block_the_caller(pool):
    """A send into a full pipe blocks until the worker reads, and a worker reads only between calls: a
    1 MB completion queued behind a call that hangs for an hour used to stall `score` past every deadline."""
    pool.wait_ready()
    long = "1" * 1_000_000
    start = time.monotonic()
    batch = pool.score_batch(["sleep-long", "sleep-long", long, long, "2"], ["1", "1", long, "0", "2"])
    assert time.monotonic() - start < 600  # a stall lasts the 3600 s sleep; the bound is generous
    assert batch.status == ["timeout", "timeout", "ok", "ok", "ok"]
    assert batch.rewards == [0.0, 0.0, 1.0, 0.0, 1.0]


def test_the_batch_deadline_bounds_a_batch_of_hanging_calls():
    """Each call has `timeout_s`, but 40 hanging calls on 2 workers would queue for 20 timeouts and as many
    worker restarts; `batch_timeout_s` ends the batch, the calls not done graded 0.0 as timeouts."""
    config = RewardPoolConfig(
        num_workers=2, timeout_s=1.0, batch_timeout_s=3.0, preload=(), memory_limit_mb=1024
    )
    with RewardPool(misbehaving_reward, config) as pool:
        pool.wait_ready()
        batch = pool.score_batch(["4", "5"] + ["sleep-long"] * 40, ["4", "5"] + ["1"] * 40)
        assert batch.rewards[:2] == [1.0, 1.0] and batch.status[:2] == ["ok", "ok"]
        assert batch.status[2:] == ["timeout"] * 40
        assert any("batch_timeout_s=3.0" in m for m in batch.messages.values())
        # Generous against the 40 x (1 s + a restart) the batch took without the deadline.
        assert batch.seconds < 30
        assert pool.score(["6"], ["6"]) == [1.0]  # nothing of the cut batch answers into the next one


def adversarial_completions(n: int) -> list[str]:
    """Completions built to make a math verifier slow: exponent towers, huge numbers, nested braces and
    fractions, LaTeX bombs, very long strings."""
    kinds = [
        lambda i: "\\boxed{" + "9" * (10 + i * 37 % 900) + "}",
        lambda i: "\\boxed{" + "{" * 500 + "1" + "}" * 500 + "}",
        lambda i: "\\boxed{10^{10^{10^{10}}}}",
        lambda i: "\\boxed{" + "\\frac{1}{" * 60 + "2" + "}" * 60 + "}",
        lambda i: "the answer is " + "x" * 100_000,
        lambda i: "#### " + "(" * 400 + "1" + ")" * 400,
        lambda i: "\\boxed{9^{9^{9^{9^{9}}}}!}",
        lambda i: "\\boxed{\\sqrt{" * 200 + "2" + "}}" * 200,
        lambda i: "\\boxed{" + "+".join(f"x^{{{k}}}" for k in range(150)) + "}",
        lambda i: "\\boxed{1e99999999}",
        lambda i: "\\boxed{" + "\\left(" * 100 + "1" + "\\right)" * 100 + "}",
        lambda i: "a" * 1_000_000,
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


@pytest.mark.slow
def test_math_verifier_under_adversarial_load():
    """300 adversarial completions through the real math reward: the batch ends within its deadline plus a
    small constant (without it this batch took ~600 s on a loaded 2-core machine: 119 timeouts, each
    followed by a worker restart), the honest answers graded before the bombs still score 1.0."""
    config = RewardPoolConfig(num_workers=2, timeout_s=1.0, batch_timeout_s=10.0)
    completions = ["\\boxed{42}", "The answer is 42.", *adversarial_completions(300)]
    with RewardPool("math", config) as pool:
        pool.wait_ready()
        batch = pool.score_batch(completions, ["42"] * len(completions))
    assert batch.rewards[:2] == [1.0, 1.0]
    assert batch.rewards[2:] == [0.0] * 300
    assert set(batch.status) <= {"ok", "timeout", "error"}
    assert batch.seconds < config.batch_timeout_s + 30
