"""The `Backend` protocol that the training loop drives, and what every backend shares.

A backend owns the rollout side of a run: the prompt scheduler, the rollout workers, the weight transport
and the staleness buffer. The learner only calls `start`, `next_batch`, `publish`, `state_dict` and
`close`; the local (inline or processes) and Ray backends satisfy the same protocol and pass the same tests.
"""

from __future__ import annotations

import dataclasses
import threading
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from asympo.engines.base import SamplingParams
from asympo.runtime.buffer import BufferConfig, StalenessBuffer
from asympo.runtime.records import Batch, DropRecord, RolloutGroup
from asympo.runtime.scheduler import PromptScheduler
from asympo.runtime.sync import State
from asympo.runtime.worker import RolloutWorker, Scorer


class Backend(Protocol):
    def start(self, state: State, version: int) -> None:
        """Start the rollout side with the learner's initial weights."""

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
    threads: int = 1
    keep_versions: int = 1
    """Weight versions a worker holds; the backends set it from the buffer config (`worker_spec`)."""


def make_scorer(reward: str, num_workers: int = 0, timeout_s: float = 5.0) -> Scorer:
    """A scorer over the named reward function, run in a process pool with timeouts when num_workers > 0."""
    from asympo.rewards.pool import RewardPool, RewardPoolConfig

    pool = RewardPool(reward, RewardPoolConfig(num_workers=num_workers, timeout_s=timeout_s))

    def score(completions: list[str], references: list[str]) -> tuple[list[float], dict[str, int]]:
        result = pool.score_batch(completions, references)
        return result.rewards, {"timeouts": result.timeouts, "errors": result.errors}

    return score


def worker_spec(spec: WorkerSpec, buffer_cfg: BufferConfig) -> WorkerSpec:
    """`spec` with the weight history its workers must keep: fixed-delay tasks (re-queued ones included)
    ask for exact versions up to `fixed_delay` behind the newest."""
    return dataclasses.replace(spec, keep_versions=(buffer_cfg.fixed_delay or 0) + 1)


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
    scorer = make_scorer(spec.reward, spec.reward_workers, spec.reward_timeout_s)
    return RolloutWorker(engine, scorer, spec.sampling, worker_id=worker_id, keep_versions=spec.keep_versions)


class BackendBase:
    """Scheduler + buffer bookkeeping shared by the backends."""

    def __init__(self, scheduler: PromptScheduler, buffer_cfg: BufferConfig):
        self.scheduler = scheduler
        self.buffer_cfg = buffer_cfg
        self.lock = threading.RLock()
        self.buffer = StalenessBuffer(buffer_cfg, on_drop=self._on_drop)
        self.drop_reasons: Counter[str] = Counter()
        self.reward_timeouts = 0
        self.reward_errors = 0
        self.restarts = 0  # rollout workers restarted after dying

    def _on_drop(self, rec: DropRecord, learner_version: int) -> None:
        with self.lock:
            self.drop_reasons[rec.reason] += 1
            self.scheduler.replace_dropped(learner_version)

    def _arrived(self, group: RolloutGroup) -> None:
        with self.lock:
            self.scheduler.done(group.group_id)
            self.reward_timeouts += group.reward_timeouts
            self.reward_errors += group.reward_errors
            if any(not s.prompt_ids or not s.response_ids for s in group.samples):
                # No tokens to score (e.g. a text-only server and no tokenizer): never trained on; counted
                # with its reason and replaced by a fresh prompt for the same step.
                self.drop_reasons["no_token_ids"] += 1
                self.scheduler.replace_dropped(group.batch_index)
                return
            self.buffer.put(group)

    def state_dict(self) -> dict:
        with self.lock:
            return {
                "scheduler": self.scheduler.state_dict(),
                "buffer": [g.to_json() for g in self.buffer.pending()],
                "drop_reasons": dict(self.drop_reasons),
            }

    def load_state_dict(self, state: dict) -> None:
        with self.lock:
            self.scheduler.load_state_dict(state["scheduler"])
            for g in state["buffer"]:
                self.buffer.put(RolloutGroup.from_json(g))
            self.drop_reasons.update(state.get("drop_reasons", {}))

    def metrics(self) -> dict[str, float]:
        with self.lock:
            out = {f"dropped/{k}": float(v) for k, v in self.drop_reasons.items()}
            out["reward/timeouts"] = float(self.reward_timeouts)
            out["reward/errors"] = float(self.reward_errors)
            out["buffer/size"] = float(len(self.buffer))
            out["workers/restarts"] = float(self.restarts)
            return out


class DispatchingBackend(BackendBase):
    """A backend whose rollout side is driven by a dispatcher thread in the learner's process
    (the process and Ray backends): `_dispatch_once` issues, sends and collects; the learner only waits on
    the buffer."""

    def __init__(self, scheduler: PromptScheduler, buffer_cfg: BufferConfig, batch_timeout_s: float):
        super().__init__(scheduler, buffer_cfg)
        self.batch_timeout_s = batch_timeout_s
        self._learner_version = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_dispatcher(self, name: str) -> None:
        self._thread = threading.Thread(target=self._dispatch_loop, name=name, daemon=True)
        self._thread.start()

    def _stop_dispatcher(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def next_batch(self, learner_version: int, n_groups: int) -> Batch:
        with self.lock:
            self._learner_version = learner_version
        return self.buffer.get_batch(n_groups, learner_version, timeout=self.batch_timeout_s)

    def _dispatch_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._dispatch_once()
        except BaseException:
            self.buffer.close("rollout dispatcher failed:\n" + traceback.format_exc())

    def _dispatch_once(self) -> None:
        raise NotImplementedError
