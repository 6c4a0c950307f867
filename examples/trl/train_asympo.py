"""ASymPO (or SPO) with TRL's GRPO machinery on a procedural addition task.

    pip install 'asympo[trl]'
    python examples/trl/train_asympo.py --model Qwen/Qwen3-0.6B --loss-type asympo --out runs/trl-asympo

`--model` is a hub id or a local directory. Each generation batch is reused for
`--steps-per-generation` optimiser steps, so later steps train on stale samples: the regime where
ASymPO's balance matters and GRPO would need its old-log-prob correction. See docs/integrations.md.
"""

from __future__ import annotations

import argparse
import random
import re

from datasets import Dataset

from asympo.integrations.trl import ASymPOConfig, ASymPOTrainer


def addition_dataset(n: int, seed: int) -> Dataset:
    """`n` prompts "a+b=" with their answers, a, b < 100 (no download)."""
    rng = random.Random(seed)
    pairs = [(rng.randrange(100), rng.randrange(100)) for _ in range(n)]
    return Dataset.from_dict(
        {"prompt": [f"{a}+{b}=" for a, b in pairs], "answer": [str(a + b) for a, b in pairs]}
    )


def exact_answer(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """1.0 when the completion starts with the right number, else 0.0."""
    rewards = []
    for completion, ref in zip(completions, answer):
        match = re.match(r"\s*(-?\d+)", completion)
        rewards.append(float(match is not None and match.group(1) == ref))
    return rewards


def main(argv: list[str] | None = None) -> ASymPOTrainer:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub id or local path of a causal LM")
    p.add_argument("--loss-type", default="asympo", choices=["asympo", "spo", "dapo", "grpo"])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--num-prompts", type=int, default=2000)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16, help="completions per device and optimiser step")
    p.add_argument("--steps-per-generation", type=int, default=4, help="optimiser steps per generation batch")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument(
        "--neg-scale", type=float, default=0.5, help="spo: weight of negative-advantage completions"
    )
    p.add_argument(
        "--rescale", default="none", choices=["none", "batch_mean"], help="asympo: step-size rescale"
    )
    p.add_argument("--max-completion-length", type=int, default=16)
    p.add_argument("--cpu", action="store_true", help="train on CPU (no bf16)")
    a = p.parse_args(argv)

    args = ASymPOConfig(
        output_dir=a.out,
        loss_type=a.loss_type,
        spo_neg_scale=a.neg_scale,
        asympo_rescale=a.rescale,
        learning_rate=a.lr,
        max_steps=a.max_steps,
        per_device_train_batch_size=a.batch_size,
        steps_per_generation=a.steps_per_generation,
        num_generations=a.num_generations,
        max_completion_length=a.max_completion_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=a.cpu,
        bf16=not a.cpu,
    )
    trainer = ASymPOTrainer(
        model=a.model,
        reward_funcs=exact_answer,
        args=args,
        train_dataset=addition_dataset(a.num_prompts, seed=0),
    )
    trainer.train()
    return trainer


if __name__ == "__main__":
    main()
