"""The learner: one optimiser step per batch of rollout groups.

    rewards -> group advantages -> micro-batches (by count or token budget) -> the batch's LossContext
    -> per micro-batch: current log-probs (chunked, under autocast) -> objective + aggregation -> backward
    (optionally split into the positive and negative terms' gradients) -> clip -> NaN guard -> step

The learner knows nothing of engines or backends and names no objective: it takes a `Batch` of
`RolloutGroup`s and returns the step's metrics (see docs/design.md). Its version counts optimiser steps;
staleness of a sample is `learner version at this step - the sample's policy_version`.

Precision: the parameters and AdamW state are fp32 ("master weights"); with `bf16-mixed`/`fp16-mixed` only
the forward pass runs under `torch.autocast`. Pure bf16 weights are refused unless asked for by name
(`bf16-pure`): an Adam update of ~lr per weight is far below bf16's spacing (~1e-4 near 0.02), so at
lr 1e-6 almost every update rounds away and the model does not learn. Under FSDP2, bf16-mixed is FSDP2's
`MixedPrecisionPolicy` instead (bf16 parameters gathered for the forward and backward, fp32 sharded master
weights, fp32 gradient reduction), with no autocast on top.

The seam for a sharded learner (several processes): a `Learner` built with `shard=(rank, world_size)` and
`reduce_sum` (an all-reduce that sums a float64 tensor) processes only its share of each batch's responses,
but every normalisation (responses, tokens, declared batch statistics) is over the whole batch, summed
through `reduce_sum` once per step; so the gradients of the shards *sum* to the whole batch's gradient.
With one process `reduce_sum` is the identity.

FSDP2 (`learner.parallel.kind=fsdp2`, docs/scaling.md) uses that seam: built with `dist=` a `DistContext`
of several ranks, the Learner shards the model with `fully_shard` (per block, then the root), builds AdamW
over the sharded parameters and, because FSDP2 *averages* gradients over the ranks (and gloo cannot do its
divide-factor-1 pre-multiplied sum), multiplies each rank's loss by the world size, so the averaged
gradient is the sum of the shards' gradients = the one-process gradient. The grad norm is clipped over the
sharded gradients, and the logged metrics are computed from every rank's per-response values (gathered),
so they equal the one-process values. Every rank runs the same number of forward/backward passes (FSDP2's
all-gathers are collectives): a rank with fewer micro-batches runs zero-loss ones on a dummy row.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from asympo.advantages import constant_groups, get_estimator, group_advantages
from asympo.distributed import SINGLE, DistContext, ParallelConfig
from asympo.logprobs import causal_lm_logprobs
from asympo.objectives import (
    AGG_MODES,
    LossContext,
    LossResult,
    ResponseTerms,
    check_hparams,
    compute_loss,
    context_totals,
    get_objective,
    metric_prefix,
    response_metrics,
)
from asympo.runtime.records import Batch, Sample

PRECISIONS = ("auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-pure")


@dataclass
class LearnerConfig:
    """The objective, the optimiser, precision and memory."""

    objective: str = "asympo"
    """naive | spo | asympo | grpo | gspo | cispo, or an import path `pkg.module:function`."""
    hparams: dict = field(default_factory=dict)
    """The objective's hyperparameters, e.g. {"neg_scale": 0.2} for spo or {"rescale": "batch_mean"}."""
    agg: str = "seq-mean-token-mean"
    """Loss aggregation; only seq-mean-token-mean keeps ASymPO's response-level balance."""
    estimator: str = "grpo"
    """Group advantage estimator: grpo | dr_grpo | rloo, or an import path."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (0 disables clipping; the norm is logged either way)."""
    micro_batch_size: int = 0
    """Most responses per forward/backward pass (gradient accumulation); 0 = no limit by count."""
    max_tokens_per_micro_batch: int = 0
    """Most (padded) tokens per forward/backward pass; responses are sorted by length so padding is small.
    0 = no token budget. Either limit leaves the gradient that of the whole batch."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (HF gradient_checkpointing_enable, non-reentrant):
    less memory for long responses, about a third more compute."""
    precision: str = "auto"
    """fp32 | bf16-mixed | fp16-mixed (fp32 master weights and AdamW state, forward under autocast; fp16
    with a gradient scaler) | bf16-pure (bf16 weights: updates below bf16's spacing are lost; only by
    explicit choice) | auto (bf16-mixed on CUDA, fp32 elsewhere)."""
    max_skipped_steps: int = 5
    """NaN guard: a step with a non-finite loss or gradient is skipped (`guard/skipped`); this many skipped
    in a row stop the run with an error. 0 = never stop."""
    kl_coef: float = 0.0
    """Weight of the k3 KL penalty to the initial policy (keeps a frozen copy of the model when > 0)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    temperature: float = 1.0
    """Logits are divided by this before log-probs (must equal the sampling temperature)."""
    grad_split_every: int = 1
    """Every this many steps, also compute the gradient norms of the positive and negative terms
    separately (`grad/norm_pos`, `grad/norm_neg`; one extra backward pass). 0 = never."""
    log_entropy: bool = True
    """Log the policy entropy on the sampled responses (costs a softmax over the vocabulary)."""
    chunk_size: int = 1024
    """Token positions per chunk of the log-softmax."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Learner processes: {"kind": "fsdp2", "procs": N} shards the model over N ranks (docs/scaling.md)."""
    threads: int = 0
    """Torch intra-op threads of the learner's process on CPU. 0 = auto: `OMP_NUM_THREADS` if set, else in
    async mode the CPUs the rollout workers leave (usable CPUs - rollout.num_workers * rollout.threads,
    at least 1), else torch's default (all cores). On a shared or oversubscribed machine use 1 (see
    docs/benchmarks.md: 2 threads per op can be many times slower than 1 there)."""

    def __post_init__(self):
        obj = get_objective(self.objective)  # raises ValueError naming the valid objectives
        unknown = sorted(set(self.hparams) - set(obj.hparams))
        if unknown:
            valid = ", ".join(sorted(obj.hparams)) or "none"
            raise ValueError(
                f"learner.hparams: {', '.join(unknown)} not valid for {self.objective!r}; valid: {valid}"
            )
        try:
            check_hparams(self.objective, self.hparams)  # a wrong type or value, before any work
        except ValueError as e:
            raise ValueError(f"learner.hparams: {e}") from e
        if self.agg not in AGG_MODES:
            raise ValueError(f"learner.agg must be one of {', '.join(AGG_MODES)}, got {self.agg!r}")
        try:
            get_estimator(self.estimator)  # an import path that does not import: now, not at the first step
        except ValueError as e:
            raise ValueError(f"learner.estimator: {e}") from e
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"learner.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"learner.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "kl_coef", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"learner.{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "warmup_steps",
            "micro_batch_size",
            "max_tokens_per_micro_batch",
            "grad_split_every",
            "chunk_size",
            "max_skipped_steps",
            "threads",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"learner.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(
                f"learner.gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}"
            )
        self.adam_betas = tuple(self.adam_betas)
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"learner.adam_betas must both be in [0, 1), got {list(self.adam_betas)}")
        if isinstance(self.parallel, dict):
            self.parallel = ParallelConfig(**self.parallel)
        if self.parallel.enabled:
            if self.kl_coef > 0:
                # The frozen reference would need sharding too (twice the collectives per micro-batch);
                # refused until someone needs it rather than silently run unsharded on every rank.
                raise ValueError(
                    "learner.kl_coef > 0 is not supported with learner.parallel.kind=fsdp2 (the KL reference "
                    "model is not sharded); set learner.kl_coef=0 or learner.parallel.kind=none"
                )
            if self.precision == "fp16-mixed":
                raise ValueError(
                    "learner.precision=fp16-mixed is not supported with learner.parallel.kind=fsdp2 (its "
                    "gradient scaler does not handle sharded gradients); use bf16-mixed or fp32"
                )

    @property
    def needs_behavior_logp(self) -> bool:
        return get_objective(self.objective).needs_behavior_logp


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """`auto` -> bf16-mixed on CUDA, fp32 elsewhere; any other value unchanged."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.device(device).type == "cuda" else "fp32"


def master_dtype(precision: str) -> torch.dtype:
    """The dtype the learner keeps its weights in: fp32 for everything but bf16-pure."""
    return torch.bfloat16 if precision == "bf16-pure" else torch.float32


class NonFiniteStepsError(RuntimeError):
    """`learner.max_skipped_steps` steps in a row had a non-finite loss or gradient."""

    def __init__(self, message: str, version: int):
        super().__init__(message)
        self.version = version


def collate(samples: list[Sample], pad_id: int, device: torch.device | str = "cpu"):
    """Right-padded prompt+response ids and the masks aligned with next-token log-probs.

    Returns input_ids, attention_mask [B, L] and response_mask, behavior_logp (or None) [B, L-1], where
    column t of the last two refers to the token at position t+1.
    """
    B = len(samples)
    L = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    L = max(L, 2)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros(B, L, dtype=torch.long)
    resp_mask = torch.zeros(B, L - 1)
    has_blp = all(s.behavior_logp is not None for s in samples)
    blp = torch.zeros(B, L - 1) if has_blp else None
    for i, s in enumerate(samples):
        P, R = len(s.prompt_ids), len(s.response_ids)
        if P == 0:
            raise ValueError(
                "a sample has no prompt tokens; the first response token has nothing to condition on"
            )
        input_ids[i, : P + R] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        attention[i, : P + R] = 1
        resp_mask[i, P - 1 : P - 1 + R] = 1
        if blp is not None:
            if len(s.behavior_logp) != R:
                raise ValueError(f"behavior_logp has {len(s.behavior_logp)} entries for {R} response tokens")
            blp[i, P - 1 : P - 1 + R] = torch.tensor(s.behavior_logp)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(input_ids), to(attention), to(resp_mask), to(blp)


def plan_micro_batches(lengths: list[int], max_responses: int = 0, max_tokens: int = 0) -> list[list[int]]:
    """Indices of the responses of each micro-batch.

    Without a token budget: consecutive runs of `max_responses` (0 = all). With one: responses sorted by
    length (longest first) and packed while `count × longest <= max_tokens` (a padded micro-batch's size),
    so similar lengths share a micro-batch and padding stays small; a response longer than the budget gets
    a micro-batch of its own.
    """
    n = len(lengths)
    if not max_tokens:
        size = max_responses or n
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]
    plan: list[list[int]] = []
    for i in sorted(range(n), key=lambda i: -lengths[i]):
        cur = plan[-1] if plan else None
        # Sorted longest first, so the micro-batch's longest is its first response.
        fits = cur is not None and (len(cur) + 1) * lengths[cur[0]] <= max_tokens
        if fits and (not max_responses or len(cur) < max_responses):
            cur.append(i)
        else:
            plan.append([i])
    return plan


@dataclass
class _Rows:
    """Collated responses: input_ids, attention [b, L]; mask, behavior_logp [b, L-1]; adv [b]."""

    input_ids: torch.Tensor
    attention: torch.Tensor
    mask: torch.Tensor
    behavior_logp: torch.Tensor | None
    adv: torch.Tensor

    def select(self, idx: list[int]) -> _Rows:
        """Rows `idx`, cut to their longest sequence (right padding beyond it is never attended)."""
        ix = torch.tensor(idx, device=self.input_ids.device)
        L = max(2, int(self.attention[ix].sum(-1).max()))
        blp = None if self.behavior_logp is None else self.behavior_logp[ix, : L - 1]
        return _Rows(
            self.input_ids[ix, :L], self.attention[ix, :L], self.mask[ix, : L - 1], blp, self.adv[ix]
        )


def _grad_norm(grads: list[torch.Tensor | None]) -> float:
    sq = sum(float((g.float() ** 2).sum()) for g in grads if g is not None)
    return math.sqrt(sq)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class Learner:
    """Owns the trainable model, its optimiser and the version counter.

    `reference`: the KL reference policy (used when `kl_coef > 0`; default: a frozen copy of `model`, which
    is right only when `model` is the initial policy; a resumed run must pass the initial one).
    `reduce_sum` and `shard`: the sharded-learner seam (module docstring).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: LearnerConfig,
        *,
        pad_id: int,
        device: str = "cpu",
        reference: torch.nn.Module | None = None,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shard: tuple[int, int] = (0, 1),
        dist: DistContext | None = None,
    ):
        self.cfg = cfg
        self.objective = get_objective(cfg.objective)
        self.precision = resolve_precision(cfg.precision, device)
        dtype = master_dtype(self.precision)
        self.model = model.to(device=device, dtype=dtype)
        # FSDP2 only with several ranks: one rank has nothing to shard over and is the plain learner.
        self.dist = dist or SINGLE
        self.sharded = self.dist.distributed
        if self.sharded:
            if cfg.kl_coef > 0 or self.precision == "fp16-mixed" or reference is not None:
                raise ValueError(
                    "a sharded learner supports neither learner.kl_coef > 0 nor fp16-mixed; "
                    "set learner.kl_coef=0 and learner.precision=bf16-mixed or fp32"
                )
            reduce_sum, shard = self.dist.reduce_sum, (self.dist.rank, self.dist.world)
        self.device = device
        self.pad_id = pad_id
        self.ref_model = None
        if cfg.kl_coef > 0:
            ref = reference if reference is not None else copy.deepcopy(self.model)
            self.ref_model = ref.to(device=device, dtype=dtype).eval().requires_grad_(False)
        if cfg.gradient_checkpointing:
            if not getattr(self.model, "supports_gradient_checkpointing", False):
                raise ValueError(
                    f"learner.gradient_checkpointing: {type(self.model).__name__} does not support it "
                    "(needs a HF model with supports_gradient_checkpointing); set it to false"
                )
            kwargs = {"use_reentrant": False}  # reentrant checkpointing breaks with inputs that need no grad
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        autocast_dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(self.precision)
        if self.sharded:
            from asympo.distributed import shard_model

            # FSDP2's mixed precision replaces autocast: bf16 parameters in the forward, fp32 master and
            # reduction; an autocast on top would only recast what is already bf16. The root unit is a
            # wrapper whose forward is the whole log-prob computation: causal_lm_logprobs calls the decoder
            # and reads the LM head's weight directly, which FSDP2 gathers only inside the root's forward.
            self._root = _LogProbs(self.model)
            self.model = shard_model(self.model, param_dtype=autocast_dtype, root=self._root)
            autocast_dtype = None
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
        )
        warm = cfg.warmup_steps
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        dev_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(dev_type) if self.precision == "fp16-mixed" else None
        self._autocast = (
            (lambda: torch.autocast(dev_type, dtype=autocast_dtype))
            if autocast_dtype
            else contextlib.nullcontext
        )
        self.reduce_sum = reduce_sum or _identity
        self.rank, self.world_size = shard
        self.version = 0
        self.skipped_in_row = 0

    # ------------------------------------------------------------------ one optimiser step

    def step(self, batch: Batch) -> dict[str, float]:
        t0 = time.monotonic()
        samples, G = _flatten(batch)
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        adv = group_advantages(rewards, G, self.cfg.estimator)  # [B], over the whole batch
        mine = list(range(self.rank, len(samples), self.world_size))  # this process's responses
        rows = self._collate([samples[i] for i in mine], adv[mine]) if mine else None
        plan = plan_micro_batches(
            [len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in mine],
            self.cfg.micro_batch_size,
            self.cfg.max_tokens_per_micro_batch,
        )
        # Sharded: every rank must run as many forward/backward passes as the busiest one (collectives).
        passes = int(self.dist.reduce_max(torch.tensor(float(len(plan))))) if self.sharded else len(plan)
        ctx = self._context(rows, plan, passes)
        # The pos/neg split differentiates the parameters directly (autograd.grad), which FSDP2's sharded
        # parameters do not support (their gradients arrive through its reduce-scatter hooks): off there.
        split = (
            not self.sharded
            and self.cfg.grad_split_every > 0
            and self.version % self.cfg.grad_split_every == 0
        )
        grads_pm = [[torch.zeros_like(p) for p in self.params] for _ in range(2)] if split else None

        self.opt.zero_grad(set_to_none=True)
        results = [self._micro_step(rows.select(idx), ctx, grads_pm) for idx in plan]
        for _ in range(passes - len(plan)):
            self._idle_pass(backward=True)
        parts = [(_cpu_terms(r.terms), r.objective_metrics) for r in results]
        if self.sharded:  # every rank's per-response values: the metrics are the whole batch's
            parts = [p for rank_parts in self.dist.all_gather(parts) for p in rank_parts]
        metrics = response_metrics(
            ResponseTerms.cat([t for t, _ in parts]), metric_prefix(self.cfg.objective)
        )
        metrics.update(_combine_objective_metrics(parts))
        if split:  # before the update: the fp16 scaler may change its scale there
            metrics["grad/norm_pos"], metrics["grad/norm_neg"] = (
                _grad_norm(g) / self._loss_scale() for g in grads_pm
            )
        metrics.update(self._update(metrics["loss/total"]))
        metrics.update(_batch_metrics(batch, samples, rewards, G))
        metrics["time/train"] = time.monotonic() - t0
        return metrics

    def _collate(self, samples: list[Sample], adv: torch.Tensor) -> _Rows:
        input_ids, attention, mask, blp = collate(samples, self.pad_id, self.device)
        if self.cfg.needs_behavior_logp and blp is None:
            raise ValueError(
                f"objective {self.cfg.objective!r} needs behavior log-probs but the samples carry none"
            )
        return _Rows(input_ids, attention, mask, blp, adv.to(self.device))

    def _context(self, rows: _Rows | None, plan: list[list[int]], passes: int) -> LossContext:
        """The whole batch's counts and the statistics the objective declares, reduced over processes.
        `rows` is None for a rank with no response in this batch; `passes`: forward passes every rank runs."""
        stats = self.objective.batch_stats(self.cfg.hparams)
        if stats and len(plan) == 1 and self.world_size == 1:
            stats = ()  # the one micro-batch is the batch: compute_loss computes them from its forward pass
        if not stats:
            totals = context_totals(rows.mask) if rows is not None else torch.zeros(2, dtype=torch.float64)
        else:  # one no-grad pass over the batch, paid only by objectives that declare statistics
            totals = torch.zeros(2 + 2 * len(stats), dtype=torch.float64)
            with torch.no_grad(), self._autocast():
                for idx in plan:
                    mb = rows.select(idx)
                    logp, _ = self._logprobs(
                        mb.input_ids,
                        mb.attention,
                        temperature=self.cfg.temperature,
                        chunk_size=self.cfg.chunk_size,
                    )
                    totals += context_totals(mb.mask, logp, stats)
                for _ in range(passes - len(plan)):
                    self._idle_pass(backward=False)
        return LossContext.from_totals(self.reduce_sum(totals), stats)

    def _logprobs(self, input_ids, attention, **kwargs):
        """`causal_lm_logprobs` of the policy, through the FSDP2 root when sharded."""
        if self.sharded:
            return self._root(input_ids, attention, **kwargs)
        return causal_lm_logprobs(self.model, input_ids, attention, **kwargs)

    def _idle_pass(self, backward: bool) -> None:
        """A forward (and backward) of one pad-token row with a zero loss: a sharded rank with fewer
        micro-batches than the others still joins FSDP2's all-gathers and reduce-scatters."""
        ids = torch.full((1, 2), self.pad_id, dtype=torch.long, device=self.device)
        with contextlib.nullcontext() if backward else torch.no_grad(), self._autocast():
            logp, _ = self._logprobs(
                ids, torch.ones_like(ids), temperature=self.cfg.temperature, chunk_size=2
            )
        if backward:
            (logp.sum() * 0.0).backward()

    def _micro_step(
        self, mb: _Rows, ctx: LossContext, grads_pm: list[list[torch.Tensor]] | None
    ) -> LossResult:
        cfg = self.cfg
        with self._autocast():
            logp, entropy = self._logprobs(
                mb.input_ids,
                mb.attention,
                temperature=cfg.temperature,
                chunk_size=cfg.chunk_size,
                with_entropy=cfg.log_entropy or cfg.entropy_coef > 0,
            )  # [b, L-1]
            ref_logp = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref_logp, _ = causal_lm_logprobs(
                        self.ref_model,
                        mb.input_ids,
                        mb.attention,
                        temperature=cfg.temperature,
                        chunk_size=cfg.chunk_size,
                    )
        if entropy is not None and cfg.entropy_coef == 0:
            entropy = entropy.detach()  # logged only
        loss_args = dict(agg=cfg.agg, ctx=ctx, **cfg.hparams)
        res = compute_loss(
            cfg.objective,
            logp,
            mb.mask,
            mb.adv,
            mb.behavior_logp,
            ref_logp=ref_logp,
            kl_coef=cfg.kl_coef,
            entropy=entropy,
            entropy_coef=cfg.entropy_coef,
            **loss_args,
        )
        if grads_pm is None:
            self._scaled(res.loss).backward()
            return res
        # The positive and negative terms' gradients, separately: every objective's term for response i
        # depends on A_i alone, so masking the advantages splits the policy loss exactly.
        parts = [
            compute_loss(cfg.objective, logp, mb.mask, mb.adv * sel, mb.behavior_logp, **loss_args).loss
            for sel in (mb.adv > 0, mb.adv < 0)
        ]
        rest = res.loss - parts[0] - parts[1]  # KL and entropy terms (zero when unused)
        for part, acc in zip(parts, grads_pm):
            gs = torch.autograd.grad(self._scaled(part), self.params, retain_graph=True, allow_unused=True)
            for p, a, g in zip(self.params, acc, gs):
                if g is not None:
                    a.add_(g)  # the batch's running pos/neg sums (for the norms)
                    p.grad = g.clone() if p.grad is None else p.grad.add_(g)  # this micro-batch's share only
        if rest.requires_grad:
            self._scaled(rest).backward()
        return res

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """fp16: the loss times the scaler's scale, so small gradients do not underflow. Sharded: times the
        world size, because FSDP2 averages the ranks' gradients where the seam needs their sum."""
        if self.sharded:
            loss = loss * self.dist.world
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def _loss_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler is not None else 1.0

    def _update(self, loss_total: float) -> dict[str, float]:
        """Clip, then step, or skip a non-finite step (the NaN guard); stop after too many in a row."""
        cfg = self.cfg
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm or float("inf"))
        # Sharded: a DTensor whose full value is the norm over every rank's shards (the same on all ranks,
        # so every rank takes the same skip decision).
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        bad_loss, bad_grad = not math.isfinite(loss_total), not math.isfinite(norm)
        # fp16: an overflowing gradient with a finite loss is the scaler's business (it lowers its scale).
        overflow = self.scaler is not None and bad_grad and not bad_loss
        skipped = (bad_loss or bad_grad) and not overflow
        if bad_loss or bad_grad:
            self.opt.zero_grad(set_to_none=True)  # never let a bad batch reach the weights
        else:
            if self.scaler is not None:
                self.scaler.step(self.opt)
            else:
                self.opt.step()
            self.lr_sched.step()
        if self.scaler is not None:
            self.scaler.update()
        self.skipped_in_row = self.skipped_in_row + 1 if skipped else 0
        self.version += 1
        if cfg.max_skipped_steps and self.skipped_in_row >= cfg.max_skipped_steps:
            raise NonFiniteStepsError(
                f"learner step {self.version - 1}: {self.skipped_in_row} steps in a row had a non-finite loss "
                f"(last {loss_total}) or gradient norm (last {norm}) and were skipped "
                f"(learner.max_skipped_steps={cfg.max_skipped_steps}); lower learner.lr, keep "
                "learner.max_grad_norm > 0, use learner.precision=fp32 or bf16-mixed, or check the rewards",
                self.version - 1,
            )
        clipped = cfg.max_grad_norm > 0 and math.isfinite(norm) and norm > cfg.max_grad_norm
        out = {
            "grad/norm": norm,
            "grad/clipped": float(clipped),
            "guard/skipped": float(skipped),
            "optim/lr": self.lr_sched.get_last_lr()[0],
        }
        if self.scaler is not None:
            out["guard/fp16_overflow"] = float(overflow)
            out["optim/loss_scale"] = self._loss_scale()
        return out

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        """Version, optimiser and schedule. Sharded: the optimiser's state lives in the sharded checkpoint
        (`distributed.save_sharded`), so it is left empty here."""
        opt = {"state": {}, "param_groups": []} if self.sharded else self.opt.state_dict()
        return {"version": self.version, "optimizer": opt, "lr_sched": self.lr_sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """The inverse of `state_dict`; sharded, load the optimiser with `distributed.load_sharded` first."""
        self.version = state["version"]
        if not self.sharded:
            self.opt.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["lr_sched"])


class _LogProbs(torch.nn.Module):
    """The FSDP2 root of a sharded learner: its forward is `causal_lm_logprobs` of the wrapped model."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention, **kwargs):
        logp, entropy = causal_lm_logprobs(self.model, input_ids, attention, **kwargs)
        # Fresh tensors, not views: FSDP2 hooks its backward onto the root's outputs, and an in-place op on
        # a view output would drop that hook.
        return logp.clone(), None if entropy is None else entropy.clone()


def _flatten(batch: Batch) -> tuple[list[Sample], int]:
    """The batch's samples, group after group, and the group size (equal for all groups)."""
    sizes = {len(g.samples) for g in batch.groups}
    if len(sizes) != 1:
        raise ValueError(f"all groups of a batch must have the same size, got {sorted(sizes)}")
    return [s for g in batch.groups for s in g.samples], sizes.pop()


def _cpu_terms(terms: ResponseTerms) -> ResponseTerms:
    """`terms` on the CPU (to be gathered across ranks)."""
    return ResponseTerms(
        **{
            f.name: None if getattr(terms, f.name) is None else getattr(terms, f.name).cpu()
            for f in fields(terms)
        }
    )


def _combine_objective_metrics(parts: list[tuple[ResponseTerms, dict]]) -> dict[str, float]:
    """The objective's scalar metrics over all micro-batches (terms, metrics): means weighted by their
    response counts."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for terms, objective_metrics in parts:
        n = float(terms.adv.numel())
        for k, v in objective_metrics.items():
            if not math.isnan(v):
                sums[k] = sums.get(k, 0.0) + n * v
                counts[k] = counts.get(k, 0.0) + n
            else:
                sums.setdefault(k, 0.0)
                counts.setdefault(k, 0.0)
    return {k: sums[k] / counts[k] if counts[k] else float("nan") for k in sums}


def _batch_metrics(batch: Batch, samples: list[Sample], rewards: torch.Tensor, G: int) -> dict:
    staleness = batch.staleness
    hist = [0] * (max(staleness) + 1 if staleness else 1)
    for s in staleness:
        hist[s] += 1
    B = len(samples)
    return {
        "policy_version": float(batch.learner_version),
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std().item() if B > 1 else 0.0,
        "staleness/mean": sum(staleness) / len(staleness),
        "staleness/max": float(max(staleness)),
        "staleness/hist": hist,
        "batch/zero_adv_groups": float(constant_groups(rewards, G).sum().item()),
        "batch/responses": float(B),
        "batch/response_tokens": float(sum(len(s.response_ids) for s in samples)),
        "batch/truncated": float(sum(s.finish_reason == "length" for s in samples)),
    }
