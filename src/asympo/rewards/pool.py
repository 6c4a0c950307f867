"""A process pool that grades completions with per-call timeouts and survives graders that hang or die.

Why not `concurrent.futures.ProcessPoolExecutor`: it cannot stop one stuck call (a sympy simplification
of `10^{10^{10}}` never returns), and one killed worker breaks the whole executor. Here every worker
is a process with its own pipe; the caller's thread waits on the pipes and process sentinels with a
deadline (`multiprocessing.connection.wait`, no signals, so any thread may call `score`), kills a worker
whose call overruns, and starts a replacement. A call that times out or raises yields 0.0 and is
counted (`reward/timeouts`, `reward/errors`); the rest of the batch goes on.

Each worker runs the reward function in its own main thread, one call at a time, in the order sent.
Up to `max_inflight_per_worker` calls are queued in its pipe so it never waits for the caller between
calls; the deadline of a call starts when the worker is free to begin it (the previous result arrived).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from asympo.rewards import RewardFn, get_reward

logger = logging.getLogger(__name__)

_START_METHODS = ("spawn", "forkserver", "fork")


@dataclass
class RewardPoolConfig:
    """How the reward pool runs graders."""

    num_workers: int = 2
    """Grader processes. 0 runs the reward inline in the caller's thread, for cheap exact-match rewards:
    exceptions are still caught and counted, but there is no timeout."""
    timeout_s: float = 5.0
    """Seconds one reward call may run before its worker is killed and the call grades 0.0."""
    start_method: str = "spawn"
    """multiprocessing start method. `spawn` is safe in a multi-threaded parent (torch, a learner
    thread); `fork` starts fastest but may deadlock when the parent holds locks in other threads."""
    startup_timeout_s: float = 120.0
    """Seconds a new worker may take to import the reward and report ready before it is replaced."""
    max_inflight_per_worker: int = 2
    """Calls sent to a worker before its first result is back, so that it never idles waiting for the
    caller. Calls queued behind one that hangs wait for its timeout, so keep this small."""
    batch_timeout_s: float | None = 60.0
    """Seconds one `score`/`score_batch` call may take in all. Each call is bounded by `timeout_s`, but
    calls queue behind each other and every timeout costs a worker restart, so hundreds of adversarial
    completions (exponent towers, nested fractions) could otherwise hold a training step for many
    minutes. Calls not finished by this deadline grade 0.0 as timeouts. None: no batch deadline."""
    memory_limit_mb: int | None = 4096
    """Address-space limit per worker (RLIMIT_AS); a grader that blows up sympy gets a MemoryError
    (graded 0.0, counted as an error) instead of swapping the machine. None: no limit."""
    preload: tuple[str, ...] = ("asympo.rewards.math:warm_up",)
    """Import paths run by each worker before it reports ready: "pkg.mod" imports a module,
    "pkg.mod:fn" also calls fn(). Keeps import time out of the first call's timeout."""
    max_start_failures: int = 3
    """Consecutive worker start failures (crash or startup timeout before ready) after which `score`
    raises instead of trying again: the reward cannot be loaded at all."""

    def __post_init__(self) -> None:
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0 (0 = inline), got {self.num_workers!r}")
        if not (
            isinstance(self.timeout_s, int | float) and math.isfinite(self.timeout_s) and self.timeout_s > 0
        ):
            raise ValueError(f"timeout_s must be a finite number > 0, got {self.timeout_s!r}")
        if self.start_method not in _START_METHODS:
            raise ValueError(f"start_method must be one of {_START_METHODS}, got {self.start_method!r}")
        if not (isinstance(self.startup_timeout_s, int | float) and self.startup_timeout_s > 0):
            raise ValueError(f"startup_timeout_s must be a number > 0, got {self.startup_timeout_s!r}")
        if self.batch_timeout_s is not None and not (
            isinstance(self.batch_timeout_s, int | float)
            and math.isfinite(self.batch_timeout_s)
            and self.batch_timeout_s > 0
        ):
            raise ValueError(
                f"batch_timeout_s must be None or a finite number > 0, got {self.batch_timeout_s!r}"
            )
        if not isinstance(self.max_inflight_per_worker, int) or self.max_inflight_per_worker < 1:
            raise ValueError(
                f"max_inflight_per_worker must be an int >= 1, got {self.max_inflight_per_worker!r}"
            )
        if self.memory_limit_mb is not None and (
            not isinstance(self.memory_limit_mb, int) or self.memory_limit_mb < 256
        ):
            raise ValueError(f"memory_limit_mb must be None or an int >= 256, got {self.memory_limit_mb!r}")
        if not isinstance(self.preload, tuple) or not all(isinstance(p, str) and p for p in self.preload):
            raise ValueError(
                f"preload must be a tuple of import paths ('pkg.mod' or 'pkg.mod:fn'), got {self.preload!r}"
            )
        if not isinstance(self.max_start_failures, int) or self.max_start_failures < 1:
            raise ValueError(f"max_start_failures must be an int >= 1, got {self.max_start_failures!r}")


OK, TIMEOUT, ERROR = "ok", "timeout", "error"

# Bytes of calls that may wait in a busy worker's pipe: well under Linux's 64 KiB pipe buffer, so that
# sending to a worker that is not reading never blocks (an idle worker reads as we send, any size).
_PIPE_BUDGET_BYTES = 32 * 1024


@dataclass
class RewardBatch:
    """The outcome of grading one batch: a reward per completion and how each call ended."""

    rewards: list[float]
    """One reward per completion, in input order; 0.0 where the call timed out or failed."""
    status: list[str]
    """Per completion: "ok", "timeout" or "error" (the reward raised, returned a non-finite or
    non-number value, or its worker died)."""
    seconds: float
    """Wall-clock time of the batch."""
    messages: dict[int, str] = field(default_factory=dict)
    """Index → what went wrong, for the completions that did not end "ok"."""

    @property
    def timeouts(self) -> int:
        return self.status.count(TIMEOUT)

    @property
    def errors(self) -> int:
        return self.status.count(ERROR)

    def metrics(self) -> dict[str, float]:
        """Namespaced counters for this batch, ready for metrics.jsonl."""
        return {
            "reward/timeouts": float(self.timeouts),
            "reward/errors": float(self.errors),
            "reward/graded": float(len(self.rewards)),
            "time/reward": self.seconds,
        }


def _check_value(value: object) -> float:
    """A reward must be a finite real number; anything else is the grader's error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"reward function returned {value!r}; it must return a finite float")
    return float(value)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


def _run_import_path(path: str) -> None:
    import importlib

    module_name, _, fn_name = path.partition(":")
    module = importlib.import_module(module_name)
    if fn_name:
        getattr(module, fn_name)()


def _worker_main(conn, reward: RewardFn | str, preload: tuple[str, ...], memory_limit_mb: int | None) -> None:
    """Worker process: report ready, then grade (task_id, completion, reference) until told to stop."""
    # Ctrl-C goes to the whole process group; the parent decides, the worker must not die mid-call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if memory_limit_mb is not None:
            import resource

            limit = memory_limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        fn = get_reward(reward) if isinstance(reward, str) else reward
        for path in preload:
            _run_import_path(path)
    except BaseException as e:
        conn.send(("fatal", _describe(e)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone: nothing left to grade for
            return
        if task is None:
            return
        task_id, completion, reference = task
        try:
            message = (task_id, OK, _check_value(fn(completion, reference)))
        except BaseException as e:  # MemoryError, RecursionError, anything: the parent counts it
            message = (task_id, ERROR, _describe(e))
        conn.send(message)


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, ctx, reward: RewardFn | str, config: RewardPoolConfig) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child_conn, reward, config.preload, config.memory_limit_mb),
            daemon=True,
            name="asympo-reward-worker",
        )
        self.proc.start()
        child_conn.close()  # so the parent's recv sees EOF when the worker dies
        self.started_at = time.monotonic()
        self.ready = False
        self.inflight: deque[int] = deque()
        self.sizes: dict[int, int] = {}  # task id → bytes sent, for the calls in `inflight`
        self.head_since = 0.0  # when the worker became free to start inflight[0]

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def ask_to_stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass


def _shutdown(workers: list[_Worker], wait_s: float = 1.0) -> None:
    """Ask every worker to exit, give them `wait_s` together, then kill what is left."""
    for worker in workers:
        worker.ask_to_stop()
    deadline = time.monotonic() + wait_s
    for worker in workers:
        if worker.ready:  # one still starting up reads its pipe only when ready: no point waiting
            worker.proc.join(timeout=max(0.0, deadline - time.monotonic()))
        worker.kill()
    workers.clear()


class RewardPool:
    """Grades batches of completions with a reward function, in worker processes with timeouts.

    >>> with RewardPool("math", RewardPoolConfig(num_workers=2, timeout_s=5)) as pool:
    ...     pool.score(["... so the answer is \\\\boxed{42}."], ["42"])
    [1.0]

    `reward` is a function `(completion, reference) -> float` (picklable: defined at module level) or a
    name/import path for `asympo.rewards.get_reward`. `score` may be called from any thread (calls are
    serialised); it never raises because of what a grader did, only for bad arguments or a reward that
    cannot be loaded at all.
    """

    def __init__(self, reward: RewardFn | str = "math", config: RewardPoolConfig | None = None) -> None:
        self.config = config or RewardPoolConfig()
        # Resolve here as well, so a bad name fails before any process starts.
        self._fn = get_reward(reward) if isinstance(reward, str) else reward
        if not callable(self._fn):
            raise TypeError(f"reward must be a function or a reward name, got {type(reward).__name__}")
        self._reward = reward
        if self.config.num_workers > 0 and not isinstance(reward, str) and self.config.start_method != "fork":
            try:
                pickle.dumps(reward)
            except Exception as e:
                raise ValueError(
                    f"reward function {reward!r} cannot be sent to worker processes ({e}); define it at "
                    f"module level, pass its import path 'pkg.mod:fn', or use num_workers=0"
                ) from e
        self._lock = threading.Lock()
        self._totals = {
            "reward/timeouts": 0,
            "reward/errors": 0,
            "reward/graded": 0,
            "reward/worker_restarts": 0,
        }
        self._start_failures = 0
        self._closed = False
        self._workers: list[_Worker] = []
        self._ctx = multiprocessing.get_context(self.config.start_method)
        for _ in range(self.config.num_workers):
            self._workers.append(_Worker(self._ctx, self._reward, self.config))
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # -- public API ---------------------------------------------------------------------------------

    def score(self, completions: Sequence[str], references: Sequence[str]) -> list[float]:
        """One reward per completion (0.0 for calls that timed out or failed)."""
        return self.score_batch(completions, references).rewards

    def score_batch(self, completions: Sequence[str], references: Sequence[str]) -> RewardBatch:
        """Grade a batch and say how each call ended; see RewardBatch."""
        if len(completions) != len(references):
            raise ValueError(f"got {len(completions)} completions but {len(references)} references")
        for name, items in (("completions", completions), ("references", references)):
            bad = next((i for i, x in enumerate(items) if not isinstance(x, str)), None)
            if bad is not None:
                raise TypeError(f"{name}[{bad}] is a {type(items[bad]).__name__}, not a str")
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            start = time.monotonic()
            rewards = [0.0] * len(completions)
            status = [ERROR] * len(completions)
            messages: dict[int, str] = {}
            if self.config.num_workers == 0:
                self._score_inline(completions, references, rewards, status, messages)
            else:
                try:
                    self._score_pool(completions, references, rewards, status, messages)
                except BaseException:
                    # Results still queued in a worker would arrive in the next batch: drop those workers.
                    for index, worker in enumerate(self._workers):
                        if worker.inflight:
                            self._replace(index)
                    raise
            batch = RewardBatch(rewards, status, time.monotonic() - start, messages)
            self._totals["reward/timeouts"] += batch.timeouts
            self._totals["reward/errors"] += batch.errors
            self._totals["reward/graded"] += len(rewards)
        if messages:
            first = min(messages)
            logger.warning(
                "reward: %d timeouts, %d errors in a batch of %d; first: completion %d: %s",
                batch.timeouts, batch.errors, len(rewards), first, messages[first],
            )  # fmt: skip
        return batch

    def metrics(self) -> dict[str, float]:
        """Counters since the pool started: reward/{timeouts,errors,graded,worker_restarts}."""
        with self._lock:
            return {k: float(v) for k, v in self._totals.items()}

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring and tests)."""
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    def wait_ready(self) -> None:
        """Block until every worker has started (imported the reward, run `preload`); RuntimeError if
        they cannot. `score` does not need this; it is for timing and for tests."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            if self.config.num_workers > 0:
                self._score_pool([], [], [], [], {}, until_ready=True)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------

    def _score_inline(self, completions, references, rewards, status, messages) -> None:
        for i, (completion, reference) in enumerate(zip(completions, references)):
            try:
                rewards[i] = _check_value(self._fn(completion, reference))
                status[i] = OK
            except Exception as e:
                messages[i] = _describe(e)

    def _replace(self, index: int) -> None:
        self._workers[index].kill()
        self._workers[index] = _Worker(self._ctx, self._reward, self.config)
        self._totals["reward/worker_restarts"] += 1

    def _start_failed(self, index: int, why: str) -> None:
        self._start_failures += 1
        if self._start_failures >= self.config.max_start_failures:
            self._workers[index].kill()
            raise RuntimeError(
                f"reward workers failed to start {self._start_failures} times in a row; last: {why}"
            )
        logger.warning("reward worker failed to start (%s); starting another", why)
        self._replace(index)

    def _score_pool(
        self, completions, references, rewards, status, messages, until_ready: bool = False
    ) -> None:
        cfg = self.config
        pending: deque[int] = deque(range(len(completions)))
        remaining = len(completions)
        # Counted from when a worker is ready: starting the pool is not grading time.
        batch_deadline = math.inf

        def finish(i: int, state: str, value: float | str) -> None:
            nonlocal remaining
            if state == OK:
                rewards[i] = value
            else:
                messages[i] = str(value)
            status[i] = state
            remaining -= 1

        def fail_worker(index: int, state: str, why: str) -> None:
            """The worker died or overran: its current call ends in `state`, the queued ones go back."""
            worker = self._workers[index]
            if worker.inflight:
                finish(worker.inflight.popleft(), state, why)
                pending.extendleft(reversed(worker.inflight))
                worker.inflight.clear()
                worker.sizes.clear()
            self._replace(index)

        while remaining or (until_ready and not all(w.ready for w in self._workers)):
            now = time.monotonic()
            if batch_deadline == math.inf and cfg.batch_timeout_s is not None and not until_ready:
                if any(w.ready for w in self._workers):
                    batch_deadline = now + cfg.batch_timeout_s
            # Round robin, one call per worker per round, so that a batch smaller than the pipes'
            # capacity still spreads over all workers.
            open_workers = [w for w in self._workers if w.ready]
            while pending and open_workers:
                for worker in list(open_workers):
                    if not pending or len(worker.inflight) >= cfg.max_inflight_per_worker:
                        open_workers.remove(worker)
                        continue
                    i = pending[0]
                    payload = pickle.dumps((i, completions[i], references[i]))
                    # A send blocks once the pipe is full, and a busy worker reads only after its call:
                    # a long completion queued behind a hanging call would block this thread past every
                    # deadline. So calls are queued behind others only while they fit in the pipe.
                    queued = sum(worker.sizes.values())
                    if worker.inflight and queued + len(payload) > _PIPE_BUDGET_BYTES:
                        open_workers.remove(worker)
                        continue
                    pending.popleft()
                    try:
                        worker.conn.send_bytes(payload)
                    except (OSError, ValueError):  # died since the last check: the sentinel will tell
                        pending.appendleft(i)
                        open_workers.remove(worker)
                        continue
                    if not worker.inflight:
                        worker.head_since = now
                    worker.inflight.append(i)
                    worker.sizes[i] = len(payload)

            deadlines = [
                w.head_since + cfg.timeout_s if w.ready else w.started_at + cfg.startup_timeout_s
                for w in self._workers
                if w.inflight or not w.ready
            ]
            if remaining and batch_deadline < math.inf:
                deadlines.append(batch_deadline)
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            handles = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
            multiprocessing.connection.wait(handles, timeout=wait_s)

            for index in range(len(self._workers)):
                worker = self._workers[index]
                dead = False
                try:
                    while worker.conn.poll():
                        message = worker.conn.recv()
                        if message[0] == "ready":
                            worker.ready = True
                            self._start_failures = 0
                        elif message[0] == "fatal":
                            worker.kill()
                            raise RuntimeError(f"reward worker could not load the reward: {message[1]}")
                        else:
                            task_id, state, value = message
                            if not worker.inflight or worker.inflight[0] != task_id:
                                raise RuntimeError(f"reward worker answered task {task_id} out of order")
                            worker.inflight.popleft()
                            worker.sizes.pop(task_id, None)
                            worker.head_since = time.monotonic()
                            finish(task_id, state, value)
                except (EOFError, OSError):
                    dead = True
                now = time.monotonic()
                if dead or not worker.proc.is_alive():
                    worker.proc.join(timeout=1.0)  # reap it: a closed pipe can come before the exit code
                    code = worker.proc.exitcode
                    if not worker.ready:
                        self._start_failed(index, f"worker exited with code {code} before it was ready")
                    else:
                        fail_worker(index, ERROR, f"grader process died (exit code {code})")
                elif not worker.ready and now >= worker.started_at + cfg.startup_timeout_s:
                    self._start_failed(index, f"not ready after {cfg.startup_timeout_s} s")
                elif worker.inflight and now >= worker.head_since + cfg.timeout_s:
                    fail_worker(index, TIMEOUT, f"grader exceeded the {cfg.timeout_s} s timeout")

            if remaining and time.monotonic() >= batch_deadline:
                why = f"the batch exceeded batch_timeout_s={cfg.batch_timeout_s} s before this call finished"
                for index, worker in enumerate(self._workers):
                    if worker.inflight:
                        for i in worker.inflight:
                            finish(i, TIMEOUT, why)
                        worker.inflight.clear()
                        worker.sizes.clear()
                        self._replace(index)  # its queued calls must not answer into the next batch
                while pending:
                    finish(pending.popleft(), TIMEOUT, why)
