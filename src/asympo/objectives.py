"""Policy objectives (all minimised) and their aggregation (docs/design.md#objectives).

Every objective is a pure function registered under a name:

    fn(logp, mask, adv, behavior_logp, **hparams) -> (loss_tok [B, T], metrics)

`logp` is always the *current* policy's log-prob of the sampled tokens, `behavior_logp` always the
sampler's (never "old"). The per-token loss is then reduced by `aggregate` (a separate choice,
`agg`). Under the default `seq-mean-token-mean`, a per-token loss of `-A_i · w_i · logp[i,t]` turns
into the per-response term `A_i · w_i · l_i` of the paper, with `l_i` the mean token NLL.

`policy_loss` is the one entry point the learner and the integrations call: it validates the input,
runs the objective, aggregates, adds the optional KL and entropy terms and computes the diagnostics of
docs/design.md#diagnostics (`nll/pos`, `nll/neg`, `nll/ratio`, `loss/pos`, `loss/neg`, ...).

This module imports nothing else of asympo's.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "AGG_MODES",
    "OBJECTIVES",
    "Objective",
    "aggregate",
    "get_objective",
    "mean_token_nll",
    "needs_behavior_logp",
    "policy_loss",
    "register_objective",
]

ObjectiveFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]

AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")


@dataclass(frozen=True)
class Objective:
    """A registered objective: the function plus what the runtime must know about it."""

    name: str
    fn: ObjectiveFn
    needs_behavior_logp: bool
    hparams: dict[str, object]  # name -> default

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, *, needs_behavior_logp: bool = False):
    """Decorator: register `fn(logp, mask, adv, behavior_logp, *, **hparams)` under `name`.

    The keyword-only parameters of `fn` (with their defaults) are the objective's hparams; anything
    else passed to `policy_loss` is rejected with a ValueError listing them.
    """

    def deco(fn: ObjectiveFn) -> ObjectiveFn:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = _make_objective(name, fn, needs_behavior_logp)
        return fn

    return deco


def _make_objective(name: str, fn: ObjectiveFn, needs_behavior_logp: bool) -> Objective:
    params = inspect.signature(fn).parameters.values()
    hparams = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return Objective(name, fn, needs_behavior_logp, hparams)


def get_objective(name: str) -> Objective:
    """A registered objective by name, or a user function by import path `pkg.module:function`.

    A user function has the registry's signature; set `fn.needs_behavior_logp = True` on it if it
    uses `behavior_logp`.
    """
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"objective {name!r}: cannot import module {module_name!r} ({e})") from e
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ValueError(f"objective {name!r}: module {module_name!r} has no function {attr!r}")
        return _make_objective(name, fn, bool(getattr(fn, "needs_behavior_logp", False)))
    raise ValueError(
        f"unknown objective {name!r}; valid objectives: {', '.join(sorted(OBJECTIVES))} "
        "(or an import path 'pkg.module:function')"
    )


def needs_behavior_logp(name: str) -> bool:
    """Whether objective `name` needs the sampler's log-probs (so the engine must return them)."""
    return get_objective(name).needs_behavior_logp


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


def _token_counts(mask: torch.Tensor) -> torch.Tensor:
    """n_i = max(1, Σ_t mask[i, t]).  # [B]"""
    return mask.sum(-1).clamp(min=1)


def mean_token_nll(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """l_i = -Σ_t mask·logp / n_i, the mean token NLL of each response.  # [B, T] -> [B]"""
    return -(logp * mask).sum(-1) / _token_counts(mask)


def aggregate(loss_tok: torch.Tensor, mask: torch.Tensor, agg: str = "seq-mean-token-mean") -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    - `seq-mean-token-mean` (default): mean over each response's tokens, then over responses; every
      response weighs the same, which is what keeps ASymPO's response-level zero-sum balance.
    - `token-mean`: mean over all tokens of the batch (length-weighted; breaks ASymPO's balance).
    - `seq-mean-token-sum`: sum over each response's tokens, then mean over responses (breaks it too).
    """
    masked = loss_tok * mask
    if agg == "seq-mean-token-mean":
        return (masked.sum(-1) / _token_counts(mask)).mean()
    if agg == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1)
    if agg == "seq-mean-token-sum":
        return masked.sum(-1).mean()
    raise ValueError(f"unknown agg {agg!r}; valid: {', '.join(AGG_MODES)}")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    total = mask.sum()
    if total.item() == 0:
        return float("nan")
    return ((x * mask).sum() / total).item()


# ----------------------------------------------------------------------------------------------
# Objectives that need no behavior log-probs
# ----------------------------------------------------------------------------------------------


@register_objective("naive")
def naive(logp, mask, adv, behavior_logp):
    """Plain current-policy REINFORCE: per response A_i · l_i."""
    loss_tok = -adv[:, None] * logp  # [B, T]
    return loss_tok, {}


@register_objective("spo")
def spo(logp, mask, adv, behavior_logp, *, neg_scale: float = 0.5):
    """Scaled Policy Optimization: c_i · A_i · l_i with c_i = 1 if A_i ≥ 0 else `neg_scale`."""
    if not neg_scale >= 0:
        raise ValueError(f"spo: neg_scale must be >= 0, got {neg_scale}")
    c = torch.where(adv >= 0, torch.ones_like(adv), torch.full_like(adv, neg_scale))  # [B]
    loss_tok = -(c * adv)[:, None] * logp  # [B, T]
    return loss_tok, {}


@register_objective("asympo")
def asympo(
    logp,
    mask,
    adv,
    behavior_logp,
    *,
    eps: float = 1e-6,
    rescale: str = "none",
    batch_nll: float | None = None,
):
    """ASymPO: A_i · l_i / sg(max(l_i, eps)).

    Every response's term is divided by its own current mean token NLL (detached), so the forward value
    of each term is A_i and zero-sum advantages give balanced positive and negative contributions; the
    gradient is A_i ∇l_i / l_i = A_i ∇ log l_i. `rescale="batch_mean"` multiplies every term by
    sg(mean_j l_j): the balance is kept and the overall step size returns to naive's scale. The mean is
    over the responses given, unless `batch_nll` supplies it: the learner sets it to the whole batch's mean
    when it splits a batch into micro-batches, so the scale does not depend on `micro_batch_size`.
    """
    if not eps > 0:
        raise ValueError(f"asympo: eps must be > 0, got {eps}")
    if rescale not in ("none", "batch_mean"):
        raise ValueError(f"asympo: rescale must be 'none' or 'batch_mean', got {rescale!r}")
    nll = mean_token_nll(logp, mask).detach()  # [B]
    scale = 1.0 / nll.clamp(min=eps)  # [B]
    if rescale == "batch_mean":
        has_tokens = mask.sum(-1) > 0
        if batch_nll is not None:
            scale = scale * float(batch_nll)
        else:
            scale = scale * (nll[has_tokens].mean() if has_tokens.any() else nll.new_tensor(1.0))
    loss_tok = -(adv * scale)[:, None] * logp  # [B, T]
    return loss_tok, {"asympo/scale_mean": scale.mean().item()}


# ----------------------------------------------------------------------------------------------
# Behavior-corrected baselines
# ----------------------------------------------------------------------------------------------


def _log_ratio(logp: torch.Tensor, behavior_logp: torch.Tensor) -> torch.Tensor:
    # Clamped so that exp never overflows on garbage tokens; ±20 is far outside any useful ratio.
    return (logp - behavior_logp).clamp(-20.0, 20.0)


@register_objective("grpo", needs_behavior_logp=True)
def grpo(
    logp,
    mask,
    adv,
    behavior_logp,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    clip_ratio_c: float | None = None,
):
    """PPO-clip with clip-higher: -min(r·A, clip(r, 1-eps_low, 1+eps_high)·A), r = exp(logp - behavior_logp).

    `clip_ratio_c` (e.g. 3.0) enables dual-clip for negative advantages; off by default.
    """
    ratio = torch.exp(_log_ratio(logp, behavior_logp))  # [B, T]
    a = adv[:, None]
    surr1 = ratio * a
    surr2 = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * a
    loss_tok = -torch.min(surr1, surr2)
    clipped = surr2 < surr1  # the clip is what determines the value (and kills the gradient)
    metrics = {
        "clip/frac": _masked_mean(clipped.to(logp.dtype), mask),
        "clip/frac_high": _masked_mean((clipped & (a > 0)).to(logp.dtype), mask),
        "clip/frac_low": _masked_mean((clipped & (a < 0)).to(logp.dtype), mask),
    }
    if clip_ratio_c is not None:
        if not clip_ratio_c > 1.0:
            raise ValueError(f"grpo: clip_ratio_c must be > 1, got {clip_ratio_c}")
        dual = -a * clip_ratio_c
        use_dual = (a < 0) & (dual < loss_tok)
        loss_tok = torch.where(use_dual, dual, loss_tok)
        metrics["clip/frac_dual"] = _masked_mean(use_dual.to(logp.dtype), mask)
    return loss_tok, metrics


@register_objective("gspo", needs_behavior_logp=True)
def gspo(logp, mask, adv, behavior_logp, *, eps_low: float = 3e-4, eps_high: float = 4e-4):
    """GSPO: PPO-clip on the sequence ratio s_i = exp(mean_t(logp - behavior_logp)).

    Per token the ratio is sg(s_i)·exp(logp - sg(logp)), whose value is s_i and whose gradient is
    s_i ∇logp[i,t], so under seq-mean-token-mean it is exactly the sequence-level objective.
    """
    log_s = (_log_ratio(logp, behavior_logp) * mask).sum(-1) / _token_counts(mask)  # [B]
    log_ratio_tok = logp - logp.detach() + log_s.detach()[:, None]  # [B, T]
    ratio = torch.exp(log_ratio_tok.clamp(max=10.0))
    a = adv[:, None]
    surr1 = ratio * a
    surr2 = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * a
    loss_tok = -torch.min(surr1, surr2)
    clipped = (surr2 < surr1)[:, 0] if logp.shape[1] else torch.zeros_like(adv, dtype=torch.bool)
    has_tokens = mask.sum(-1) > 0
    frac = clipped[has_tokens].to(logp.dtype).mean().item() if has_tokens.any() else float("nan")
    return loss_tok, {"clip/frac": frac}


@register_objective("cispo", needs_behavior_logp=True)
def cispo(logp, mask, adv, behavior_logp, *, eps_high: float = 0.28, eps_low: float | None = None):
    """CISPO: -sg(clip(r, max=1+eps_high)) · A · logp — the IS weight is clipped, never the gradient.

    `eps_low` (None = no lower bound, as in the paper) optionally clips from below at 1 - eps_low.
    """
    ratio = torch.exp(_log_ratio(logp, behavior_logp))  # [B, T]
    lower = None if eps_low is None else 1.0 - eps_low
    weight = ratio.clamp(min=lower, max=1.0 + eps_high).detach()
    loss_tok = -weight * adv[:, None] * logp
    clipped = weight != ratio.detach()
    return loss_tok, {"clip/frac": _masked_mean(clipped.to(logp.dtype), mask)}


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------


def _check_inputs(logp, mask, advantages, behavior_logp, ref_logp, entropy) -> None:
    if not isinstance(logp, torch.Tensor) or logp.dim() != 2:
        raise ValueError(f"logp must be a 2-D tensor [B, T], got {_shape(logp)}")
    B, T = logp.shape
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, T):
        raise ValueError(f"mask must have the shape of logp [B, T] = [{B}, {T}], got {_shape(mask)}")
    if not isinstance(advantages, torch.Tensor) or tuple(advantages.shape) != (B,):
        raise ValueError(
            f"advantages must be a 1-D tensor [B] = [{B}] (one per response), got {_shape(advantages)}"
        )
    for name, t in (("behavior_logp", behavior_logp), ("ref_logp", ref_logp), ("entropy", entropy)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (B, T)):
            raise ValueError(f"{name} must have the shape of logp [B, T] = [{B}, {T}], got {_shape(t)}")


def _shape(x) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"


def _nan_to_none_ratio(num: float, den: float) -> float:
    if math.isnan(num) or math.isnan(den) or den == 0:
        return float("nan")
    return num / den


def policy_loss(
    name: str,
    logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    behavior_logp: torch.Tensor | None = None,
    *,
    agg: str = "seq-mean-token-mean",
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    **hparams,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss (scalar, to minimise) and metrics for objective `name` on one batch.

    Shapes: logp, mask, behavior_logp, ref_logp, entropy [B, T]; advantages [B].
    `kl_coef > 0` adds a k3 KL estimate to `ref_logp`; `entropy_coef > 0` subtracts the aggregated
    token entropy (pass `entropy`). Raises ValueError naming the problem for an unknown objective,
    hparam or agg, mismatched shapes, or a behavior-corrected objective without `behavior_logp`.
    """
    objective = get_objective(name)
    unknown = sorted(set(hparams) - set(objective.hparams))
    if unknown:
        valid = ", ".join(sorted(objective.hparams)) or "none"
        raise ValueError(f"objective {name!r} got unknown hparam(s) {', '.join(unknown)}; valid: {valid}")
    if agg not in AGG_MODES:
        raise ValueError(f"unknown agg {agg!r}; valid: {', '.join(AGG_MODES)}")
    _check_inputs(logp, mask, advantages, behavior_logp, ref_logp, entropy)
    if objective.needs_behavior_logp and behavior_logp is None:
        raise ValueError(
            f"objective {name!r} needs behavior log-probs (behavior_logp); use an engine that returns "
            "sampler log-probs, or an objective that needs none: naive, spo, asympo"
        )
    if kl_coef and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp (the reference policy's log-probs)")
    if entropy_coef and entropy is None:
        raise ValueError("entropy_coef > 0 needs entropy (per-token entropy of the current policy)")

    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)
    loss_tok, obj_metrics = objective.fn(logp, mask, adv, behavior_logp, **hparams)
    pg_loss = aggregate(loss_tok, mask, agg)
    loss = pg_loss

    with torch.no_grad():
        nll = mean_token_nll(logp, mask)  # [B]
        has_tokens = mask.sum(-1) > 0
        pos, neg = (adv > 0) & has_tokens, (adv < 0) & has_tokens
        lt = loss_tok.detach()
        nll_pos = nll[pos].mean().item() if pos.any() else float("nan")
        nll_neg = nll[neg].mean().item() if neg.any() else float("nan")
        metrics: dict[str, float] = {
            "nll/pos": nll_pos,
            "nll/neg": nll_neg,
            "nll/ratio": _nan_to_none_ratio(nll_neg, nll_pos),
            "loss/pos": aggregate(lt * pos[:, None], mask, agg).item(),
            "loss/neg": aggregate(lt * neg[:, None], mask, agg).item(),
            "loss/policy": pg_loss.item(),
        }
        if behavior_logp is not None:
            d = behavior_logp - logp.detach()
            metrics["kl/behavior"] = _masked_mean(torch.exp(d) - d - 1.0, mask)

    if kl_coef:
        d = ref_logp - logp
        kl = aggregate(torch.exp(d) - d - 1.0, mask, agg)  # k3 estimator, >= 0
        loss = loss + kl_coef * kl
        metrics["kl/ref"] = kl.item()
    if entropy is not None:
        ent = aggregate(entropy, mask, agg)
        metrics["policy/entropy"] = ent.item()
        if entropy_coef:
            loss = loss - entropy_coef * ent
    metrics["loss/total"] = loss.item()
    metrics.update(obj_metrics)
    return loss, metrics
