"""A rollout worker: turns prompt tasks into scored rollout groups with an engine and a reward function."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from asympo.engines.base import Engine, SamplingParams
from asympo.runtime.records import PromptTask, RolloutGroup, Sample
from asympo.runtime.staleness import SYNC, StalenessPolicy
from asympo.runtime.sync import WeightStore

# (completions, references) -> (rewards, {"timeouts": int, "errors": int})
Scorer = Callable[[list[str], list[str]], tuple[list[float], dict[str, int]]]


class RolloutWorker:
    """Generates every task of a call in one batched `generate`, with the weights each task may use."""

    def __init__(
        self,
        engine: Engine,
        scorer: Scorer,
        sampling: SamplingParams,
        *,
        worker_id: int = 0,
        store: WeightStore | None = None,
        policy: StalenessPolicy = SYNC,
    ):
        self.engine = engine
        self.scorer = scorer
        self.sampling = sampling
        self.worker_id = worker_id
        self.store = store if store is not None else WeightStore()
        self.policy = policy  # decides which versions the store must still hold

    def ready(self, task: PromptTask) -> bool:
        return self.store.select(task) is not None

    def _load(self, version: int) -> None:
        if self.engine.policy_version != version:
            self.engine.load_weights(self.store.versions[version], version)

    def run(self, tasks: Sequence[PromptTask]) -> list[RolloutGroup]:
        """Generate and score `tasks` (all must be `ready`); tasks needing the same version share a batch."""
        by_version: dict[int, list[PromptTask]] = {}
        for t in tasks:
            v = self.store.select(t)
            if v is None:
                raise RuntimeError(f"task {t.group_id} is not ready: its weights have not arrived")
            by_version.setdefault(v, []).append(t)
        out: list[RolloutGroup] = []
        for version in sorted(by_version):
            t0 = time.monotonic()
            self._load(version)
            sync_s = time.monotonic() - t0
            groups = self._generate(by_version[version])
            groups[0].time_weight_sync = sync_s  # once per load, so a batch's sum counts each load once
            out += groups
        self.prune()
        return out

    def prune(self) -> None:
        """Forget the weight versions no task can ask for any more."""
        if self.store.newest is not None:
            self.store.prune(self.policy.keep_from(self.store.newest))

    def _generate(self, tasks: list[PromptTask]) -> list[RolloutGroup]:
        t0 = time.monotonic()
        sizes = {t.group_size for t in tasks}
        if len(sizes) != 1:
            raise ValueError(f"tasks of one call must share a group size, got {sorted(sizes)}")
        (G,) = sizes
        params = replace(self.sampling, seed=tasks[0].seed)
        completions = self.engine.generate([t.problem.prompt for t in tasks], params, n=G)
        references = [t.problem.reference for t in tasks for _ in range(G)]
        rewards, stats = self.scorer([c.text for c in completions], references)
        elapsed = time.monotonic() - t0
        groups = []
        for j, t in enumerate(tasks):
            chunk = completions[j * G : (j + 1) * G]
            samples = [
                Sample(
                    prompt_ids=list(c.prompt_ids),
                    response_ids=list(c.response_ids),
                    text=c.text,
                    reward=float(rewards[j * G + i]),
                    finish_reason=c.finish_reason,
                    policy_version=c.policy_version,
                    behavior_logp=None if c.behavior_logp is None else [float(x) for x in c.behavior_logp],
                )
                for i, c in enumerate(chunk)
            ]
            groups.append(
                RolloutGroup(
                    group_id=t.group_id,
                    problem_id=t.problem.id,
                    reference=t.problem.reference,
                    batch_index=t.batch_index,
                    policy_version=chunk[0].policy_version,
                    samples=samples,
                    time_generate=elapsed / len(tasks),
                    reward_timeouts=stats.get("timeouts", 0) if j == 0 else 0,
                    reward_errors=stats.get("errors", 0) if j == 0 else 0,
                    worker=self.worker_id,
                )
            )
        return groups
