"""Which prompt to generate next, for which step, with which weights — and which ones are in flight.

The scheduler owns the data position: prompts are drawn epoch by epoch in a seeded shuffled order, each
issued once as a `PromptTask` for a learner step (`batch_index`). How far ahead it issues and which weights
a task asks for are the staleness policy's answers (`asympo.runtime.staleness`). It tracks every task in
flight so that a dead worker's prompts are re-queued, a checkpoint can save them (nothing is silently
skipped on resume), and a group dropped for staleness is replaced by a fresh prompt for the current step.
"""

from __future__ import annotations

import random
from collections import deque

from asympo.data.problem import Problem
from asympo.runtime.records import PromptTask
from asympo.runtime.staleness import StalenessPolicy


class PromptScheduler:
    """Issues `prompts_per_step` groups of `group_size` samples per learner step."""

    def __init__(
        self,
        problems: list[Problem],
        *,
        prompts_per_step: int,
        group_size: int,
        policy: StalenessPolicy,
        seed: int = 0,
    ):
        if not problems:
            raise ValueError("the task has no training problems")
        ids = [p.id for p in problems]
        if len(set(ids)) != len(ids):
            raise ValueError("problem ids must be unique")
        self.problems = problems
        self._by_id = {p.id: p for p in problems}
        self.N, self.G = prompts_per_step, group_size
        self.policy = policy
        self.seed = seed
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)
        self.next_group_id = 0
        self.next_batch = 0  # the next step whose groups have not all been issued
        self.inflight: dict[int, PromptTask] = {}
        self._pending: deque[PromptTask] = deque()  # re-queued or replacement tasks, issued first

    # ------------------------------------------------------------------ data order

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def _next_problem(self) -> Problem:
        if self.position >= len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._epoch_order(self.epoch)
        p = self.problems[self._order[self.position]]
        self.position += 1
        return p

    # ------------------------------------------------------------------ issuing

    def _make_task(self, problem: Problem, k: int) -> PromptTask:
        gid = self.next_group_id
        self.next_group_id += 1
        return self._task(gid, problem, k)

    def _task(self, gid: int, problem: Problem, k: int) -> PromptTask:
        # The sampling seed is a function of the group id, so a re-issued task generates the same text.
        seed = (self.seed * 1_000_003 + gid * 7919) % (2**31 - 1)
        return PromptTask(gid, problem, self.G, k, self.policy.version_rule(k), seed)

    def issue(self, learner_version: int) -> list[PromptTask]:
        """Every task that may start now (re-queued ones first); they are tracked as in flight."""
        out = list(self._pending)
        self._pending.clear()
        last = self.policy.last_issuable_step(learner_version)
        while self.next_batch <= last:
            out += [self._make_task(self._next_problem(), self.next_batch) for _ in range(self.N)]
            self.next_batch += 1
        for t in out:
            self.inflight[t.group_id] = t
        return out

    # ------------------------------------------------------------------ bookkeeping

    def done(self, group_id: int) -> None:
        """The group arrived in the buffer (it is no longer the scheduler's to lose)."""
        self.inflight.pop(group_id, None)

    def requeue(self, group_ids: list[int]) -> None:
        """Tasks whose worker died: issue them again, same prompt, same step."""
        for gid in group_ids:
            task = self.inflight.pop(gid, None)
            if task is not None:
                self._pending.append(task)

    def replace_dropped(self, batch_index: int) -> None:
        """A group was dropped for staleness: schedule a fresh prompt for step `batch_index`."""
        self._pending.append(self._make_task(self._next_problem(), batch_index))

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        tasks = sorted([*self.inflight.values(), *self._pending], key=lambda t: t.group_id)
        return {
            "epoch": self.epoch,
            "position": self.position,
            "next_group_id": self.next_group_id,
            "next_batch": self.next_batch,
            "requeue": [
                {"group_id": t.group_id, "problem_id": t.problem.id, "batch_index": t.batch_index}
                for t in tasks
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where a checkpoint left off; tasks that were in flight are issued again first."""
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._epoch_order(self.epoch)
        self.next_group_id = state["next_group_id"]
        self.next_batch = state["next_batch"]
        self.inflight.clear()
        self._pending.clear()
        for r in state["requeue"]:
            problem = self._by_id.get(r["problem_id"])
            if problem is None:
                raise ValueError(
                    f"checkpoint refers to problem {r['problem_id']!r}, which the task no longer has"
                )
            self._pending.append(self._task(r["group_id"], problem, r["batch_index"]))
