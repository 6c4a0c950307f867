"""The Ray backend: rollout workers are Ray actors, weights travel through the Ray object store.

Same protocol and bookkeeping as `ProcessBackend` (`asympo.runtime.local`), with Ray in place of
processes and queues:
- each rollout actor wraps `build_worker(spec, i)`; its weight store holds object-store references, so
  a version costs the actor nothing until a task needs it;
- `publish(state, version)` does one `ray.put` of the CPU weights; each actor is handed the reference
  with its next call (one copy per node in the object store, however many actors);
- a dispatcher thread in the learner's process issues `PromptTask`s from the scheduler, sends ready ones
  to idle actors (one call in flight per actor), collects the `RolloutGroup`s with `ray.wait` into the
  staleness buffer, and restarts an actor that dies (its prompts are re-queued, it is given the weight
  versions its tasks may need).

The learner stays in the driver process; a learner of N > 1 ranks (`learner.parallel`, docs/scaling.md)
runs them on the driver's node with torch's launcher, and on GPUs the backend first reserves them a Ray
placement group there (`reserve_learner_ranks`: one bundle of one GPU per rank), so that no rollout actor
is ever placed on a learner GPU. `init_ray` starts a loopback-only local cluster, or connects to
a running one (`address="auto"` or "host:port"), and ships the driver's `asympo` package to the workers.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

try:
    import ray
    from ray.exceptions import RayActorError, RayError
except ImportError as e:  # pragma: no cover - exercised by a test that hides ray
    raise ImportError(
        "the Ray backend needs Ray, which is not installed; install it with `pip install 'asympo[ray]'`"
    ) from e

from asympo.runtime.backend import DispatchingBackend, WorkerSpec, build_worker
from asympo.runtime.records import PromptTask, RolloutGroup
from asympo.runtime.scheduler import PromptScheduler
from asympo.runtime.sync import State, WeightStore

log = logging.getLogger(__name__)

# Ray actor options a user may set per rollout worker (`worker_resources`).
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources", "accelerator_type")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
FORWARDED_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")


# ---------------------------------------------------------------------------------------------- cluster


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start or connect to Ray unless it is initialised; True if this call did it (then the caller shuts it down).

    `address=None` starts a local cluster with `num_cpus` (default: all cores), no dashboard, whose
    servers listen on 127.0.0.1 only. Otherwise it connects to the running cluster at `address`
    ("auto", "host:port", "ray://host:port"). Either way the driver's `asympo` package is shipped to the
    workers (`runtime_env.py_modules`), so actors run exactly the learner's code, with the driver's
    Hugging Face settings (`FORWARDED_ENV`).
    """
    if ray.is_initialized():
        if address is not None:
            log.warning("Ray is already initialised; ignoring ray_address=%r", address)
        return False
    pkg = str(Path(__file__).resolve().parents[1])  # .../asympo
    # Workers on other nodes do not inherit the driver's environment; these settings should travel.
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    kwargs = dict(
        logging_level=logging.WARNING,
        runtime_env={"py_modules": [pkg], **({"env_vars": env} if env else {})},
    )
    if address is not None:
        ray.init(address=address, **kwargs)
        return True
    _init_local(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **kwargs)
    return True


def _init_local(**kwargs) -> None:
    # Ray picks the machine's routable address for a local node and then listens on all interfaces; with
    # its "cluster mode" off (what it does on macOS and Windows) the node is 127.0.0.1 and every server
    # binds to loopback. There is no public switch for this, hence the private constant.
    try:
        from ray._private import ray_constants
    except ImportError:  # a future Ray may move it; then the warning below tells
        ray_constants = None
    had = hasattr(ray_constants, "ENABLE_RAY_CLUSTER")
    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if had:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**kwargs)
    finally:
        if had:
            ray_constants.ENABLE_RAY_CLUSTER = before
    ip = ray.util.get_node_ip_address()
    if ip not in _LOOPBACK:
        log.warning("the local Ray cluster runs on %s, not loopback: this Ray version ignores the switch", ip)


def actor_options(spec: WorkerSpec, worker_resources: dict | None) -> dict:
    """Ray resources of one rollout actor: `spec.threads` CPUs, and a GPU for a CUDA or vLLM engine."""
    opts: dict = {"num_cpus": spec.threads}
    device = str(spec.engine_kwargs.get("device", "cpu"))
    if spec.engine == "vllm" or device.startswith("cuda"):
        opts["num_gpus"] = 1
    if worker_resources:
        unknown = sorted(set(worker_resources) - set(RESOURCE_KEYS))
        if unknown:
            raise ValueError(
                f"worker_resources has unknown keys {unknown}; allowed: {', '.join(RESOURCE_KEYS)}"
            )
        opts.update(worker_resources)
    return opts


def reserve_learner_ranks(procs: int, bundle: dict, timeout_s: float = 60.0):
    """A placement group of `procs` bundles (e.g. {"GPU": 1, "CPU": 1}), all on this driver's node, where the
    launcher runs the learner ranks. Reserved resources leave Ray's general pool, so actors scheduled
    outside the group (the rollout workers) never land on them. Raises naming what the node lacks."""
    from ray.util.placement_group import placement_group, remove_placement_group

    # Every node offers the resource "node:<ip>"; a sliver of it pins a bundle to that node.
    here = {**bundle, f"node:{ray.util.get_node_ip_address()}": 0.001}
    pg = placement_group([dict(here) for _ in range(procs)], strategy="STRICT_PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except (RayError, TimeoutError) as e:
        remove_placement_group(pg)
        raise RuntimeError(
            f"cannot reserve {procs} learner rank(s) of {bundle} on the driver's node within {timeout_s:.0f}s "
            f"(the cluster has {ray.cluster_resources()}); run the driver on a node with enough GPUs or lower "
            "learner.parallel.procs"
        ) from e
    return pg


# ---------------------------------------------------------------------------------------------- actor


class RolloutActor:
    """A rollout worker in a Ray actor (wrapped with `ray.remote` below)."""

    def __init__(self, spec: WorkerSpec, worker_id: int):
        torch.set_num_threads(spec.threads)
        # The store holds object-store references, materialised only for the versions a call uses.
        self.worker = build_worker(spec, worker_id)

    def ready(self) -> int:
        """Returns (the process id) once the worker is built."""
        return os.getpid()

    def add_weights(self, version: int, ref: list) -> None:
        """Hold weights `version` (`ref` = [ObjectRef], wrapped so that Ray does not fetch it yet)."""
        self.worker.store.add(version, ref[0])
        self.worker.prune()

    def generate(self, tasks: list[PromptTask]) -> list[RolloutGroup]:
        store = self.worker.store
        versions = set()
        for t in tasks:
            v = store.select(t)
            if v is None:
                raise RuntimeError(
                    f"task {t.group_id} (step {t.batch_index}) was sent before its weights: "
                    f"{t.versions}, held {sorted(store.versions)}"
                )
            versions.add(v)
        refs = {v: store.versions[v] for v in versions}
        try:
            for v in versions - {self.worker.engine.policy_version}:
                store.versions[v] = ray.get(refs[v])
            return self.worker.run(tasks)
        finally:
            # Keep references, not tensors: the engine holds the loaded weights, the object store the rest
            # (for the versions the worker still holds after its own pruning).
            store.versions.update({v: r for v, r in refs.items() if v in store.versions})


_RemoteRolloutActor = ray.remote(max_restarts=0, max_task_retries=0)(RolloutActor)


@dataclass
class _Slot:
    """One rollout actor, the call it is running and the newest weight version it was handed."""

    index: int
    actor: object
    call: object | None = None  # ObjectRef of the running `generate`
    tasks: list[PromptTask] = field(default_factory=list)
    newest: int = -1


# ---------------------------------------------------------------------------------------------- backend


class RayBackend(DispatchingBackend):
    """Rollout actors on a Ray cluster generating while the learner (in this process) trains."""

    def __init__(
        self,
        spec: WorkerSpec,
        scheduler: PromptScheduler,
        *,
        num_workers: int = 1,
        max_tasks_per_call: int = 16,
        batch_timeout_s: float = 1800.0,
        max_restarts: int = 3,
        ray_address: str | None = None,
        worker_resources: dict | None = None,
        learner_ranks: int = 0,
        learner_bundle: dict | None = None,
    ):
        """`learner_ranks` > 0 with a `learner_bundle`: reserve that many bundles for the learner ranks
        on the driver's node before any rollout actor starts (`reserve_learner_ranks`)."""
        super().__init__(scheduler, batch_timeout_s=batch_timeout_s, max_restarts=max_restarts)
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"rollout.num_workers must be an int >= 1, got {num_workers!r}")
        if not isinstance(max_tasks_per_call, int) or max_tasks_per_call < 1:
            raise ValueError(f"rollout.max_prompts_per_call must be an int >= 1, got {max_tasks_per_call!r}")
        self.spec = replace(spec, policy=scheduler.policy)
        self.num_workers = num_workers
        self.max_tasks = max_tasks_per_call
        self.ray_address = ray_address
        self.options = actor_options(self.spec, worker_resources)
        self.slots: list[_Slot] = []
        # Published versions (object refs) that a task or a restarted actor may still need.
        self._history = WeightStore()
        self._waiting: list[PromptTask] = []  # issued, not yet sent to an actor
        self._owns_ray = False
        self._closed = False
        self.learner_ranks, self.learner_bundle = learner_ranks, learner_bundle
        self.learner_group = None  # the placement group of the learner ranks, while reserved

    # ------------------------------------------------------------------ lifecycle

    def start(self, state: State, version: int, history: dict[int, State] | None = None) -> None:
        self._owns_ray = init_ray(self.ray_address)
        if self.learner_ranks and self.learner_bundle:
            self.learner_group = reserve_learner_ranks(self.learner_ranks, self.learner_bundle)
        self.slots = [_Slot(i, self._spawn(i)) for i in range(self.num_workers)]
        # Wait for the workers to be built, so that a bad model path or engine fails here, clearly.
        try:
            ray.get([s.actor.ready.remote() for s in self.slots], timeout=self.batch_timeout_s)
        except (RayError, TimeoutError) as e:
            msg = (
                f"the Ray rollout workers did not start (each asks for {self.options}, the cluster has "
                f"{ray.cluster_resources()}): {e}"
            )
            self.close()
            raise RuntimeError(msg) from e
        for v in sorted(history or {}):
            self.publish(history[v], v)
        self.publish(state, version)
        self._start_dispatcher("asympo-ray-dispatch")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_dispatcher()
        with self.lock:
            for s in self.slots:
                ray.kill(s.actor, no_restart=True)
            self.slots = []
            self._history = WeightStore()  # drop the references: the object store may free the weights
        self.buffer.close("backend closed")
        if self.learner_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.learner_group)
            self.learner_group = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def _spawn(self, index: int):
        return _RemoteRolloutActor.options(**self.options).remote(self.spec, index)

    # ------------------------------------------------------------------ learner side

    def publish(self, state: State, version: int) -> None:
        # `ray.put` serialises at once, so later optimiser steps cannot change what was published; only
        # GPU tensors need a copy (to the CPU) first. Actors get the reference with their next call.
        ref = ray.put({k: v.detach().to("cpu") for k, v in state.items()})
        with self.lock:
            self._history.add(version, ref)
            self._history.prune(self.policy.keep_from(version))
            self._learner_version = version

    def history(self) -> dict[int, State]:
        with self.lock:
            refs = {v: r for v, r in self._history.versions.items() if v != self._history.newest}
        return {v: ray.get(r) for v, r in refs.items()}

    # ------------------------------------------------------------------ dispatcher thread

    def _dispatch_once(self) -> None:
        self._issue()
        self._send()
        self._collect()

    def _issue(self) -> None:
        with self.lock:
            self._waiting += self.scheduler.issue(self._learner_version)

    def _send(self) -> None:
        with self.lock:
            idle = [s for s in self.slots if s.call is None]
            ready = [t for t in self._waiting if self._history.select(t) is not None]
            if not idle or not ready:
                return
            # Spread what is ready over the idle actors, oldest steps first.
            share = min(self.max_tasks, math.ceil(len(ready) / len(idle)))
            for s in idle:
                chunk, ready = ready[:share], ready[share:]
                if not chunk:
                    break
                sent = {t.group_id for t in chunk}
                self._waiting = [t for t in self._waiting if t.group_id not in sent]
                self._hand_weights(s)
                s.tasks = chunk
                s.call = s.actor.generate.remote(chunk)

    def _hand_weights(self, slot: _Slot) -> None:
        """Give an idle actor the published versions it has not seen (calls run in order: before `generate`).

        Handing them over only when the actor takes work, rather than at every `publish`, keeps versions
        that a busy actor would never use from piling up (pinned) in the object store.
        """
        for v in sorted(self._history.versions):
            if v > slot.newest:
                slot.actor.add_weights.remote(v, [self._history.versions[v]])
                slot.newest = v

    def _collect(self) -> None:
        with self.lock:
            calls = {s.call: s for s in self.slots if s.call is not None}
        if not calls:
            self._stop.wait(0.02)
            return
        done, _ = ray.wait(list(calls), num_returns=1, timeout=0.02)
        if done:
            done, _ = ray.wait(list(calls), num_returns=len(calls), timeout=0)
        for ref in done:
            slot = calls[ref]
            try:
                groups = ray.get(ref)
            except RayActorError as e:
                if e.actor_init_failed:
                    raise RuntimeError(f"rollout actor {slot.index} could not be restarted: {e}") from e
                if not self._restart(slot, str(e).splitlines()[0] if str(e) else "actor died"):
                    self._stop.set()
                    return
                continue
            except RayError as e:
                self.buffer.close(f"rollout actor {slot.index} failed:\n{e}")
                self._stop.set()
                return
            with self.lock:
                slot.call, slot.tasks = None, []
            for g in groups:
                self._arrived(g)

    def _restart(self, slot: _Slot, why: str) -> bool:
        """A dead actor: re-queue its prompts and start a new one (False: it died too often, stop)."""
        lost = [t.group_id for t in slot.tasks]
        ray.kill(slot.actor, no_restart=True)  # it may be unreachable rather than dead
        if not self._worker_died(slot.index, why, lost):
            return False
        log.warning("rollout actor %d died; restarting it, %d prompts re-queued", slot.index, len(lost))
        with self.lock:
            # The new actor is handed every version still published with its first call.
            self.slots[slot.index] = _Slot(slot.index, self._spawn(slot.index))
        return True
