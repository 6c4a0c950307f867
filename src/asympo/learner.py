"""The learner: one optimiser step per batch of rollout groups.

    rewards -> group advantages -> current log-probs (chunked) -> objective + aggregation
    -> backward (optionally split into the positive and negative terms' gradients) -> clip -> NaN guard -> step

The learner knows nothing of engines or backends: it takes a `Batch` of `RolloutGroup`s and returns the
step's metrics (the keys of docs/design.md#diagnostics). Its version counts optimiser steps;
staleness of a sample is
`learner version at this step - the sample's policy_version`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from asympo.advantages import ESTIMATORS, constant_groups, group_advantages
from asympo.logprobs import causal_lm_logprobs
from asympo.objectives import AGG_MODES, get_objective, mean_token_nll, policy_loss
from asympo.runtime.records import Batch, Sample


@dataclass
class LearnerConfig:
    """The objective and the optimiser."""

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
    """Responses per forward/backward pass (gradient accumulation); 0 = the whole batch at once."""
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

    def __post_init__(self):
        obj = get_objective(self.objective)  # raises ValueError naming the valid objectives
        unknown = sorted(set(self.hparams) - set(obj.hparams))
        if unknown:
            valid = ", ".join(sorted(obj.hparams)) or "none"
            raise ValueError(
                f"learner.hparams: {', '.join(unknown)} not valid for {self.objective!r}; valid: {valid}"
            )
        if self.agg not in AGG_MODES:
            raise ValueError(f"learner.agg must be one of {', '.join(AGG_MODES)}, got {self.agg!r}")
        if self.estimator not in ESTIMATORS and ":" not in self.estimator:
            raise ValueError(
                f"learner.estimator must be one of {', '.join(sorted(ESTIMATORS))} or an import path, "
                f"got {self.estimator!r}"
            )
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"learner.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "kl_coef", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"learner.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("warmup_steps", "micro_batch_size", "grad_split_every", "chunk_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"learner.{name} must be an int >= 0, got {getattr(self, name)!r}")
        self.adam_betas = tuple(self.adam_betas)

    @property
    def needs_behavior_logp(self) -> bool:
        return get_objective(self.objective).needs_behavior_logp


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


def _grad_norm(grads: list[torch.Tensor | None]) -> float:
    sq = sum(float((g.float() ** 2).sum()) for g in grads if g is not None)
    return math.sqrt(sq)


class Learner:
    """Owns the trainable model, its optimiser and the version counter."""

    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig, *, pad_id: int, device: str = "cpu"):
        self.cfg = cfg
        self.model = model.to(device)
        self.model.train()
        self.device = device
        self.pad_id = pad_id
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
        )
        warm = cfg.warmup_steps
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
        self.version = 0

    # ------------------------------------------------------------------ one optimiser step

    def step(self, batch: Batch) -> dict[str, float]:
        t0 = time.monotonic()
        cfg = self.cfg
        groups = batch.groups
        sizes = {len(g.samples) for g in groups}
        if len(sizes) != 1:
            raise ValueError(f"all groups of a batch must have the same size, got {sorted(sizes)}")
        G = sizes.pop()
        samples = [s for g in groups for s in g.samples]
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        adv = group_advantages(rewards, G, cfg.estimator)  # [B]
        input_ids, attention, resp_mask, blp = collate(samples, self.pad_id, self.device)
        if cfg.needs_behavior_logp and blp is None:
            raise ValueError(
                f"objective {cfg.objective!r} needs behavior log-probs but the samples carry none"
            )
        adv = adv.to(self.device)

        B = len(samples)
        mb = cfg.micro_batch_size or B
        hparams = dict(cfg.hparams)
        if mb < B and cfg.objective == "asympo" and hparams.get("rescale") == "batch_mean":
            hparams["batch_nll"] = self._batch_mean_nll(input_ids, attention, resp_mask, mb)
        split = cfg.grad_split_every > 0 and self.version % cfg.grad_split_every == 0
        self.opt.zero_grad(set_to_none=True)
        grads_pos = [torch.zeros_like(p) for p in self.params] if split else None
        grads_neg = [torch.zeros_like(p) for p in self.params] if split else None
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        for start in range(0, B, mb):
            sl = slice(start, min(start + mb, B))
            frac = self._fraction(resp_mask, sl)
            m = self._micro_step(
                input_ids[sl],
                attention[sl],
                resp_mask[sl],
                adv[sl],
                None if blp is None else blp[sl],
                frac,
                grads_pos,
                grads_neg,
                hparams,
            )
            with_tokens = resp_mask[sl].sum(-1) > 0
            counts = {
                "nll/pos": int(((adv[sl] > 0) & with_tokens).sum()),
                "nll/neg": int(((adv[sl] < 0) & with_tokens).sum()),
            }
            for k, v in m.items():
                is_loss = k.startswith("loss/")  # a share of the batch loss: summed with weight `frac`
                if math.isnan(v) and not is_loss:
                    continue
                # nll/pos and nll/neg are means over this micro-batch's positive / negative responses.
                w = frac if is_loss else counts.get(k, sl.stop - sl.start)
                sums[k] = sums.get(k, 0.0) + w * v
                weights[k] = weights.get(k, 0.0) + w
        metrics = {k: sums[k] if k.startswith("loss/") else sums[k] / weights[k] for k in sums}
        pos, neg = metrics.get("nll/pos", float("nan")), metrics.get("nll/neg", float("nan"))
        metrics.update({"nll/pos": pos, "nll/neg": neg, "nll/ratio": neg / pos if pos > 0 else float("nan")})

        total_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm or float("inf")).item()
        skipped = not math.isfinite(total_norm) or not math.isfinite(metrics.get("loss/total", 0.0))
        if skipped:
            self.opt.zero_grad(set_to_none=True)  # NaN guard: never let a bad batch reach the weights
        else:
            self.opt.step()
            self.lr_sched.step()
        self.version += 1

        staleness = batch.staleness
        n_tok = int(resp_mask.sum().item())
        hist = [0] * (max(staleness) + 1 if staleness else 1)
        for s in staleness:
            hist[s] += 1
        metrics.update(
            {
                "policy_version": float(batch.learner_version),
                "reward/mean": rewards.mean().item(),
                "reward/std": rewards.std().item() if B > 1 else 0.0,
                "staleness/mean": sum(staleness) / len(staleness),
                "staleness/max": float(max(staleness)),
                "grad/norm": total_norm,
                "guard/skipped": float(skipped),
                "batch/zero_adv_groups": float(constant_groups(rewards, G).sum().item()),
                "batch/responses": float(B),
                "batch/response_tokens": float(n_tok),
                "batch/truncated": float(sum(s.finish_reason == "length" for s in samples)),
                "optim/lr": self.lr_sched.get_last_lr()[0],
                "time/train": time.monotonic() - t0,
            }
        )
        metrics["staleness/hist"] = hist
        if split:
            metrics["grad/norm_pos"] = _grad_norm(grads_pos)
            metrics["grad/norm_neg"] = _grad_norm(grads_neg)
        return metrics

    def _fraction(self, resp_mask: torch.Tensor, sl: slice) -> float:
        """This micro-batch's share of the batch loss under the configured aggregation."""
        if self.cfg.agg == "token-mean":
            return float(resp_mask[sl].sum() / resp_mask.sum().clamp(min=1))
        return resp_mask[sl].shape[0] / resp_mask.shape[0]

    def _batch_mean_nll(self, input_ids, attention, resp_mask, mb: int) -> float:
        """Mean over the batch's responses (with tokens) of their current mean token NLL: one no-grad forward
        pass, paid only by asympo's rescale=batch_mean under micro-batching (its scale is a batch mean)."""
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], mb):
                sl = slice(start, start + mb)
                logp, _ = causal_lm_logprobs(
                    self.model,
                    input_ids[sl],
                    attention[sl],
                    temperature=self.cfg.temperature,
                    chunk_size=self.cfg.chunk_size,
                )
                nll = mean_token_nll(logp, resp_mask[sl])
                has = resp_mask[sl].sum(-1) > 0
                total += float(nll[has].sum())
                count += int(has.sum())
        return total / count if count else 1.0

    def _micro_step(
        self, input_ids, attention, resp_mask, adv, blp, frac, grads_pos, grads_neg, hparams
    ) -> dict[str, float]:
        cfg = self.cfg
        logp, entropy = causal_lm_logprobs(
            self.model,
            input_ids,
            attention,
            temperature=cfg.temperature,
            chunk_size=cfg.chunk_size,
            with_entropy=cfg.log_entropy or cfg.entropy_coef > 0,
        )  # [b, L-1]
        ref_logp = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_logp, _ = causal_lm_logprobs(
                    self.ref_model,
                    input_ids,
                    attention,
                    temperature=cfg.temperature,
                    chunk_size=cfg.chunk_size,
                )
        ent = entropy.detach() if (entropy is not None and cfg.entropy_coef == 0) else entropy
        loss, metrics = policy_loss(
            cfg.objective,
            logp,
            resp_mask,
            adv,
            behavior_logp=blp if cfg.needs_behavior_logp else None,
            agg=cfg.agg,
            ref_logp=ref_logp,
            kl_coef=cfg.kl_coef,
            entropy=ent,
            entropy_coef=cfg.entropy_coef,
            **hparams,
        )
        if blp is not None and "kl/behavior" not in metrics:
            d = blp - logp.detach()
            metrics["kl/behavior"] = float(
                ((torch.exp(d) - d - 1) * resp_mask).sum() / resp_mask.sum().clamp(min=1)
            )
        if grads_pos is None:
            (loss * frac).backward()
            return metrics
        # The positive and negative terms' gradients, separately: every objective's term for response i
        # depends on A_i alone, so masking the advantages splits the policy loss exactly.
        parts = [
            policy_loss(
                cfg.objective,
                logp,
                resp_mask,
                adv * sel,
                behavior_logp=blp if cfg.needs_behavior_logp else None,
                agg=cfg.agg,
                **hparams,
            )[0]
            for sel in (adv > 0, adv < 0)
        ]
        rest = loss - parts[0] - parts[1]  # KL and entropy terms (zero when unused)
        for part, acc in zip(parts, (grads_pos, grads_neg)):
            gs = torch.autograd.grad(part * frac, self.params, retain_graph=True, allow_unused=True)
            for p, a, g in zip(self.params, acc, gs):
                if g is not None:
                    a.add_(g)  # the batch's running pos/neg sums (for the norms)
                    p.grad = g.clone() if p.grad is None else p.grad.add_(g)  # this micro-batch's share only
        if rest.requires_grad:
            (rest * frac).backward()
        return metrics

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {
            "version": self.version,
            "optimizer": self.opt.state_dict(),
            "lr_sched": self.lr_sched.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.version = state["version"]
        self.opt.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["lr_sched"])
