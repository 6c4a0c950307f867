"""The `Backend` protocol that the training loop drives, and what every backend shares.

A backend owns the rollout side of a run: the prompt scheduler, the rollout workers, the weight transport
and the staleness buffer. The learner only calls `start`, `next_batch`, `publish`, `state_dict` and
`close`; the local (inline or processes) and Ray backends satisfy the same protocol and pass the same tests.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from asympo.engines.base import SamplingParams
from asympo.runtime.buffer import StalenessBuffer
from asympo.runtime.records import Batch, DropRecord, RolloutGroup
from asympo.runtime.scheduler import PromptScheduler
from asympo.runtime.staleness import SYNC, StalenessPolicy
from asympo.runtime.sync import State
from asympo.runtime.worker import RolloutWorker, Scorer


class Backend(Protocol):
    def start(self, state: State, version: int, history: dict[int, State] | None = None) -> None:
        """Start the rollout side with the learner's weights `version`, and (after a resume) the older
        versions in-flight work still needs (`history`, from the checkpoint)."""

    def history(self) -> dict[int, State]:
        """The weight versions older than the newest that in-flight work may still need (what a
        checkpoint must keep; the staleness policy's `keep_from` decides)."""

    def publish(self, state: State, version: int) -> None:
        """Make weights `version` available to the rollout workers."""

    def next_batch(self, learner_version: int, n_groups: int) -> Batch:
        """Block until `n_groups` groups may be trained on at `learner_version`."""

    def state_dict(self) -> dict:
        """Everything needed to resume without losing a prompt (JSON-serialisable)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore before `start`."""

    def metrics(self) -> dict[str, float]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a rollout worker needs to build itself, in-process or in another process (picklable)."""

    engine: str
    model_path: str
    sampling: SamplingParams
    reward: str
    engine_kwargs: dict = field(default_factory=dict)
    reward_workers: int = 0
    reward_timeout_s: float = 5.0
    reward_batch_timeout_s: float | None = 60.0
    """The reward pool's deadline for grading one whole batch (RewardPoolConfig.batch_timeout_s)."""
    threads: int = 1
    policy: StalenessPolicy = SYNC
    """The run's staleness policy: which weight versions a worker uses and keeps."""


def make_scorer(
    reward: str, num_workers: int = 0, timeout_s: float = 5.0, batch_timeout_s: float | None = 60.0
) -> Scorer:
    """A scorer over the named reward function, run in a process pool with timeouts when num_workers > 0:
    `timeout_s` per response, `batch_timeout_s` per batch (None: no batch deadline)."""
    from asympo.rewards.pool import RewardPool, RewardPoolConfig

    pool = RewardPool(
        reward,
        RewardPoolConfig(num_workers=num_workers, timeout_s=timeout_s, batch_timeout_s=batch_timeout_s),
    )

    def score(completions: list[str], references: list[str]) -> tuple[list[float], dict[str, int]]:
        result = pool.score_batch(completions, references)
        return result.rewards, {"timeouts": result.timeouts, "errors": result.errors}

    return score


def build_worker(spec: WorkerSpec, worker_id: int = 0) -> RolloutWorker:
    from asympo.engines import make_engine

    if spec.engine == "openai":
        # The server's `model` is its served name (engine_kwargs), not our path; the model's own tokenizer
        # gives token ids when the server returns none, and model_dir lends config/tokenizer to disk sync.
        from asympo.models.tokenizer import load_tokenizer

        kwargs = {"model_dir": spec.model_path, **spec.engine_kwargs}
        kwargs.setdefault("tokenizer", load_tokenizer(spec.model_path))
        engine = make_engine("openai", **kwargs)
    else:
        engine = make_engine(spec.engine, model=spec.model_path, **spec.engine_kwargs)
    if spec.sampling.return_logprobs and not engine.supports_logprobs:
        raise ValueError(f"engine {spec.engine!r} cannot return the log-probs this objective needs")
    scorer = make_scorer(spec.reward, spec.reward_workers, spec.reward_timeout_s, spec.reward_batch_timeout_s)
    return RolloutWorker(engine, scorer, spec.sampling, worker_id=worker_id, policy=spec.policy)


class BackendBase:
    """Scheduler + buffer bookkeeping shared by the backends, under one lock."""

    def __init__(self, scheduler: PromptScheduler, *, max_restarts: int = 3):
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"rollout.max_restarts must be an int >= 0, got {max_restarts!r}")
        self.scheduler = scheduler
        self.policy = scheduler.policy
        self.lock = threading.RLock()
        self.buffer = StalenessBuffer(self.policy, lock=self.lock)
        self.reward_timeouts = 0
        self.reward_errors = 0
        self.max_restarts = max_restarts  # per worker; one that dies more often stops the run
        self.restarts: Counter[int] = Counter()  # worker index -> restarts after dying
        # Groups dropped as they arrived (no token ids), reported with the next batch so that groups.jsonl
        # names every group that was not trained on.
        self._dropped_on_arrival: list[DropRecord] = []

    def _take_once(self, learner_version: int, n_groups: int, timeout: float | None):
        """`buffer.take`, then a fresh prompt for the current step in place of each group it dropped (the
        scheduler issues it with its next `issue`)."""
        ready, drops = self.buffer.take(n_groups, learner_version, timeout=timeout)
        with self.lock:
            for _ in drops:
                self.scheduler.replace_dropped(learner_version)
        return ready, drops

    def _batch(self, ready: list[RolloutGroup], learner_version: int, t0: float, dropped: list) -> Batch:
        """The learner's batch, with every group dropped since the last one (on arrival or as stale)."""
        with self.lock:
            dropped = self._dropped_on_arrival + dropped
            self._dropped_on_arrival = []
        return Batch(ready, learner_version, time.monotonic() - t0, dropped)

    def _take(self, learner_version: int, n_groups: int, timeout: float | None) -> Batch:
        """Wait (up to `timeout` seconds in all) for the batch the policy admits at `learner_version`."""
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout
        dropped = []
        while True:
            remaining = None if deadline is None else max(1e-3, deadline - time.monotonic())
            try:
                ready, drops = self._take_once(learner_version, n_groups, remaining)
            except TimeoutError:
                raise TimeoutError(
                    f"no batch of {n_groups} groups for learner version {learner_version} after "
                    f"{timeout:.0f}s ({len(self.buffer)} groups buffered, {len(dropped)} dropped as stale "
                    "meanwhile); are the rollout workers alive and is the staleness bound reachable?"
                ) from None
            dropped += drops
            if ready is not None:
                return self._batch(ready, learner_version, t0, dropped)

    def _arrived(self, group: RolloutGroup) -> None:
        with self.lock:
            self.scheduler.done(group.group_id)
            self.reward_timeouts += group.reward_timeouts
            self.reward_errors += group.reward_errors
            if any(not s.prompt_ids or not s.response_ids for s in group.samples):
                # No tokens to score (e.g. a text-only server and no tokenizer): never trained on; counted
                # with its reason and replaced by a fresh prompt for the same step.
                reason = "no_token_ids"
                counts = self.buffer.state.dropped  # the policy state's drop counts: `dropped/<reason>`
                counts[reason] = counts.get(reason, 0) + 1
                self._dropped_on_arrival.append(
                    DropRecord(group.group_id, group.problem_id, reason, detail="a sample has no token ids")
                )
                self.scheduler.replace_dropped(group.batch_index)
                return
            self.buffer.put(group)

    def _worker_died(self, index: int, why: str, lost: list[int]) -> bool:
        """Book a dead worker: its prompts are re-queued; True if it may be restarted, else the run stops
        (the learner's `next_batch` raises `BufferClosed` with the reason)."""
        with self.lock:
            self.scheduler.requeue(lost)
            if self.restarts[index] >= self.max_restarts:
                self.buffer.close(
                    f"rollout worker {index} died ({why}) after {self.restarts[index]} restarts already "
                    f"(rollout.max_restarts={self.max_restarts}); stopping the run. Its output above says "
                    "why; raise rollout.max_restarts if the deaths are transient"
                )
                return False
            self.restarts[index] += 1
            return True

    def state_dict(self) -> dict:
        with self.lock:
            return {"scheduler": self.scheduler.state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with self.lock:
            self.scheduler.load_state_dict(state["scheduler"])
            buffer = state["buffer"]
            if isinstance(buffer, list):  # a checkpoint from before the staleness policy had a state
                buffer = {
                    "policy": {"params": None, "dropped": state.get("drop_reasons", {})},
                    "groups": buffer,
                }
            self.buffer.load_state_dict(buffer)

    def metrics(self) -> dict[str, float]:
        with self.lock:
            out = {f"dropped/{k}": float(v) for k, v in self.buffer.state.dropped.items()}
            out["reward/timeouts"] = float(self.reward_timeouts)
            out["reward/errors"] = float(self.reward_errors)
            out["buffer/size"] = float(len(self.buffer))
            out["workers/restarts"] = float(sum(self.restarts.values()))
            return out


class DispatchingBackend(BackendBase):
    """A backend whose rollout side is driven by a dispatcher thread in the learner's process
    (the process and Ray backends): `_dispatch_once` issues, sends and collects; the learner only waits on
    the buffer."""

    def __init__(self, scheduler: PromptScheduler, *, batch_timeout_s: float, max_restarts: int = 3):
        super().__init__(scheduler, max_restarts=max_restarts)
        if not batch_timeout_s > 0:
            raise ValueError(f"batch_timeout_s must be > 0, got {batch_timeout_s!r}")
        self.batch_timeout_s = batch_timeout_s
        self._learner_version = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_dispatcher(self, name: str) -> None:
        self._thread = threading.Thread(target=self._dispatch_loop, name=name, daemon=True)
        self._thread.start()

    def _stop_dispatcher(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _wake(self) -> None:
        """Tell a dispatcher that blocks between events that more may be issued now (the learner's version
        changed, groups were dropped and replaced) or that it should stop. Polling dispatchers ignore it."""

    def next_batch(self, learner_version: int, n_groups: int) -> Batch:
        with self.lock:
            self._learner_version = learner_version
        self._wake()
        return self._take(learner_version, n_groups, timeout=self.batch_timeout_s)

    def _take_once(self, learner_version: int, n_groups: int, timeout: float | None):
        ready, drops = super()._take_once(learner_version, n_groups, timeout)
        if drops:
            self._wake()  # their replacements are issued by the dispatcher
        return ready, drops

    def _dispatch_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._dispatch_once()
        except BaseException:
            self.buffer.close("rollout dispatcher failed:\n" + traceback.format_exc())

    def _dispatch_once(self) -> None:
        raise NotImplementedError
