"""Policy objectives (all minimised) and their aggregation (docs/design.md#objectives).

Every objective is a pure function registered under a name:

    fn(logp, mask, adv, behavior_logp, **hparams) -> (loss_tok [B, T], metrics)

`logp` is always the *current* policy's log-prob of the sampled tokens, `behavior_logp` always the
sampler's (never "old"). The per-token loss is then reduced by `aggregate` (a separate choice,
`agg`). Under the default `seq-mean-token-mean`, a per-token loss of `-A_i · w_i · logp[i,t]` turns
into the per-response term `A_i · w_i · l_i` of the paper, with `l_i` the mean token NLL. An objective
may return its w_i as `metrics["weight"]` (a detached-able [B] tensor; the weight diagnostics use it); its
other metrics are floats.

`policy_loss` is the one entry point the learner and the integrations call: it validates the input,
runs the objective, aggregates, adds the optional KL and entropy terms and computes the diagnostics
(`nll/pos`, `nll/neg`, `nll/ratio`, `loss/pos`, `loss/neg`, ...; see docs/design.md).

Batches split over micro-batches or processes. An objective may need a statistic of the *whole* batch
(asympo's `rescale="batch_mean"` needs the batch mean of l_i); it declares it (`batch_stats`) and every
host computes it once per batch and passes it in a `LossContext`, together with the batch's response and
token counts, which `aggregate` divides by. The host's recipe, identical for one process and many:

    totals = reduce_sum(context_totals(mask, logp, stats))   # [2 + 2K], one all-reduce (identity locally)
    ctx = LossContext.from_totals(totals, stats)
    loss = Σ over its micro-batches of compute_loss(..., ctx=ctx).loss  # == the whole batch's loss

Metrics are combined the same way: `compute_loss` returns detached per-response tensors
(`ResponseTerms`), a host concatenates them and summarises once with `response_metrics`.

This module imports nothing else of asympo's.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

__all__ = [
    "AGG_MODES",
    "BATCH_STATS",
    "OBJECTIVES",
    "LossContext",
    "LossResult",
    "Objective",
    "ResponseTerms",
    "aggregate",
    "check_hparams",
    "compute_loss",
    "context_totals",
    "get_objective",
    "kl_k3",
    "mean_token_nll",
    "needs_behavior_logp",
    "per_response",
    "policy_loss",
    "register_objective",
    "response_metrics",
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
    stats: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = ()
    """Names in BATCH_STATS the objective reads from its `ctx`, or a function of its hparams giving them."""
    takes_ctx: bool = False

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def batch_stats(self, hparams: dict) -> tuple[str, ...]:
        """The batch statistics this objective needs with `hparams` (defaults filled in)."""
        names = self.stats({**self.hparams, **hparams}) if callable(self.stats) else self.stats
        unknown = sorted(set(names) - set(BATCH_STATS))
        if unknown:
            raise ValueError(
                f"objective {self.name!r} declares unknown batch statistic(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(BATCH_STATS))}"
            )
        return tuple(names)


OBJECTIVES: dict[str, Objective] = {}


def register_objective(
    name: str,
    *,
    needs_behavior_logp: bool = False,
    batch_stats: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = (),
):
    """Decorator: register `fn(logp, mask, adv, behavior_logp, *, **hparams)` under `name`.

    The keyword-only parameters of `fn` (with their defaults) are the objective's hparams; anything
    else passed to `policy_loss` is rejected with a ValueError listing them. A keyword-only `ctx`
    parameter is not an hparam: it receives the `LossContext`, whose `batch_stats` fields (names of
    BATCH_STATS, or a function of the hparams returning them) the host fills for the whole batch.
    """

    def deco(fn: ObjectiveFn) -> ObjectiveFn:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = _make_objective(name, fn, needs_behavior_logp, batch_stats)
        return fn

    return deco


def _make_objective(name: str, fn: ObjectiveFn, needs_behavior_logp: bool, stats=()) -> Objective:
    params = inspect.signature(fn).parameters.values()
    kw = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    takes_ctx = kw.pop("ctx", None) is not None or "ctx" in {p.name for p in params}
    return Objective(name, fn, needs_behavior_logp, kw, stats, takes_ctx)


def get_objective(name: str) -> Objective:
    """A registered objective by name, or a user function by import path `pkg.module:function`.

    A user function has the registry's signature; set `fn.needs_behavior_logp = True` on it if it
    uses `behavior_logp`, and `fn.batch_stats = ("mean_nll",)` if it reads a batch statistic from `ctx`.
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
        needs = bool(getattr(fn, "needs_behavior_logp", False))
        return _make_objective(name, fn, needs, getattr(fn, "batch_stats", ()))
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


# Statistics an objective may need of the whole batch: each is the mean, over the batch's responses with
# at least one token, of a per-response value computed from (logp, mask)  # [B, T] -> [B]. The name is
# also the LossContext field that carries it.
BATCH_STATS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mean_nll": mean_token_nll}


@dataclass(frozen=True)
class LossContext:
    """What the host knows about the whole batch that one `policy_loss` call may not see.

    A host that splits a batch (micro-batches, data-parallel ranks) builds it once per batch with
    `context_totals` + `LossContext.from_totals`; left at None, each field means "the responses given".
    """

    num_responses: int | None = None
    """Responses in the whole batch: the denominator of the seq-mean aggregations."""
    num_tokens: int | None = None
    """Response tokens in the whole batch: the denominator of token-mean."""
    mean_nll: float | None = None
    """Batch mean of l_i (mean token NLL) over responses with tokens; filled when an objective declares it."""

    @staticmethod
    def from_totals(totals: torch.Tensor, stats: tuple[str, ...] = ()) -> LossContext:
        """The context from `context_totals` summed over every part of the batch (`[2 + 2K]`)."""
        t = totals.tolist()
        values = {}
        for k, name in enumerate(stats):
            total, count = t[2 + 2 * k], t[3 + 2 * k]
            values[name] = total / count if count else 1.0  # no tokens at all: a neutral scale
        return LossContext(num_responses=round(t[0]), num_tokens=round(t[1]), **values)


def context_totals(mask: torch.Tensor, logp: torch.Tensor | None = None, stats: tuple[str, ...] = ()):
    """Sums over these responses that make a LossContext: [responses, tokens, (Σ stat_k, count_k) ...].

    float64 `[2 + 2K]`; summing it over micro-batches or processes (one all-reduce) and passing it to
    `LossContext.from_totals` gives the whole batch's context. `logp` is needed only when `stats` is set.
    """
    has_tokens = mask.sum(-1) > 0  # [B]
    out = [float(mask.shape[0]), float(mask.sum())]
    for name in stats:
        if logp is None:
            raise ValueError(f"batch statistic {name!r} needs logp")
        with torch.no_grad():
            v = BATCH_STATS[name](logp.detach(), mask)  # [B]
        out += [float(v[has_tokens].sum()), float(has_tokens.sum())]
    return torch.tensor(out, dtype=torch.float64)


def per_response(
    loss_tok: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "seq-mean-token-mean",
    ctx: LossContext | None = None,
) -> torch.Tensor:
    """Each response's share of the aggregated loss: `aggregate` is its sum.  # [B, T] -> [B]

    The denominator is the whole batch's (from `ctx`), so shares of micro-batches add up exactly.
    """
    masked = (loss_tok * mask).sum(-1)  # [B]
    ctx = ctx or LossContext()
    if agg == "seq-mean-token-mean":
        return masked / _token_counts(mask) / (ctx.num_responses or mask.shape[0])
    if agg == "token-mean":
        n_tok = ctx.num_tokens if ctx.num_tokens is not None else float(mask.sum())
        return masked / max(1.0, float(n_tok))
    if agg == "seq-mean-token-sum":
        return masked / (ctx.num_responses or mask.shape[0])
    raise ValueError(f"unknown agg {agg!r}; valid: {', '.join(AGG_MODES)}")


def aggregate(
    loss_tok: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "seq-mean-token-mean",
    ctx: LossContext | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    - `seq-mean-token-mean` (default): mean over each response's tokens, then over responses; every
      response weighs the same, which is what keeps ASymPO's response-level zero-sum balance.
    - `token-mean`: mean over all tokens of the batch (length-weighted; breaks ASymPO's balance).
    - `seq-mean-token-sum`: sum over each response's tokens, then mean over responses (breaks it too).

    With a `ctx`, the means are over the whole batch's responses / tokens, so the result is this part's
    share of the batch loss.
    """
    return per_response(loss_tok, mask, agg, ctx).sum()


def kl_k3(logp: torch.Tensor, other_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(other || current): exp(d) - d - 1 with d = other - logp; >= 0.  # [B, T]"""
    d = other_logp - logp
    return torch.exp(d) - d - 1.0


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
    return loss_tok, {"weight": c}


def _asympo_stats(hparams: dict) -> tuple[str, ...]:
    return ("mean_nll",) if hparams.get("rescale") == "batch_mean" else ()


@register_objective("asympo", batch_stats=_asympo_stats)
def asympo(
    logp,
    mask,
    adv,
    behavior_logp,
    *,
    ctx: LossContext,
    eps: float = 1e-6,
    rescale: str = "none",
):
    """ASymPO: A_i · l_i / sg(max(l_i, eps)).

    Every response's term is divided by its own current mean token NLL (detached), so the forward value
    of each term is A_i and zero-sum advantages give balanced positive and negative contributions; the
    gradient is A_i ∇l_i / l_i = A_i ∇ log l_i. `rescale="batch_mean"` multiplies every term by
    sg(mean_j l_j) over the whole batch (`ctx.mean_nll`, which the host computes once per batch however it
    splits it): the balance is kept and the overall step size returns to naive's scale.
    """
    if not eps > 0:
        raise ValueError(f"asympo: eps must be > 0, got {eps}")
    if rescale not in ("none", "batch_mean"):
        raise ValueError(f"asympo: rescale must be 'none' or 'batch_mean', got {rescale!r}")
    nll = mean_token_nll(logp, mask).detach()  # [B]
    weight = 1.0 / nll.clamp(min=eps)  # [B]
    if rescale == "batch_mean":
        weight = weight * ctx.mean_nll
    loss_tok = -(adv * weight)[:, None] * logp  # [B, T]
    return loss_tok, {"asympo/scale_mean": weight.mean().item(), "weight": weight}


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


LOGP_TOLERANCE = 0.5
"""Largest log-probability `policy_loss` accepts: above 0 only by rounding (bf16's log_softmax of logits up
to 64 is off by at most 0.125), far below what logits or probabilities reach."""


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
    # Logits or probabilities passed by mistake would not fail otherwise: asympo's weight 1/NLL turns negative
    # and flips the sign of the update. NaN passes (the learner's NaN guard handles it). One host sync for all.
    given = [
        (n, t)
        for n, t in (("logp", logp), ("behavior_logp", behavior_logp), ("ref_logp", ref_logp))
        if t is not None
    ]
    if B * T:
        tops = torch.stack(
            [t.detach().float().masked_fill(mask == 0, -math.inf).max() for _, t in given]
        ).tolist()
        for (name, _), top in zip(given, tops):
            if top > LOGP_TOLERANCE:
                raise ValueError(
                    f"{name} must hold log-probabilities (<= 0) where mask is set, but its largest value "
                    f"there is {top:.4g}: pass log_softmax(logits) at the sampled tokens, not logits or "
                    "probabilities"
                )


def _shape(x) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"


@dataclass
class ResponseTerms:
    """Detached per-response values of one `compute_loss` call  # [B] each.

    A host that splits a batch concatenates them (`ResponseTerms.cat`) and summarises the whole batch once
    with `response_metrics`, so the metrics are sums over responses divided once, whatever the split.
    """

    adv: torch.Tensor
    """A_i."""
    nll: torch.Tensor
    """l_i, the mean token NLL under the current policy."""
    n_tokens: torch.Tensor
    """Response tokens (0 for an empty response)."""
    policy: torch.Tensor
    """Share of the aggregated policy loss (sums to `loss/policy`)."""
    total: torch.Tensor
    """Share of the total loss: policy + kl_coef · KL - entropy_coef · entropy (sums to `loss/total`)."""
    kl_ref: torch.Tensor | None = None
    """Share of the aggregated k3 KL to the reference (before kl_coef)."""
    entropy: torch.Tensor | None = None
    """Share of the aggregated token entropy."""
    kl_behavior: torch.Tensor | None = None
    """Σ_t k3(behavior || current) over the response's tokens (divided by all tokens in the summary)."""
    weight: torch.Tensor | None = None
    """The objective's per-response weight w_i in A_i · w_i · l_i, when it exposes one (metric key "weight")."""

    @staticmethod
    def cat(parts: list[ResponseTerms]) -> ResponseTerms:
        """One record for the responses of all `parts`, in order."""
        out = {}
        for f in fields(ResponseTerms):
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = None if any(v is None for v in vals) else torch.cat(vals)
        return ResponseTerms(**out)


@dataclass
class LossResult:
    """What `compute_loss` returns: the loss to backpropagate and what to log about it."""

    loss: torch.Tensor
    """Scalar: this call's share of the batch loss (the whole loss when no `ctx` splits the batch)."""
    terms: ResponseTerms
    """Per-response values for `response_metrics`."""
    objective_metrics: dict[str, float]
    """The objective's own scalar metrics (e.g. `clip/frac`) for the responses of this call."""


def _ratio(num: float, den: float) -> float:
    if math.isnan(num) or math.isnan(den) or den == 0:
        return float("nan")
    return num / den


def _mean(x: torch.Tensor, sel: torch.Tensor) -> float:
    return x[sel].double().mean().item() if bool(sel.any()) else float("nan")


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation; NaN with fewer than two points or no spread."""
    if x.numel() < 2:
        return float("nan")
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float((x.square().sum() * y.square().sum()).sqrt())
    return float((x * y).sum()) / den if den > 0 else float("nan")


def response_metrics(terms: ResponseTerms, prefix: str = "objective") -> dict[str, float]:
    """The positive/negative diagnostics of a batch from its per-response values (see docs/design.md).

    `nll/pos|neg|ratio`, `len/pos|neg` (mean response tokens), `nll/len_corr` (correlation of length and
    l_i), `loss/pos|neg|policy|total`, `kl/ref`, `policy/entropy`, `kl/behavior` where present, and for an
    objective that exposes per-response weights w_i: `<prefix>/weight_cv` (std / mean), `weight_min`,
    `weight_max` and `<prefix>/neg_weight` = mean w_i on negatives / on positives (spo's neg_scale for spo).
    Always the same keys for the same inputs, so hosts that log per micro-batch get equal-length lists.
    """
    has = terms.n_tokens > 0
    pos, neg = (terms.adv > 0) & has, (terms.adv < 0) & has
    nll_pos, nll_neg = _mean(terms.nll, pos), _mean(terms.nll, neg)
    m = {
        "nll/pos": nll_pos,
        "nll/neg": nll_neg,
        "nll/ratio": _ratio(nll_neg, nll_pos),
        "len/pos": _mean(terms.n_tokens, pos),
        "len/neg": _mean(terms.n_tokens, neg),
        "nll/len_corr": _corr(terms.n_tokens[has], terms.nll[has]),
        "loss/pos": terms.policy[terms.adv > 0].sum().item(),
        "loss/neg": terms.policy[terms.adv < 0].sum().item(),
        "loss/policy": terms.policy.sum().item(),
        "loss/total": terms.total.sum().item(),
    }
    if terms.kl_ref is not None:
        m["kl/ref"] = terms.kl_ref.sum().item()
    if terms.entropy is not None:
        m["policy/entropy"] = terms.entropy.sum().item()
    if terms.kl_behavior is not None:
        m["kl/behavior"] = _ratio(terms.kl_behavior.sum().item(), terms.n_tokens.sum().item())
    if terms.weight is not None:
        w = terms.weight[has].double()
        mean = w.mean().item() if w.numel() else float("nan")
        m[f"{prefix}/weight_cv"] = _ratio(w.std().item(), mean) if w.numel() > 1 else float("nan")
        m[f"{prefix}/weight_min"] = w.min().item() if w.numel() else float("nan")
        m[f"{prefix}/weight_max"] = w.max().item() if w.numel() else float("nan")
        m[f"{prefix}/neg_weight"] = _ratio(_mean(terms.weight, neg), _mean(terms.weight, pos))
    return m


def metric_prefix(name: str) -> str:
    """The namespace of an objective's metrics: its name, or the function name of an import path."""
    return name.rpartition(":")[2]


def compute_loss(
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
    ctx: LossContext | None = None,
    **hparams,
) -> LossResult:
    """`policy_loss` for hosts: the loss plus detached per-response values instead of summed metrics.

    Same arguments and errors as `policy_loss`. The batch statistics the objective declares are read from
    `ctx`; those `ctx` leaves at None are computed from the responses given.
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
    ctx = ctx or LossContext()
    missing = tuple(s for s in objective.batch_stats(hparams) if getattr(ctx, s) is None)
    if missing:  # no host computed them: the responses given are the batch
        local = LossContext.from_totals(context_totals(mask, logp, missing), missing)
        ctx = replace(ctx, **{stat: getattr(local, stat) for stat in missing})
    kwargs = {"ctx": ctx} if objective.takes_ctx else {}
    loss_tok, obj_metrics = objective.fn(logp, mask, adv, behavior_logp, **kwargs, **hparams)
    weight = obj_metrics.pop("weight", None)
    share = per_response(loss_tok, mask, agg, ctx)  # [B]
    loss = share.sum()
    total = share.detach()
    kl_share = ent_share = kl_beh = None
    if kl_coef or ref_logp is not None:
        kl_share = per_response(kl_k3(logp, ref_logp), mask, agg, ctx)
        if kl_coef:
            loss = loss + kl_coef * kl_share.sum()
            total = total + kl_coef * kl_share.detach()
    if entropy is not None:
        ent_share = per_response(entropy, mask, agg, ctx)
        if entropy_coef:
            loss = loss - entropy_coef * ent_share.sum()
            total = total - entropy_coef * ent_share.detach()
    if behavior_logp is not None:
        kl_beh = (kl_k3(logp.detach(), behavior_logp) * mask).sum(-1)
    det = lambda t: None if t is None else t.detach()  # noqa: E731
    terms = ResponseTerms(
        adv=adv.detach(),
        nll=mean_token_nll(logp.detach(), mask),
        n_tokens=mask.sum(-1),
        policy=share.detach(),
        total=total,
        kl_ref=det(kl_share),
        entropy=det(ent_share),
        kl_behavior=kl_beh,
        weight=det(weight),
    )
    return LossResult(loss, terms, obj_metrics)


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
    ctx: LossContext | None = None,
    **hparams,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss (scalar, to minimise) and metrics for objective `name` on one batch.

    Shapes: logp, mask, behavior_logp, ref_logp, entropy [B, T]; advantages [B].
    `kl_coef > 0` adds a k3 KL estimate to `ref_logp`; `entropy_coef > 0` subtracts the aggregated
    token entropy (pass `entropy`). `ctx` (optional) carries the whole batch's counts and statistics
    when these responses are only part of it. Raises ValueError naming the problem for an unknown
    objective, hparam or agg, mismatched shapes, log-probabilities above 0 (logits or probabilities passed
    by mistake), or a behavior-corrected objective without `behavior_logp`.
    """
    res = compute_loss(
        name,
        logp,
        mask,
        advantages,
        behavior_logp,
        agg=agg,
        ref_logp=ref_logp,
        kl_coef=kl_coef,
        entropy=entropy,
        entropy_coef=entropy_coef,
        ctx=ctx,
        **hparams,
    )
    metrics = response_metrics(res.terms, metric_prefix(name))
    metrics.update(res.objective_metrics)
    return res.loss, metrics


HPARAM_KINDS = {
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}
"""The type of a hyperparameter's default -> the value types `check_hparams` accepts for it, and their words."""


def check_hparams(name: str, hparams: dict) -> None:
    """Raise ValueError, naming the objective and the key, for hparams that objective `name` would refuse
    only once training runs: a value of another kind than its default (a number where the default is a
    float, an int for an int, true/false for a bool, text for a string; a default of None takes anything),
    or a value the objective itself rejects on a dry run over two one-token responses (e.g. spo's negative
    `neg_scale`). Unknown keys are the caller's to reject, with its own wording."""
    objective = get_objective(name)
    for key, value in hparams.items():
        kinds, words = HPARAM_KINDS.get(type(objective.hparams.get(key)), (None, ""))
        if kinds and not (isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))):
            raise ValueError(f"{name}: {key} must be {words}, got {value!r}")
    logp = torch.full((2, 1), -1.0)  # [B=2, T=1]: one positive and one negative response
    try:
        compute_loss(name, logp, torch.ones(2, 1), torch.tensor([1.0, -1.0]), logp.clone(), **hparams)
    except ValueError as e:  # the objective's own check: its message names the hparam
        raise ValueError(str(e) if str(e).startswith(f"{name}:") else f"{name}: {e}") from e
    except TypeError as e:  # e.g. text where a None default stands for a number
        raise ValueError(f"{name}: hparams {hparams} fail on a dry run ({e})") from e
