"""Named run configurations (`asympo train --preset NAME`); each is a dict of overrides of TrainConfig's
defaults, so the dataclasses stay the one source of truth for every field and its documentation."""

from __future__ import annotations

from asympo.config import TrainConfig
from asympo.models.tiny import SIZES

PRESETS: dict[str, dict] = {
    # The embedded default: tiny model, SFT warm-up, asynchronous ASymPO with real staleness on 2 CPU cores.
    "demo": {
        "out": "runs/demo",
        "steps": 150,
        "mode": "async",
        "checkpoint_every": 50,
        "rollout": {"prompts_per_step": 16, "group_size": 8, "max_new_tokens": 8, "num_workers": 1},
        "buffer": {"max_staleness": 4, "policy": "wait"},
        "learner": {"objective": "asympo", "lr": 2e-4},
        "eval": {"every": 50, "limit": 200, "n": 4},
    },
    # The second scale: GSM8K-shaped word problems with worked solutions (50-160 characters) and a 1.6M
    # model warmed up by SFT; see docs/results.md "Second scale".
    "reasoning": {
        "out": "runs/reasoning",
        "steps": 40,
        "mode": "async",
        "checkpoint_every": 20,
        # Numbers up to 20, so the arithmetic is a set of facts the 1.6M model can learn (with numbers up to
        # 110 it got nine additions in ten wrong and plateaued at pass@1 0.1); extra check and restate lines
        # in about half the solutions, so samples of one prompt differ in length.
        "task": {
            "name": "reasoning",
            "reasoning": {"n_train": 4000, "n_test": 200, "max_number": 20, "extras": ["check", "restate"]},
        },
        # A fixed budget with the learning rate decaying to 0: validation pass@1 on 100 problems was too
        # noisy an early stop (it stopped one run at 0.34 that 800 held-out samples put at 0.18).
        "sft": {
            "model": SIZES["reasoning"],
            "batch_size": 32,
            "lr": 2e-3,
            "lr_schedule": "cosine",
            "steps": 600,
            "target_pass1": None,
        },
        "rollout": {"prompts_per_step": 8, "group_size": 4, "max_new_tokens": 170, "num_workers": 1},
        "buffer": {"max_staleness": 4, "policy": "wait"},
        # On-policy (d = 0) from this warm-up 3e-4 collapsed and 1e-4 lost held-out pass@1 within 30 steps;
        # 3e-5 raised the training reward (docs/results.md "Second scale").
        "learner": {"objective": "asympo", "lr": 3e-5, "grad_split_every": 5},
        "eval": {"every": 0, "limit": 64, "n": 2},
    },
    # A real model on GSM8K (GPU machine; the weights must be available locally or in the HF cache).
    "gsm8k": {
        "out": "runs/gsm8k",
        "steps": 200,
        "mode": "async",
        "model": {"path": "Qwen/Qwen3-0.6B", "dtype": "bfloat16", "device": "cuda"},
        "task": {"name": "gsm8k", "template": "chat"},
        "rollout": {
            "engine": "torch",
            "prompts_per_step": 32,
            "group_size": 8,
            "max_new_tokens": 512,
            "reward_workers": 2,
            "reward_timeout_s": 5.0,
            "max_prompts_per_call": 32,
        },
        "buffer": {"max_staleness": 4, "policy": "wait"},
        # fp32 master weights with a bf16 forward (bf16 weights would round lr-1e-6 updates away); micro-batches
        # by token budget and recomputed activations so 32x8 responses of 512 tokens fit one GPU.
        "learner": {
            "objective": "asympo",
            "lr": 1e-6,
            "precision": "bf16-mixed",
            "gradient_checkpointing": True,
            "max_tokens_per_micro_batch": 16384,
            "warmup_steps": 10,
        },
        "eval": {"every": 50, "limit": 500, "n": 1, "temperature": 0.0},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_dict(name: str) -> dict:
    """The full config dict of preset `name` (defaults merged with the preset's overrides)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return _merge(TrainConfig().to_dict(), PRESETS[name])
