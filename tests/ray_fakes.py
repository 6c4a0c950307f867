"""Helpers that Ray actors import by path in tests (an actor runs in another process)."""

from __future__ import annotations

import time

from asympo.rewards.arithmetic import arithmetic_reward

SLOW_REWARD_S = 0.05


def slow_reward(completion: str, reference: str) -> float:
    """The arithmetic reward, slowed down so that a rollout call is still running when a test acts on it."""
    time.sleep(SLOW_REWARD_S)
    return arithmetic_reward(completion, reference)
