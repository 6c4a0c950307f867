"""Reward functions `(completion: str, reference: str) -> float`, shared verbatim by training and eval.

`get_reward(name)` resolves a built-in name or an import path `"pkg.mod:fn"` to the function. Built-ins are
imported on first use, so an optional one (reasoning-gym) costs nothing until asked for. Run untrusted text
through `asympo.rewards.pool.RewardPool`, which bounds the time of every call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from asympo.rewards.math import extract_answer, math_reward

RewardFn = Callable[[str, str], float]

# name → import path; resolved lazily so that a missing optional module only fails when it is used.
REWARDS: dict[str, str] = {
    "math": "asympo.rewards.math:math_reward",
    "arithmetic": "asympo.rewards.arithmetic:arithmetic_reward",
    "reasoning_gym": "asympo.rewards.reasoning_gym:reasoning_gym_reward",
}

_NOT_INSTALLED_HINT = {
    "arithmetic": "the arithmetic task module asympo.rewards.arithmetic is not part of this installation",
    "reasoning_gym": "install the optional extra: pip install 'asympo[reasoning-gym]'",
}


def _import_path(path: str) -> RewardFn:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward import path must look like 'pkg.module:function', got {path!r}")
    module = importlib.import_module(module_name)
    fn = module
    for part in attr.split("."):
        try:
            fn = getattr(fn, part)
        except AttributeError:
            raise ValueError(
                f"reward import path {path!r}: {module_name} has no attribute {attr!r}"
            ) from None
    if not callable(fn):
        raise ValueError(f"reward import path {path!r} names a {type(fn).__name__}, not a function")
    return fn


def get_reward(name: str) -> RewardFn:
    """The reward function called `name` (one of REWARDS) or at import path `"pkg.mod:fn"`.

    Unknown name → ValueError listing the valid names; a built-in whose module is not installed →
    ImportError saying what to install.
    """
    if name in REWARDS:
        try:
            return _import_path(REWARDS[name])
        except ImportError as e:
            raise ImportError(
                f"reward {name!r} is unavailable: {_NOT_INSTALLED_HINT.get(name, e)} ({e})"
            ) from e
    if ":" in name:
        return _import_path(name)
    raise ValueError(
        f"unknown reward {name!r}; valid names: {sorted(REWARDS)}, or an import path 'pkg.mod:fn'"
    )


__all__ = ["REWARDS", "RewardFn", "extract_answer", "get_reward", "math_reward"]
