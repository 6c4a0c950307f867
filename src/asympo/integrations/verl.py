"""ASymPO and SPO as verl policy losses (`actor_rollout_ref.actor.policy_loss.loss_mode=asympo|spo`).

Importing this module registers both losses with verl's `register_policy_loss`. asympo declares it
in verl's `verl.plugins` entry-point group, so `import verl` (in the driver and in every Ray worker)
registers them without any user code. Supports verl 0.9.x (`pip install 'asympo[verl]'`).

verl hands a policy loss token-level tensors `[B, T]`; the advantage of response i is its
`advantages[i, t]` on any response token (verl's outcome estimators broadcast one value per
response). The per-token loss comes from `asympo.objectives`; only the reduction is verl's own
`agg_loss`, with `config.global_batch_info` (dp size, global batch size and token count), so the
loss is invariant to how verl splits the batch over data-parallel ranks and micro-batches.

`loss_agg_mode=seq-mean-token-mean` keeps ASymPO's response-level balance (forward value mean(A_i));
every other mode weighs responses by their length and breaks it (see docs/integrations.md).
Hyperparameters come from `policy_loss` when it is an `ASymPOPolicyLossConfig`
(`policy_loss._target_=asympo.integrations.verl.ASymPOPolicyLossConfig`); otherwise the objective's
defaults apply. The losses never read `old_log_prob`: it is used for the `actor/ppo_kl` diagnostic only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from asympo.integrations import require
from asympo.objectives import (
    LossContext,
    ResponseTerms,
    context_totals,
    get_objective,
    mean_token_nll,
    metric_prefix,
    response_metrics,
)

require("verl", extra="verl", minimum="0.9", below="0.10", module="asympo.integrations.verl")

from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss  # noqa: E402
from verl.workers.config import PolicyLossConfig  # noqa: E402

__all__ = [
    "LOSS_MODES",
    "ASymPOPolicyLossConfig",
    "compute_policy_loss_asympo",
    "compute_policy_loss_spo",
    "response_advantages",
]

LOSS_MODES = ("asympo", "spo")
_RESCALE = ("none", "batch_mean")
# Advantages of one response may differ by float noise only; more means a token-level estimator.
_ADV_RTOL = 1e-4


@dataclass
class ASymPOPolicyLossConfig(PolicyLossConfig):
    """verl's PolicyLossConfig plus the hyperparameters of the asympo and spo losses.

    Select it with `actor_rollout_ref.actor.policy_loss._target_=asympo.integrations.verl.ASymPOPolicyLossConfig`
    and set the fields with `+actor_rollout_ref.actor.policy_loss.<field>=...` (or in a YAML file).
    """

    _target_: str = "asympo.integrations.verl.ASymPOPolicyLossConfig"
    neg_scale: float = 0.5
    """spo: the weight c_i of negative-advantage responses (c_i = 1 for A_i >= 0); >= 0, 1 gives naive REINFORCE."""
    eps: float = 1e-6
    """asympo: floor of the detached mean token NLL that divides each response's term; > 0."""
    rescale: str = "none"
    """asympo: "none" (the paper's form) or "batch_mean" (every term times sg(mean_j l_j); in verl over the
    micro-batch, as verl gives a policy loss no hook before it splits the batch)."""

    def __post_init__(self):
        if not self.neg_scale >= 0:
            raise ValueError(f"ASymPOPolicyLossConfig.neg_scale must be >= 0, got {self.neg_scale}")
        if not self.eps > 0:
            raise ValueError(f"ASymPOPolicyLossConfig.eps must be > 0, got {self.eps}")
        if self.rescale not in _RESCALE:
            raise ValueError(
                f"ASymPOPolicyLossConfig.rescale must be one of {_RESCALE}, got {self.rescale!r}"
            )


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]` for verl's dataclass configs, OmegaConf DictConfigs and dicts alike."""
    if cfg is None:
        return default
    getter = getattr(cfg, "get", None)
    return getter(key, default) if getter is not None else getattr(cfg, key, default)


def _hparams(name: str, config: Any) -> dict[str, Any]:
    """The objective's hparams that `config.policy_loss` sets; unset ones keep the objective's default."""
    policy_loss_cfg = _get(config, "policy_loss")
    out = {}
    for key in get_objective(name).hparams:
        value = _get(policy_loss_cfg, key)
        if value is not None:
            out[key] = value
    return out


def response_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A_i from verl's token-level advantages: their mean over response i's tokens.  # [B, T] -> [B]

    Raises ValueError if the advantages vary within a response: ASymPO and SPO weigh whole responses,
    so they need a response-level (outcome) estimator such as grpo, rloo or reinforce_plus_plus_baseline.
    """
    n = mask.sum(-1)  # [B]
    adv = (advantages * mask).sum(-1) / n.clamp(min=1)  # [B]
    spread = ((advantages - adv[:, None]).abs() * mask).amax(-1) if advantages.shape[-1] else adv * 0
    bad = spread > _ADV_RTOL * (1.0 + adv.abs())
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            "asympo/spo need one advantage per response (algorithm.adv_estimator=grpo, rloo, ...), but "
            f"response {i} has advantages varying by {float(spread[i]):.3g} over its tokens"
        )
    return adv


def _loss(
    name: str,
    old_log_prob: torch.Tensor | None,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str,
    config: Any,
    rollout_is_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    mask = response_mask.to(log_prob.dtype)  # verl passes a bool mask
    adv = response_advantages(advantages.to(log_prob.dtype), mask)  # [B]
    objective, hparams = get_objective(name), _hparams(name, config)
    # verl hands the loss one micro-batch and no hook before the batch is split, so the statistics an
    # objective declares (asympo's batch_mean) are this micro-batch's; the counts are verl's own
    # (global_batch_info, used by agg_loss below).
    stats = objective.batch_stats(hparams)
    ctx = LossContext.from_totals(context_totals(mask, log_prob, stats), stats)
    kwargs = {"ctx": ctx} if objective.takes_ctx else {}
    loss_tok, obj_metrics = objective.fn(log_prob, mask, adv, None, **kwargs, **hparams)
    weight = obj_metrics.pop("weight", None)
    if rollout_is_weights is not None:
        # verl's convention for every policy loss; only present when the user enabled rollout correction.
        loss_tok = loss_tok * rollout_is_weights
    global_batch_info = _get(config, "global_batch_info") or {}
    loss = agg_loss(loss_tok, response_mask, loss_agg_mode, **global_batch_info)

    with torch.no_grad():
        zeros = torch.zeros_like(adv)
        terms = ResponseTerms(
            adv=adv,
            nll=mean_token_nll(log_prob.detach(), mask),
            n_tokens=mask.sum(-1),
            policy=zeros,  # the loss shares depend on verl's aggregation; verl logs actor/pg_loss itself
            total=zeros,
            weight=None if weight is None else weight.detach(),
        )
        # The same diagnostics as asympo's learner (nll/len/weights by sign of A); every micro-batch reports
        # the same keys, as verl's dp aggregation needs equal-length metric lists.
        shared = response_metrics(terms, metric_prefix(name))
        metrics = {f"actor/{k}": v for k, v in shared.items() if k not in _LOSS_KEYS}
        if old_log_prob is not None:
            # verl's usual k1 estimate of KL(old || current); in bypass mode "old" is the sampler.
            kl = ((old_log_prob - log_prob) * mask).sum() / mask.sum().clamp(min=1)
            metrics["actor/ppo_kl"] = kl.item()
    metrics.update({f"actor/{k}": v for k, v in obj_metrics.items()})
    return loss, metrics


_LOSS_KEYS = ("loss/pos", "loss/neg", "loss/policy", "loss/total")


def _policy_loss(name: str, doc: str):
    """A verl policy-loss function (verl's keyword signature) for our objective `name`."""

    def compute_policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "seq-mean-token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return _loss(
            name, old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights
        )

    compute_policy_loss.__name__ = compute_policy_loss.__qualname__ = f"compute_policy_loss_{name}"
    compute_policy_loss.__doc__ = doc
    return register_policy_loss(name)(compute_policy_loss)


compute_policy_loss_asympo = _policy_loss(
    "asympo",
    "ASymPO: per response A_i · l_i / sg(max(l_i, eps)); tensors `[B, T]`, returns (scalar loss, metrics).",
)
compute_policy_loss_spo = _policy_loss(
    "spo", "SPO: per response c_i · A_i · l_i, c_i = 1 if A_i >= 0 else neg_scale; tensors `[B, T]`."
)
