"""The local backend: everything on one machine.

- `InlineBackend` (`mode="sync"`): generation runs in the learner's process, on demand, with a separate
  copy of the weights. Without `fixed_delay` it is classic synchronous RL (generate, then train, staleness
  0); with `fixed_delay=d` it generates each batch with the weights of d versions ago (exact, deterministic
  staleness: what the study uses).
- `ProcessBackend` (`mode="async"`): rollout workers are separate processes that generate continuously
  with the newest weights they may use, while the learner trains; a dispatcher thread in the learner's
  process issues prompts, collects groups into the staleness buffer, and restarts a worker that dies
  (its prompts are re-queued).

Both satisfy the `Backend` protocol (`asympo.runtime.backend`).
"""

from __future__ import annotations

import atexit
import os
import queue as queue_mod
import time
import traceback
from collections import deque
from dataclasses import replace

import torch

from asympo.engines.openai import OpenAIEngineError
from asympo.engines.weight_sync import WeightSyncError
from asympo.runtime.backend import BackendBase, DispatchingBackend, WorkerSpec, build_worker
from asympo.runtime.records import Batch, PromptTask
from asympo.runtime.scheduler import PromptScheduler
from asympo.runtime.sync import InProcessSync, State, drain, snapshot


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
    spec: WorkerSpec, worker_id: int, task_q, weight_q, result_q, max_tasks: int, parent_pid: int
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
            result_q.put(("groups", worker_id, worker.run(ready)))
    except KeyboardInterrupt:
        pass
    except (OpenAIEngineError, WeightSyncError) as e:  # a server's one-line error says it all
        result_q.put(("error", worker_id, str(e)))
    except BaseException:
        result_q.put(("error", worker_id, traceback.format_exc()))


class _WorkerHandle:
    # Each worker has queues of its own: a process killed while writing to a shared queue would leave
    # that queue's lock held forever and silence every other worker.
    def __init__(self, ctx, spec: WorkerSpec, worker_id: int, max_tasks: int):
        self.id = worker_id
        self.task_q = ctx.Queue()
        self.weight_q = ctx.Queue()
        self.result_q = result_q = ctx.Queue()
        self.outstanding: set[int] = set()
        self.process = ctx.Process(
            target=_worker_main,
            args=(spec, worker_id, self.task_q, self.weight_q, result_q, max_tasks, os.getpid()),
            name=f"asympo-rollout-{worker_id}",
            daemon=False,  # may start a reward pool; close() (or the atexit hook) ends it
        )
        self.process.start()


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
        self.buffer.close("backend closed")

    # ------------------------------------------------------------------ learner side

    def publish(self, state: State, version: int) -> None:
        self._add_version(snapshot(state, share_memory=True), version)
        with self.lock:
            self._learner_version = version

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
            return {v: s for v, s in self._history.items() if v != newest}

    # ------------------------------------------------------------------ dispatcher thread

    def _dispatch_once(self) -> None:
        self._issue()
        self._collect()
        self._watch_workers()

    def _issue(self) -> None:
        with self.lock:
            tasks = self.scheduler.issue(self._learner_version)
            for t in tasks:
                w = min(self.workers, key=lambda w: len(w.outstanding))
                w.outstanding.add(t.group_id)
                w.task_q.put(t)

    def _collect(self) -> None:
        got = False
        for w in list(self.workers):
            try:
                kind, worker_id, payload = w.result_q.get_nowait()
            except (queue_mod.Empty, OSError, ValueError):
                continue
            got = True
            if kind == "error":
                self.buffer.close(f"rollout worker {worker_id} failed:\n{payload}")
                self._stop.set()
                return
            for group in payload:
                with self.lock:
                    w.outstanding.discard(group.group_id)
                self._arrived(group)
        if not got:
            time.sleep(0.02)

    def _watch_workers(self) -> None:
        for i, w in enumerate(self.workers):
            if w.process.is_alive() or self._stop.is_set():
                continue
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
