"""The local backend: everything on one machine.

- `InlineBackend` (`mode="sync"`): generation runs in the learner's process, on demand, with a separate
  copy of the weights. Without `fixed_delay` it is classic synchronous RL (generate, then train, staleness
  0); with `fixed_delay=d` it generates each batch with the weights of d versions ago (exact, deterministic
  staleness: what the study uses).
- `ProcessBackend` (`mode="async"`): rollout workers are separate processes that generate continuously
  with the newest weights they may use, while the learner trains; a dispatcher thread in the learner's
  process issues prompts, collects groups into the staleness buffer, and restarts a worker that dies
  (its prompts are re-queued). The dispatcher sleeps in one blocking wait on the workers' result pipes,
  their process sentinels and a wake-up pipe (written when the learner's version changes), so it takes
  no CPU from the learner between events.

Both satisfy the `Backend` protocol (`asympo.runtime.backend`).
"""

from __future__ import annotations

import atexit
import os
import queue as queue_mod
import threading
import time
import traceback
from collections import deque
from dataclasses import replace
from multiprocessing.connection import wait

import torch

from asympo.engines.openai import OpenAIEngineError
from asympo.engines.weight_sync import WeightSyncError
from asympo.runtime.backend import BackendBase, DispatchingBackend, WorkerSpec, build_worker
from asympo.runtime.records import Batch, PromptTask
from asympo.runtime.scheduler import PromptScheduler
from asympo.runtime.sync import InProcessSync, SharedState, State, drain, snapshot


class InlineBackend(BackendBase):
    """Generate in the learner's process when the learner asks for a batch."""

    def __init__(self, spec: WorkerSpec, scheduler: PromptScheduler):
        super().__init__(scheduler)
        self.worker = build_worker(replace(spec, policy=scheduler.policy), worker_id=0)
        self.sync = InProcessSync(self.worker.store, scheduler.policy)
        self._waiting: deque[PromptTask] = deque()

    def start(self, state: State, version: int, history: dict[int, State] | None = None) -> None:
        for v in sorted(history or {}):
            self.worker.store.add(v, history[v])
        self.publish(state, version)

    def publish(self, state: State, version: int) -> None:
        self.sync.publish(state, version)

    def history(self) -> dict[int, State]:
        newest = self.worker.store.newest
        return {v: s for v, s in self.worker.store.versions.items() if v != newest}

    def next_batch(self, learner_version: int, n_groups: int) -> Batch:
        t0 = time.monotonic()
        dropped = []
        while True:
            ready, drops = self._take_once(learner_version, n_groups, timeout=0)
            dropped += drops
            if ready is not None:
                return self._batch(ready, learner_version, t0, dropped)
            with self.lock:
                self._waiting.extend(self.scheduler.issue(learner_version))
            # Only what this step needs is generated now; later steps' tasks wait their turn.
            now = [t for t in self._waiting if t.batch_index <= learner_version and self.worker.ready(t)]
            if not now:
                raise RuntimeError(
                    f"no rollout can be generated for step {learner_version}: "
                    f"{len(self._waiting)} tasks wait for weights that were never published"
                )
            for t in now:
                self._waiting.remove(t)
            for group in self.worker.run(now):
                self._arrived(group)

    def close(self) -> None:
        self.buffer.close("backend closed")


def _worker_main(
    spec: WorkerSpec, worker_id: int, task_q, weight_q, result_conn, max_tasks: int, parent_pid: int
) -> None:
    """Rollout worker process: take tasks, wait for the weights they need, generate, send groups back.
    Exits on a `None` task or when the learner's process is gone (it is not a daemon: its reward pool
    has processes of its own, which daemonic processes may not start)."""
    try:
        torch.set_num_threads(spec.threads)
        worker = build_worker(spec, worker_id)
        pending: list[PromptTask] = []
        while True:
            if os.getppid() != parent_pid:
                return  # the learner died without closing us
            drain(weight_q, worker.store)
            try:
                while True:
                    task = task_q.get(block=not pending, timeout=0.05)
                    if task is None:
                        return
                    pending.append(task)
            except queue_mod.Empty:
                pass
            ready = [t for t in pending if worker.ready(t)][:max_tasks]
            if not ready:
                drain(weight_q, worker.store, block=True, timeout=0.05)
                continue
            for t in ready:
                pending.remove(t)
            result_conn.send(("groups", worker_id, worker.run(ready)))
    except KeyboardInterrupt:
        pass
    except (OpenAIEngineError, WeightSyncError) as e:  # a server's one-line error says it all
        _send_error(result_conn, worker_id, str(e))
    except BaseException:
        _send_error(result_conn, worker_id, traceback.format_exc())


def _send_error(result_conn, worker_id: int, text: str) -> None:
    try:
        result_conn.send(("error", worker_id, text))
    except OSError:
        pass  # the learner is gone (its end of the pipe closed): nobody left to tell


class _WorkerHandle:
    # Each worker has queues of its own: a process killed while writing to a shared queue would leave
    # that queue's lock held forever and silence every other worker. Results come back on a pipe (not a
    # queue) so that the dispatcher can block on it with `multiprocessing.connection.wait`; only the
    # worker holds its write end, so the pipe reads EOF (rather than hanging) once the worker is gone.
    def __init__(self, ctx, spec: WorkerSpec, worker_id: int, max_tasks: int):
        self.id = worker_id
        self.task_q = ctx.Queue()
        self.weight_q = ctx.Queue()
        self.results, result_w = ctx.Pipe(duplex=False)
        self.results_open = True  # False after EOF: a dead worker's pipe is readable forever
        self.outstanding: set[int] = set()
        self.process = ctx.Process(
            target=_worker_main,
            args=(spec, worker_id, self.task_q, self.weight_q, result_w, max_tasks, os.getpid()),
            name=f"asympo-rollout-{worker_id}",
            daemon=False,  # may start a reward pool; close() (or the atexit hook) ends it
        )
        self.process.start()
        result_w.close()  # the child has its copy


class ProcessBackend(DispatchingBackend):
    """Rollout worker processes generating while the learner trains."""

    def __init__(
        self,
        spec: WorkerSpec,
        scheduler: PromptScheduler,
        *,
        num_workers: int = 1,
        max_tasks_per_call: int = 16,
        batch_timeout_s: float = 1800.0,
        max_restarts: int = 3,
    ):
        super().__init__(scheduler, batch_timeout_s=batch_timeout_s, max_restarts=max_restarts)
        if num_workers < 1:
            raise ValueError(f"rollout.num_workers must be >= 1, got {num_workers}")
        self.spec = replace(spec, policy=scheduler.policy)
        self.num_workers = num_workers
        self.max_tasks = max_tasks_per_call
        self._ctx = torch.multiprocessing.get_context("spawn")
        self.workers: list[_WorkerHandle] = []
        self._history: dict[int, State] = {}  # published versions a (re)started worker may still need
        # The dispatcher blocks until a result, a worker's death or this pipe wakes it; the learner's thread
        # writes a byte when it changes what may be issued (a new version, dropped groups) or stops it.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self, state: State, version: int, history: dict[int, State] | None = None) -> None:
        # Non-daemonic workers: make sure they are told to stop even if the caller never calls close().
        atexit.register(self.close)
        self.workers = [
            _WorkerHandle(self._ctx, self.spec, i, self.max_tasks) for i in range(self.num_workers)
        ]
        for v in sorted(history or {}):
            self._add_version(snapshot(history[v], share_memory=True), v)
        self.publish(state, version)
        self._start_dispatcher("asympo-dispatch")

    def close(self) -> None:
        atexit.unregister(self.close)
        self._stop_dispatcher()
        for w in self.workers:
            try:
                w.task_q.put(None)
            except (OSError, ValueError):
                pass
        for w in self.workers:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.results.close()
        self.buffer.close("backend closed")
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ learner side

    def publish(self, state: State, version: int) -> None:
        self._add_version(snapshot(state, share_memory=True), version)
        with self.lock:
            self._learner_version = version
        self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_w < 0:
                return  # closed
            try:
                os.write(self._wake_w, b"w")
            except BlockingIOError:
                pass  # the pipe is full of unread wake-ups: the dispatcher will wake anyway

    def _add_version(self, shared: State, version: int) -> None:
        with self.lock:
            self._history[version] = shared
            for v in [v for v in self._history if v < self.policy.keep_from(version)]:
                del self._history[v]
            for w in self.workers:
                w.weight_q.put((version, shared))

    def history(self) -> dict[int, State]:
        with self.lock:
            newest = max(self._history, default=None)
            old = {v: s for v, s in self._history.items() if v != newest}
        # Plain copies (checkpoints are rare): a published version's tensors are views of one block, and
        # safetensors before its check for disjoint views refuses to save tensors that share a storage.
        return {v: s.independent() if isinstance(s, SharedState) else s for v, s in old.items()}

    # ------------------------------------------------------------------ dispatcher thread

    def _dispatch_once(self) -> None:
        self._issue()
        self._wait_for_event()
        self._collect()
        self._watch_workers()

    def _wait_for_event(self) -> None:
        """Block until a worker sent something, a worker died, or the learner woke us (no polling)."""
        with self.lock:
            handles = [w.results for w in self.workers if w.results_open]
            handles += [w.process.sentinel for w in self.workers]
        if self._wake_r < 0:
            return
        # The timeout is only a safety net: every event that lets more be issued also wakes the pipe.
        ready = wait([*handles, self._wake_r], timeout=1.0)
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def _issue(self) -> None:
        with self.lock:
            tasks = self.scheduler.issue(self._learner_version)
            for t in tasks:
                w = min(self.workers, key=lambda w: len(w.outstanding))
                w.outstanding.add(t.group_id)
                w.task_q.put(t)

    def _collect(self) -> None:
        for w in list(self.workers):
            while w.results_open:
                try:
                    if not w.results.poll():
                        break
                    kind, worker_id, payload = w.results.recv()
                except (EOFError, OSError):
                    # The worker exited (or died mid-message); its sentinel tells `_watch_workers`.
                    w.results_open = False
                    break
                if kind == "error":
                    self.buffer.close(f"rollout worker {worker_id} failed:\n{payload}")
                    self._stop.set()
                    return
                for group in payload:
                    with self.lock:
                        w.outstanding.discard(group.group_id)
                    self._arrived(group)

    def _watch_workers(self) -> None:
        for i, w in enumerate(self.workers):
            if w.process.is_alive() or self._stop.is_set():
                continue
            self._collect()  # what it sent before it died (an error report, finished groups) comes first
            if self._stop.is_set():
                return
            # A dead worker: re-queue its prompts, restart it and give it the weights it may need.
            lost = sorted(w.outstanding)
            if not self._worker_died(i, f"exit code {w.process.exitcode}", lost):
                self._stop.set()
                return
            with self.lock:
                new = _WorkerHandle(self._ctx, self.spec, i, self.max_tasks)
                for v in sorted(self._history):
                    new.weight_q.put((v, self._history[v]))
                self.workers[i] = new
            w.results.close()
