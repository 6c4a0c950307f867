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
    """A detached CPU copy of a state dict that the learner's next step cannot change.

    With `share_memory`, the copy lives in one shared-memory block per dtype (a `SharedState`), which the
    process backend's queues pass to the workers without copying the bytes."""
    if share_memory:
        return SharedState.copy_of(state)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class SharedState(dict):
    """A state dict whose tensors are views into one shared-memory block per dtype.

    Why not `share_memory_()` on every tensor: each call creates a shared-memory segment (a file in
    /dev/shm and an mmap), and pickling each tensor for a queue sends one file descriptor through
    multiprocessing's resource sharer; a model has hundreds of tensors, so publishing a version cost per
    tensor rather than per byte (docs/benchmarks.md, "Weight sync"). Here a version is one segment per
    dtype, and pickling sends only those blocks plus the layout; the receiver rebuilds the views.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], blocks: dict[torch.dtype, torch.Tensor], layout):
        super().__init__(tensors)
        self._blocks = blocks
        self._layout = layout  # ((name, dtype, offset, shape), ...) in insertion order

    @classmethod
    def copy_of(cls, state: State) -> SharedState:
        sizes: dict[torch.dtype, int] = {}
        layout = []
        for k, v in state.items():
            layout.append((k, v.dtype, sizes.get(v.dtype, 0), tuple(v.shape)))
            sizes[v.dtype] = sizes.get(v.dtype, 0) + v.numel()
        blocks = {dt: torch.empty(n, dtype=dt).share_memory_() for dt, n in sizes.items()}
        out = cls._views(blocks, layout)
        for k, v in state.items():
            out[k].copy_(v.detach())  # copy_ reads across devices and layouts (non-contiguous, CUDA)
        return out

    @classmethod
    def _views(cls, blocks, layout) -> SharedState:
        tensors = {}
        for name, dtype, offset, shape in layout:
            n = 1
            for d in shape:
                n *= d
            tensors[name] = blocks[dtype][offset : offset + n].view(shape)
        return cls(tensors, blocks, tuple(layout))

    def independent(self) -> dict[str, torch.Tensor]:
        """Plain per-tensor copies (for safetensors, which refuses tensors that share memory)."""
        return {k: v.clone() for k, v in self.items()}

    def __reduce__(self):
        # Pickle the blocks (torch's multiprocessing reductions share them, one handle each) and the
        # layout, not the views: one file descriptor per dtype instead of one per tensor.
        return (SharedState._views, (self._blocks, self._layout))


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
