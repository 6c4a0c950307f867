"""SFT warm-up: the RL start point of the embedded demo, trained once and cached by its config.

A freshly built tiny model is trained with teacher forcing on the train split of its task (the arithmetic
task, or with `task_name="reasoning"` the word problems of `asympo.data.reasoning`, whose answers are a
short worked solution), with the loss on the answer tokens (and the EOS after them) only. Small transformers learn addition in a sudden transition
whose timing varies with the seed (and with the floating-point details of the machine), so a fixed step
count lands anywhere from "hardly any" to "nearly all" correct. The warm-up therefore stops on a measured
target instead: every `eval_every` steps it samples the validation problems (a slice of the train split
held out from SFT) at temperature 1 and stops once pass@1 reaches `target_pass1` (default 0.3), keeping
the checkpoint (this check or the previous one) closest to the target — clearly able, far from solved,
which leaves RL room to show an improvement. Measurements in docs/engines.md.

The result is a HF model directory (safetensors + tokenizer + `sft.json`) under
`${ASYMPO_CACHE:-~/.cache/asympo}/sft/<hash of the config>/`, written atomically (temp dir, fsync, rename);
a second call with the same config returns it at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from asympo.data.arithmetic import ArithmeticConfig, arithmetic_problems
from asympo.data.problem import Problem
from asympo.data.reasoning import ReasoningConfig, reasoning_problems
from asympo.engines.base import SamplingParams
from asympo.engines.torch import TorchEngine
from asympo.evaluate import evaluate
from asympo.files import fsync_tree
from asympo.models.tiny import TinyModelConfig, build_tiny_model, count_parameters, save_pretrained
from asympo.models.tokenizer import build_char_tokenizer
from asympo.rewards.arithmetic import arithmetic_reward
from asympo.rewards.math import math_reward

__all__ = [
    "SFT_FORMAT_VERSION",
    "SFTConfig",
    "cache_root",
    "sft_cache_path",
    "torch_threads",
    "train_sft",
    "warmup",
]

SFT_FORMAT_VERSION = 3
"""Bump when the training code changes what a config produces, so old cache entries are not reused."""

IGNORE = -100
SFT_TASKS = ("arithmetic", "reasoning")


@dataclass
class SFTConfig:
    """What the warm-up trains and how."""

    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the tiny model."""
    task: ArithmeticConfig | ReasoningConfig = field(default_factory=ArithmeticConfig)
    """The task's settings (an ArithmeticConfig or a ReasoningConfig, as `task_name` says); SFT uses its
    train split only."""
    steps: int = 3000
    """Most optimiser steps; training stops earlier once `target_pass1` is reached."""
    batch_size: int = 64
    """Sequences per step."""
    lr: float = 2e-3
    """Learning rate of AdamW after the linear warm-up."""
    lr_schedule: str = "constant"
    """After the warm-up: `constant`, or `cosine` (decays to 0 at `steps`; for a fixed budget: with
    `target_pass1` the stopping step is not known ahead)."""
    warmup_steps: int = 50
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    target_pass1: float | None = 0.3
    """Stop once validation pass@1 (temperature 1) reaches this; None trains all `steps`."""
    eval_every: int = 25
    """Steps between validation checks. When the target is crossed, the weights of the check closest to
    it (this one or the previous) are kept."""
    n_val: int = 200
    """Problems at the end of the train split held out from SFT for the validation check (RL may use
    them: they are train problems)."""
    seed: int = 0
    """Seed of the batch order and of the validation sampling."""
    task_name: str = "arithmetic"
    """The task learnt: arithmetic (answers are one number, graded by the arithmetic reward) or reasoning
    (word problems with a worked solution ending in `#### N`, graded by the math reward)."""

    def __post_init__(self) -> None:
        if self.task_name not in SFT_TASKS:
            raise ValueError(f"SFTConfig.task_name must be one of {SFT_TASKS}, got {self.task_name!r}")
        task_cls = ReasoningConfig if self.task_name == "reasoning" else ArithmeticConfig
        if isinstance(self.model, dict):
            self.model = TinyModelConfig(**self.model)
        if isinstance(self.task, dict):
            self.task = task_cls(**self.task)
        if not isinstance(self.task, task_cls):
            raise ValueError(
                f"SFTConfig.task must be a {task_cls.__name__} for task_name={self.task_name!r}, "
                f"got a {type(self.task).__name__}"
            )
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SFTConfig.{name} must be an int >= 1, got {value!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"SFTConfig.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"SFTConfig.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"SFTConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"SFTConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"SFTConfig.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.target_pass1 is not None and not 0 < self.target_pass1 <= 1:
            raise ValueError(f"SFTConfig.target_pass1 must be None or in (0, 1], got {self.target_pass1}")
        if self.eval_every < 1:
            raise ValueError(f"SFTConfig.eval_every must be >= 1, got {self.eval_every}")
        n_val = self.n_val if self.target_pass1 is not None else 0
        if n_val < 0 or self.task.n_train - n_val < 1:
            raise ValueError(
                f"SFTConfig.n_val ({self.n_val}) must be >= 0 and leave train problems "
                f"(task.n_train = {self.task.n_train})"
            )

    def key(self) -> str:
        """Hash of everything that determines the result (config and training-code version)."""
        config = asdict(self)
        if self.task_name == "arithmetic":
            del config["task_name"]  # keeps the keys of caches made before the field existed
        if self.lr_schedule == "constant":
            del config["lr_schedule"]  # likewise
        blob = json.dumps({"format": SFT_FORMAT_VERSION, "config": config}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$ASYMPO_CACHE`, else `~/.cache/asympo`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("ASYMPO_CACHE") or "~/.cache/asympo").expanduser()


def sft_cache_path(cfg: SFTConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "sft" / cfg.key()


def _split(cfg: SFTConfig) -> tuple[list[Problem], list[Problem]]:
    """(SFT problems, validation problems) from the task's train split."""
    problems = task_problems(cfg, "train")
    n_val = cfg.n_val if cfg.target_pass1 is not None else 0
    return problems[: len(problems) - n_val], problems[len(problems) - n_val :]


def task_problems(cfg: SFTConfig, split: str) -> list[Problem]:
    """The problems of the warm-up's task, split "train" or "test"."""
    if cfg.task_name == "reasoning":
        return reasoning_problems(cfg.task, split)
    return arithmetic_problems(cfg.task, split)


def task_reward(cfg: SFTConfig):
    """The reward that grades the warm-up's task (the one RL's `task.reward=auto` picks too)."""
    return math_reward if cfg.task_name == "reasoning" else arithmetic_reward


def _encode_examples(tokenizer: Any, problems: list[Problem]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per problem: labels only on the answer and the EOS after it."""
    examples = []
    for p in problems:
        prompt = tokenizer(p.prompt, add_special_tokens=True)["input_ids"]
        answer = tokenizer(p.reference, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append((prompt + answer, [IGNORE] * len(prompt) + answer))
    return examples


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded input ids, attention mask and labels.  # -> [B, L] each"""
    L = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), L), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, mask, labels


def _answer_loss(model: torch.nn.Module, ids, mask, labels) -> torch.Tensor:
    """Mean cross-entropy over label tokens (next-token prediction)."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # [B, L, V]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE
    )


def _lr_factor(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return 1.0


def _val_pass1(model: torch.nn.Module, tokenizer: Any, problems: list[Problem], cfg: SFTConfig) -> float:
    """pass@1 at temperature 1 (2 samples per problem, seeded) on the validation problems."""
    sampling = SamplingParams(temperature=1.0, max_new_tokens=cfg.task.max_answer_chars + 1, seed=cfg.seed)
    engine = TorchEngine(model, tokenizer)
    return evaluate(engine, problems, task_reward(cfg), n=2, sampling=sampling, batch_size=len(problems))[
        "pass@1"
    ]


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` intra-op threads (None: leave torch's setting), restoring it afterwards.

    Why 1 by default: on a 2-core machine shared with anything else (the rollout process, other jobs),
    2 OpenMP threads on matrices this small spin and get descheduled; measured 0.056 s/step with 1 thread
    vs 1.0-1.2 s/step with 2 under load (docs/engines.md).
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_sft(
    cfg: SFTConfig, progress: bool = True, threads: int | None = 1
) -> tuple[torch.nn.Module, Any, dict]:
    """Build and train the model in memory; returns (model, tokenizer, stats)."""
    with torch_threads(threads):
        return _train_sft(cfg, progress)


def _train_sft(cfg: SFTConfig, progress: bool) -> tuple[torch.nn.Module, Any, dict]:
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(cfg.model, tokenizer).train()
    train_problems, val_problems = _split(cfg)
    examples = _encode_examples(tokenizer, train_problems)
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    losses: list[float] = []
    val_curve: list[tuple[int, float]] = []
    previous: tuple[int, float, dict] | None = None  # last check below the target: step, pass@1, weights
    chosen: tuple[int, float] | None = None
    start = time.perf_counter()
    bar = _progress_bar(progress)
    with bar or contextlib.nullcontext():
        task = (
            bar.add_task("SFT warm-up", total=cfg.steps, loss=float("nan"), val=float("nan")) if bar else None
        )
        for step in range(1, cfg.steps + 1):
            batch = rng.sample(examples, min(cfg.batch_size, len(examples)))
            loss = _answer_loss(model, *_collate(batch, tokenizer.pad_token_id))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            evaluated = cfg.target_pass1 is not None and step % cfg.eval_every == 0
            if evaluated:
                val_curve.append((step, _val_pass1(model, tokenizer, val_problems, cfg)))
            if bar:
                recent = sum(losses[-20:]) / len(losses[-20:])
                bar.update(task, advance=1, loss=recent, val=val_curve[-1][1] if val_curve else float("nan"))
            if evaluated and val_curve[-1][1] >= cfg.target_pass1:
                # The transition can jump past the target between two checks; keep whichever of the
                # two checkpoints is closer to it.
                if (
                    previous is not None
                    and cfg.target_pass1 - previous[1] < val_curve[-1][1] - cfg.target_pass1
                ):
                    model.load_state_dict(previous[2])
                    chosen = previous[:2]
                if bar:
                    bar.update(task, total=step)
                break
            if evaluated:
                previous = (
                    step,
                    val_curve[-1][1],
                    {k: v.detach().clone() for k, v in model.state_dict().items()},
                )
    chosen = chosen or (val_curve[-1] if val_curve else None)
    reached = cfg.target_pass1 is not None and bool(val_curve) and val_curve[-1][1] >= cfg.target_pass1
    stats = {
        "seconds": time.perf_counter() - start,
        "parameters": count_parameters(model),
        "steps": len(losses),
        "reached_target": reached,
        "chosen_step": chosen[0] if chosen else len(losses),
        "val_pass1": chosen[1] if chosen else None,
        "val_curve": val_curve,
        "loss_first": losses[0],
        "loss_last": sum(losses[-20:]) / len(losses[-20:]),
        "losses": losses,
    }
    return model.eval(), tokenizer, stats


def _progress_bar(enabled: bool) -> Any:
    """A rich progress bar, or None."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("val pass@1 {task.fields[val]:.2f}"),
        TimeRemainingColumn(),
        transient=False,
    )


def warmup(
    cfg: SFTConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    threads: int | None = 1,
) -> Path:
    """The SFT'd model directory for `cfg`, trained now or taken from the cache.

    Load it with `TorchEngine.from_pretrained(path)` or `AutoModelForCausalLM.from_pretrained(path)` plus
    `asympo.models.load_tokenizer(path)`. `sft.json` in it records the config and the training stats.
    `threads`: torch intra-op threads while training (see `torch_threads`; None keeps the current setting).
    """
    cfg = cfg or SFTConfig()
    final = sft_cache_path(cfg, cache_dir)
    if (final / "sft.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer, stats = train_sft(cfg, progress=progress, threads=threads)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        save_pretrained(model, tokenizer, tmp)
        meta = {"format": SFT_FORMAT_VERSION, "key": cfg.key(), "config": asdict(cfg), "stats": stats}
        (tmp / "sft.json").write_text(json.dumps(meta, indent=1))
        fsync_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same config first (rename onto a non-empty dir fails): keep theirs.
            if not (final / "sft.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _task_defaults(task_name: str) -> SFTConfig:
    """The warm-up config the CLI starts from: the default one, or the `reasoning` train preset's."""
    if task_name == "arithmetic":
        return SFTConfig()
    from asympo.presets import PRESETS

    preset = PRESETS["reasoning"]
    return SFTConfig(**preset["sft"], task=preset["task"]["reasoning"], task_name="reasoning")


def main(argv: list[str] | None = None) -> None:
    """`python -m asympo.sft`: run (or fetch) the default warm-up and print held-out pass@1 and time."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m asympo.sft", description=main.__doc__)
    parser.add_argument(
        "--task",
        choices=SFT_TASKS,
        default="arithmetic",
        help="arithmetic: the demo's warm-up; reasoning: the `reasoning` preset's (its model, task and settings)",
    )
    known, _ = parser.parse_known_args(argv)
    defaults = _task_defaults(known.task)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="most steps")
    parser.add_argument("--target-pass1", type=float, default=defaults.target_pass1)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="batch order and model init seed")
    parser.add_argument("--cache-dir", default=None, help="default: $ASYMPO_CACHE or ~/.cache/asympo")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training")
    parser.add_argument("--eval-n", type=int, default=4, help="samples per held-out problem (temperature 1)")
    args = parser.parse_args(argv)

    cfg = SFTConfig(
        **{
            **asdict(defaults),
            "model": TinyModelConfig(**{**asdict(defaults.model), "init_seed": args.seed}),
            "task": defaults.task,
            "steps": args.steps,
            "target_pass1": args.target_pass1,
            "lr": args.lr,
            "seed": args.seed,
        }
    )
    start = time.perf_counter()
    path = warmup(cfg, cache_dir=args.cache_dir, threads=args.threads)
    elapsed = time.perf_counter() - start
    stats = json.loads((path / "sft.json").read_text())["stats"]
    engine = TorchEngine.from_pretrained(path)
    test = task_problems(cfg, "test")
    max_new = cfg.task.max_answer_chars + 1
    sampled = evaluate(
        engine,
        test,
        task_reward(cfg),
        n=args.eval_n,
        sampling=SamplingParams(max_new_tokens=max_new, seed=0),
    )
    greedy = evaluate(
        engine, test, task_reward(cfg), sampling=SamplingParams(temperature=0.0, max_new_tokens=max_new)
    )
    print(f"model: {path} ({stats['parameters']:,} parameters)")
    print(
        f"warm-up: {stats['seconds']:.1f} s training ({elapsed:.1f} s this call, {args.threads} torch thread(s))"
    )
    print(
        f"stopped after {stats['steps']} steps, kept step {stats['chosen_step']} (validation pass@1 "
        f"{stats['val_pass1']}, target "
        f"{cfg.target_pass1}); loss {stats['loss_first']:.3f} -> {stats['loss_last']:.3f}"
    )
    print(
        f"held-out ({len(test)} problems): pass@1 {sampled['pass@1']:.3f} at temperature 1 "
        f"(n={args.eval_n}, pass@{args.eval_n} {sampled.get(f'pass@{args.eval_n}', sampled['pass@1']):.3f}), "
        f"greedy {greedy['pass@1']:.3f}"
    )


if __name__ == "__main__":
    main()
