"""Group-relative advantages (docs/design.md#advantages).

Rewards come as a flat vector of N groups of G responses each, group-major (the G responses to prompt 0
first). Every estimator is zero-sum within each group, and a group whose rewards are all equal gets
exact zeros (never NaN): it carries no learning signal and is counted as `batch/zero_adv_groups`.

This module imports nothing else of asympo's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch

__all__ = ["ESTIMATORS", "constant_groups", "get_estimator", "group_advantages", "register_estimator"]

EstimatorFn = Callable[[torch.Tensor], torch.Tensor]  # rewards [N, G] -> advantages [N, G]

ESTIMATORS: dict[str, EstimatorFn] = {}


def register_estimator(name: str):
    """Decorator: register `fn(rewards [N, G]) -> advantages [N, G]` under `name`."""

    def deco(fn: EstimatorFn) -> EstimatorFn:
        if name in ESTIMATORS:
            raise ValueError(f"estimator {name!r} is already registered")
        ESTIMATORS[name] = fn
        return fn

    return deco


@register_estimator("grpo")
def grpo(r: torch.Tensor) -> torch.Tensor:
    """(r - mean) / (std + 1e-6), std the unbiased sample std of the group (0 for G = 1)."""
    centered = r - r.mean(-1, keepdim=True)
    std = r.std(-1, keepdim=True, correction=1) if r.shape[-1] > 1 else torch.zeros_like(r[..., :1])
    return centered / (std + 1e-6)


@register_estimator("dr_grpo")
def dr_grpo(r: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: r - mean, no std normalisation."""
    return r - r.mean(-1, keepdim=True)


@register_estimator("rloo")
def rloo(r: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline: r_i - mean_{j≠i} r_j = G/(G-1) · (r_i - mean)."""
    G = r.shape[-1]
    if G < 2:
        raise ValueError("estimator 'rloo' needs group_size >= 2 (a leave-one-out mean needs two samples)")
    return (r - r.mean(-1, keepdim=True)) * (G / (G - 1))


def get_estimator(estimator: str) -> EstimatorFn:
    """A registered estimator by name, or a user function by import path `pkg.module:function`; ValueError
    naming the valid ones (or why the import failed) otherwise."""
    if estimator in ESTIMATORS:
        return ESTIMATORS[estimator]
    if ":" in estimator:
        module_name, _, attr = estimator.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"estimator {estimator!r} cannot be imported: {e}") from e
        return fn
    raise ValueError(
        f"unknown estimator {estimator!r}; valid estimators: {', '.join(sorted(ESTIMATORS))} "
        "(or an import path 'pkg.module:function')"
    )


def _as_groups(rewards: torch.Tensor | Sequence[float], group_size: int) -> torch.Tensor:
    r = torch.as_tensor(rewards)
    if not r.is_floating_point():
        r = r.to(torch.get_default_dtype())
    if r.dim() != 1:
        raise ValueError(f"rewards must be a flat [N*G] vector, got shape {list(r.shape)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if r.numel() % group_size:
        raise ValueError(
            f"rewards length {r.numel()} is not divisible by group_size {group_size} "
            "(rewards must be N complete groups of G responses, group-major)"
        )
    if not torch.isfinite(r).all():
        raise ValueError("rewards contain NaN or inf")
    return r.view(-1, group_size)


def constant_groups(rewards: torch.Tensor | Sequence[float], group_size: int) -> torch.Tensor:
    """Which groups have all-equal rewards (no learning signal).  # [N*G] -> [N] bool"""
    r = _as_groups(rewards, group_size)
    return (r == r[:, :1]).all(-1)


def group_advantages(
    rewards: torch.Tensor | Sequence[float], group_size: int, estimator: str = "grpo"
) -> torch.Tensor:
    """Group-relative advantages, zero-sum per group.  # rewards [N*G] -> advantages [N*G]

    `estimator`: `grpo` (r - mean)/(std + 1e-6), `dr_grpo` r - mean, `rloo` leave-one-out, or an import
    path to `fn(rewards [N, G]) -> [N, G]`.
    """
    fn = get_estimator(estimator)
    r = _as_groups(rewards, group_size)
    adv = fn(r)
    if tuple(adv.shape) != tuple(r.shape):
        raise ValueError(
            f"estimator {estimator!r} returned shape {list(adv.shape)}, expected {list(r.shape)}"
        )
    adv = torch.where((r == r[:, :1]).all(-1, keepdim=True), torch.zeros_like(adv), adv)
    return adv.reshape(-1)
