"""ASymPO and SPO in TRL: `ASymPOTrainer`, a `GRPOTrainer` with `loss_type="asympo"` or `"spo"`.

Supports TRL 1.16.x (`pip install 'asympo[trl]'`); the version is checked at import. Only the loss
changes: generation, rewards, advantages, logging and distribution stay TRL's. The loss is
`asympo.objectives.policy_loss` on TRL's per-token log-probs, so it is the same function the asympo
trainer uses; TRL's own loss types (`"dapo"`, `"grpo"`, ...) still work and run TRL's code.

    from asympo.integrations.trl import ASymPOConfig, ASymPOTrainer

    args = ASymPOConfig(output_dir="out", loss_type="asympo", num_generations=8)
    trainer = ASymPOTrainer(model="Qwen/Qwen3-0.6B", reward_funcs=my_reward, args=args, train_dataset=ds)
    trainer.train()

The objectives read no behavior log-probs, so the TRL features built on them are refused for
`asympo`/`spo` with a clear error (vLLM importance-sampling correction, the off-policy sequence mask,
the bias-corrected KL) instead of being silently ignored.

Batch statistics an objective declares (asympo's `asympo_rescale="batch_mean"` needs the batch mean of
the per-completion NLL) are computed once per *generation batch*, over all processes, with the policy that
generated it (one no-grad forward pass), and travel with the batch's rows (`asympo_batch_stats`), so every
micro-batch uses the same whole-batch value. With TRL's default `steps_per_generation ==
gradient_accumulation_steps` the generation batch is exactly one optimiser step's batch, as in asympo's
own learner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from asympo.integrations import require
from asympo.objectives import AGG_MODES, LossContext, context_totals, get_objective, policy_loss

require("trl", extra="trl", minimum="1.16", below="1.17", module="asympo.integrations.trl")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

__all__ = ["LOSS_TYPES", "TRL_LOSS_TYPES", "ASymPOConfig", "ASymPOTrainer"]

LOSS_TYPES = ("asympo", "spo")
# TRL 1.16's own loss types, which ASymPOTrainer hands to GRPOTrainer unchanged.
TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
_RESCALE = ("none", "batch_mean")


@dataclass
class ASymPOConfig(GRPOConfig):
    """`GRPOConfig` plus the ASymPO/SPO hyperparameters; every GRPOConfig field keeps its meaning.

    `beta` (KL to the reference, k3 estimator) and a static `entropy_coef` are applied through
    `policy_loss` and aggregated with `asympo_agg` like the policy term.
    """

    loss_type: str = field(
        default="asympo",
        metadata={
            "help": "'asympo' (A_i · l_i / sg(max(l_i, eps)): balanced without behavior log-probs), 'spo' "
            "(negative-advantage responses weighted by spo_neg_scale), or one of TRL's loss types, which "
            "run GRPOTrainer's own loss."
        },
    )
    asympo_eps: float = field(
        default=1e-6,
        metadata={"help": "asympo: floor of the detached mean token NLL l_i that divides each term; > 0."},
    )
    asympo_rescale: str = field(
        default="none",
        metadata={
            "help": "asympo: 'none' (the paper's form) or 'batch_mean' (every term times sg(mean_j l_j) over "
            "the whole generation batch: same balance, naive's step size)."
        },
    )
    spo_neg_scale: float = field(
        default=0.5,
        metadata={
            "help": "spo: weight c_i of responses with A_i < 0 (c_i = 1 otherwise); >= 0, 1 = plain REINFORCE."
        },
    )
    asympo_agg: str = field(
        default="seq-mean-token-mean",
        metadata={
            "help": "Aggregation for asympo/spo: 'seq-mean-token-mean' (keeps ASymPO's response-level "
            "balance), 'token-mean' or 'seq-mean-token-sum' (length-weighted: break it)."
        },
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "TRL's vLLM/trainer importance-sampling correction. Off by default here: asympo/spo use no "
            "behavior log-probs, and with it off TRL skips the extra old-log-prob forward pass it needs."
        },
    )
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={
            "help": "TRL's importance-weighted KL. Off by default here: it reads old log-probs, which asympo/spo "
            "do not use; the KL is the plain k3 estimate."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES + TRL_LOSS_TYPES:
            raise ValueError(
                f"ASymPOConfig.loss_type must be one of {LOSS_TYPES + TRL_LOSS_TYPES}, got {self.loss_type!r}"
            )
        if not self.asympo_eps > 0:
            raise ValueError(f"ASymPOConfig.asympo_eps must be > 0, got {self.asympo_eps}")
        if self.asympo_rescale not in _RESCALE:
            raise ValueError(
                f"ASymPOConfig.asympo_rescale must be one of {_RESCALE}, got {self.asympo_rescale!r}"
            )
        if not self.spo_neg_scale >= 0:
            raise ValueError(f"ASymPOConfig.spo_neg_scale must be >= 0, got {self.spo_neg_scale}")
        if self.asympo_agg not in AGG_MODES:
            raise ValueError(f"ASymPOConfig.asympo_agg must be one of {AGG_MODES}, got {self.asympo_agg!r}")
        if self.loss_type in LOSS_TYPES:
            self._check_asympo_compatible()

    def _check_asympo_compatible(self) -> None:
        """Refuse the GRPOConfig options that asympo/spo cannot honour (they need behavior log-probs)."""
        refused = {
            "vllm_importance_sampling_correction": (self.vllm_importance_sampling_correction, False),
            "off_policy_mask_threshold": (self.off_policy_mask_threshold, None),
            "top_entropy_quantile": (self.top_entropy_quantile, 1.0),
            "use_adaptive_entropy": (self.use_adaptive_entropy, False),
            "use_bias_correction_kl": (self.use_bias_correction_kl and self.beta != 0.0, False),
        }
        for name, (value, supported) in refused.items():
            if value != supported:
                raise ValueError(
                    f"ASymPOConfig.{name}={value!r} is not supported with loss_type={self.loss_type!r} "
                    f"(use {name}={supported!r}): asympo/spo read no behavior log-probs"
                )


class ASymPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose loss for `loss_type="asympo"|"spo"` is `asympo.objectives.policy_loss`.

    Takes the same arguments as GRPOTrainer; `args` must be an `ASymPOConfig` (default: one with
    `loss_type="asympo"`). Logs `nll/pos`, `nll/neg`, `nll/ratio`, `loss/pos`, `loss/neg` and the
    objective's metrics next to TRL's.
    """

    def __init__(self, model, reward_funcs=None, args: ASymPOConfig | None = None, *pargs, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = ASymPOConfig(f"{name.split('/')[-1]}-ASymPO")
        if not isinstance(args, ASymPOConfig):
            raise TypeError(
                f"ASymPOTrainer needs args=ASymPOConfig(...) (a GRPOConfig subclass), got {type(args).__name__}"
            )
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)

    def _objective_hparams(self) -> dict[str, Any]:
        if self.loss_type == "asympo":
            return {"eps": self.args.asympo_eps, "rescale": self.args.asympo_rescale}
        return {"neg_scale": self.args.spo_neg_scale}

    def _generate_and_score_completions(self, inputs):
        if self.loss_type not in LOSS_TYPES:
            return super()._generate_and_score_completions(inputs)
        # TRL 1.16 runs an extra no-grad forward pass for old log-probs whenever a generation batch
        # outlives one optimiser step (gradient_accumulation_steps % (steps_per_generation *
        # num_iterations) != 0), i.e. exactly when samples go stale. asympo/spo never read them, so for
        # this call TRL sees an aligned schedule; num_iterations is read nowhere else in it. The
        # Fraction keeps steps_per_generation * num_iterations == gradient_accumulation_steps exact.
        num_iterations = self.num_iterations
        self.num_iterations = Fraction(self.args.gradient_accumulation_steps, self.args.steps_per_generation)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self.num_iterations = num_iterations
        stats = self._batch_stat_names()
        if stats:
            output[_STATS_KEY] = self._batch_stats(output, stats)
        return output

    def _batch_stat_names(self) -> tuple[str, ...]:
        return get_objective(self.loss_type).batch_stats(self._objective_hparams())

    def _batch_stats(self, output: dict, stats: tuple[str, ...]) -> torch.Tensor:
        """The declared statistics of the whole generation batch (all processes), one copy per row  # [B, K]."""
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        mask = completion_mask if "tool_mask" not in output else completion_mask * output["tool_mask"]
        with torch.no_grad():
            logp, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                torch.cat([output["prompt_ids"], completion_ids], dim=1),
                torch.cat([output["prompt_mask"], completion_mask], dim=1),
                completion_ids.size(1),
                batch_size=self.args.per_device_train_batch_size,
                **{k: output[k] for k in _MULTIMODAL_KEYS if k in output},
            )
        totals = context_totals(mask.to(logp.dtype), logp, stats).to(logp.device)
        totals = self.accelerator.reduce(totals, reduction="sum")  # every process's completions
        ctx = LossContext.from_totals(totals.cpu(), stats)
        row = torch.tensor([getattr(ctx, name) for name in stats], dtype=torch.float64, device=logp.device)
        # One row per completion, so TRL's shuffling and splitting of the batch carry it to every micro-batch.
        return row.expand(completion_ids.size(0), -1).clone()

    def _compute_loss(self, model, inputs):
        if self.loss_type not in LOSS_TYPES:
            return super()._compute_loss(model, inputs)

        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = (
            completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        )  # [B, T]
        logp, entropy, aux_loss = self._get_per_token_logps_and_entropies(  # [B, T] each
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{k: inputs.get(k) for k in _MULTIMODAL_KEYS},
        )
        adv = inputs["advantages"]
        if adv.dim() == 2 and adv.size(1) == 1:
            adv = adv.squeeze(1)
        if adv.dim() != 1:
            raise ValueError(
                f"loss_type={self.loss_type!r} needs one advantage per completion ([B]), got shape {list(adv.shape)}"
            )

        ctx = None
        if _STATS_KEY in inputs:
            ctx = LossContext(**dict(zip(self._batch_stat_names(), inputs[_STATS_KEY][0].tolist())))
        loss, metrics = policy_loss(
            self.loss_type,
            logp,
            mask,
            adv.to(logp.dtype),
            agg=self.args.asympo_agg,
            ref_logp=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            kl_coef=self.beta,
            entropy=entropy,
            entropy_coef=self.entropy_coef,
            ctx=ctx,
            **self._objective_hparams(),
        )
        mode = "train" if self.model.training else "eval"
        # Trainer sums micro-batch losses over gradient accumulation; TRL's per-sequence losses divide
        # by the accumulation steps so the step is the mean over the accumulated batch.
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = loss / normalizer
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            metrics["aux_loss"] = aux_loss.item()
        self._log_objective_metrics(mode, metrics)
        return loss

    def _log_objective_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        """Average each metric over processes (NaN-aware: a process may hold no negative response)."""
        keys = sorted(metrics)
        local = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        world = self.accelerator.gather(local[None]).reshape(-1, len(keys))  # [processes, K]
        for key, value in zip(keys, world.nanmean(0).tolist()):
            self._metrics[mode][key].append(value)


# The key under which a generation batch carries its batch statistics (one row per completion).
_STATS_KEY = "asympo_batch_stats"

# Optional inputs of GRPOTrainer._get_per_token_logps_and_entropies (vision-language models).
_MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)
