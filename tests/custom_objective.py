"""A user objective loaded by import path in tests (`tests.custom_objective:half_naive`)."""

import torch


def half_naive(logp, mask, adv, behavior_logp, *, factor: float = 1.0):
    return -(factor * adv)[:, None] * logp * torch.ones_like(mask), {"custom/factor": factor}
