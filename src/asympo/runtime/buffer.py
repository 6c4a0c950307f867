"""The staleness buffer: completed rollout groups wait here until the learner takes them.

It stores groups and blocks the learner; which groups form a batch and which are dropped as stale is the
staleness policy's decision (`asympo.runtime.staleness`, where the whole staleness story is told). The
buffer calls nobody back: `take` returns the dropped groups and the backend schedules replacements, under
the one lock the backend shares with it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

from asympo.runtime.records import DropRecord, RolloutGroup
from asympo.runtime.staleness import PolicyState, StalenessPolicy, check_resumable

STALENESS_POLICIES = ("wait", "drop")


@dataclass
class BufferConfig:
    """How stale a trained-on sample may be, and how that is enforced (see `asympo.runtime.staleness`)."""

    max_staleness: int = 4
    """Largest allowed `learner_version - policy_version` of any sample at its optimiser step."""
    policy: str = "wait"
    """`wait`: hold back rollouts until fresh-enough weights are loaded (nothing dropped); `drop`: generate
    with the newest weights and drop groups that are too stale when the learner reaches them."""
    fixed_delay: int | None = None
    """If set, train every batch exactly this many versions late (deterministic; for studies). Overrides
    `policy` and `max_staleness`."""
    max_ahead: int = 2
    """In `drop` mode, how many steps ahead of the learner rollouts may be scheduled (back-pressure)."""

    def __post_init__(self):
        if not isinstance(self.max_staleness, int) or self.max_staleness < 0:
            raise ValueError(f"buffer.max_staleness must be an int >= 0, got {self.max_staleness!r}")
        if self.policy not in STALENESS_POLICIES:
            raise ValueError(
                f"buffer.policy must be one of {', '.join(STALENESS_POLICIES)}, got {self.policy!r}"
            )
        if self.fixed_delay is not None and (not isinstance(self.fixed_delay, int) or self.fixed_delay < 0):
            raise ValueError(f"buffer.fixed_delay must be None or an int >= 0, got {self.fixed_delay!r}")
        if not isinstance(self.max_ahead, int) or self.max_ahead < 0:
            raise ValueError(f"buffer.max_ahead must be an int >= 0, got {self.max_ahead!r}")


class BufferClosed(RuntimeError):
    """Raised to a waiting learner when the buffer is closed (the run is shutting down or failed)."""


class StalenessBuffer:
    """Thread-safe store of completed groups; `take` blocks until the policy admits a batch or drops some.

    `lock` is the backend's lock (one lock guards the scheduler and the buffer, so there is no lock order
    to get wrong); a private one is made when None.
    """

    def __init__(self, policy: StalenessPolicy, lock: threading.RLock | None = None):
        self.policy = policy
        self._cond = threading.Condition(lock if lock is not None else threading.RLock())
        self._groups: deque[RolloutGroup] = deque()
        self._closed: str | None = None
        self.state = PolicyState(params=policy.params())
        self.dropped: list[DropRecord] = []

    def put(self, group: RolloutGroup) -> None:
        with self._cond:
            self._groups.append(group)
            self._cond.notify_all()

    def close(self, reason: str = "closed") -> None:
        with self._cond:
            self._closed = reason
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._groups)

    def pending(self) -> list[RolloutGroup]:
        """Groups not yet trained on (saved with checkpoints so none is lost)."""
        with self._cond:
            return list(self._groups)

    def take(
        self, n_groups: int, learner_version: int, timeout: float | None = 0.0
    ) -> tuple[list[RolloutGroup] | None, list[DropRecord]]:
        """(the batch the policy admits at `learner_version`, or None; the groups it dropped as stale).

        Waits up to `timeout` seconds (None = forever, 0 = not at all) for either to be non-empty, so the
        caller can schedule replacements for drops before waiting again."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if learner_version < self.state.last_version:
                raise ValueError(
                    f"learner versions must not decrease: got {learner_version} after {self.state.last_version}"
                )
            self.state.last_version = learner_version
            while True:
                ready, stale = self.policy.admit(list(self._groups), n_groups, learner_version)
                for g in [*stale, *(ready or [])]:
                    self._groups.remove(g)
                drops = [
                    DropRecord(g.group_id, g.problem_id, "stale", learner_version - g.policy_version)
                    for g in stale
                ]
                for d in drops:
                    self.state.dropped[d.reason] = self.state.dropped.get(d.reason, 0) + 1
                self.dropped += drops
                if ready is not None or drops:
                    return ready, drops
                if self._closed:
                    raise BufferClosed(self._closed)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    if timeout:
                        raise TimeoutError(
                            f"no batch of {n_groups} groups for learner version {learner_version} "
                            f"after {timeout:.0f}s ({len(self._groups)} groups buffered)"
                        )
                    return None, []
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        with self._cond:
            return {
                "policy": asdict(self.state),
                "groups": [g.to_json() for g in self._groups],
            }

    def load_state_dict(self, state: dict) -> None:
        with self._cond:
            check_resumable(self.policy, state["policy"])
            self.state = PolicyState(**{**state["policy"], "params": self.policy.params()})
            self._groups.extend(RolloutGroup.from_json(g) for g in state["groups"])
