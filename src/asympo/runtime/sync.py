"""Versioned weight sync between the learner and the rollout workers.

The learner publishes `(version, state_dict)` after its optimiser steps; each worker keeps the versions it
may still need in a `WeightStore` and loads into its engine the one a task asks for. Which version that is,
and which versions are still needed, the staleness policy decides (`asympo.runtime.staleness`).
Transports: `InProcessSync` (same process); the process backend puts shared-memory snapshots on one queue
per worker (`drain` moves them into the worker's store); the Ray backend passes object-store references.
"""

from __future__ import annotations

import queue as queue_mod
from collections.abc import Mapping

import torch

from asympo.runtime.records import PromptTask
from asympo.runtime.staleness import StalenessPolicy, choose_version

State = Mapping[str, torch.Tensor]


def snapshot(state: State, share_memory: bool = False) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict that the learner's next step cannot change."""
    out = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
    if share_memory:
        for v in out.values():
            v.share_memory_()
    return out


class WeightStore:
    """The weight versions a worker holds, and which one a task may use."""

    def __init__(self) -> None:
        self.versions: dict[int, State] = {}

    def add(self, version: int, state: State) -> None:
        if self.versions and version <= max(self.versions):
            raise ValueError(f"weight versions must increase: got {version} after {max(self.versions)}")
        self.versions[version] = state

    @property
    def newest(self) -> int | None:
        return max(self.versions) if self.versions else None

    def select(self, task: PromptTask) -> int | None:
        """The version to generate `task` with, or None if the right one has not arrived yet."""
        return choose_version(task.versions, self.versions, f"task {task.group_id}")

    def prune(self, keep_from: int) -> None:
        """Forget versions older than `keep_from` (never the newest)."""
        newest = self.newest
        for v in [v for v in self.versions if v < keep_from and v != newest]:
            del self.versions[v]


class InProcessSync:
    """Publish straight into a worker's store (the synchronous and study backends)."""

    def __init__(self, store: WeightStore, policy: StalenessPolicy):
        self.store = store
        self.policy = policy

    def publish(self, state: State, version: int) -> None:
        self.store.add(version, snapshot(state))
        self.store.prune(self.policy.keep_from(version))


def drain(q, store: WeightStore, block: bool = False, timeout: float | None = None) -> int:
    """Move every version waiting in queue `q` into `store`; returns how many arrived."""
    n = 0
    while True:
        try:
            version, state = q.get(block=block and n == 0, timeout=timeout)
        except queue_mod.Empty:
            return n
        store.add(version, state)
        n += 1
