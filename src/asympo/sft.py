"""SFT warm-up: the RL start point of the embedded demo, trained once and cached by its config.

A freshly built tiny model is trained with teacher forcing on the arithmetic train split, with the loss on
the answer tokens (and the EOS after them) only. The defaults are chosen so that on 2 CPU cores it takes
about a minute and leaves the model clearly able but far from perfect (held-out pass@1 at temperature 1
around 0.2-0.5; measurements in docs/engines.md), so RL has room to show an improvement.

The result is a HF model directory (safetensors + tokenizer + `sft.json`) under
`${ASYMPO_CACHE:-~/.cache/asympo}/sft/<hash of the config>/`, written atomically (temp dir, fsync, rename);
a second call with the same config returns it at once.
"""

from __future__ import annotations

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
from asympo.models.tiny import TinyModelConfig, build_tiny_model, count_parameters, save_pretrained
from asympo.models.tokenizer import build_char_tokenizer

__all__ = ["SFT_FORMAT_VERSION", "SFTConfig", "cache_root", "sft_cache_path", "warmup"]

SFT_FORMAT_VERSION = 1
"""Bump when the training code changes what a config produces, so old cache entries are not reused."""

IGNORE = -100


@dataclass
class SFTConfig:
    """What the warm-up trains and how."""

    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the tiny model."""
    task: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    """The arithmetic task; SFT uses its train split only."""
    steps: int = 300
    """Optimiser steps."""
    batch_size: int = 64
    """Sequences per step."""
    lr: float = 3e-3
    """Peak learning rate of AdamW (linear warm-up, cosine decay to 10%)."""
    warmup_steps: int = 20
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    seed: int = 0
    """Seed of the batch order."""

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = TinyModelConfig(**self.model)
        if isinstance(self.task, dict):
            self.task = ArithmeticConfig(**self.task)
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SFTConfig.{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"SFTConfig.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"SFTConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"SFTConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"SFTConfig.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.task.n_train < 1:
            raise ValueError("SFTConfig.task.n_train must be >= 1 (SFT trains on the train split)")

    def key(self) -> str:
        """Hash of everything that determines the result (config and training-code version)."""
        blob = json.dumps({"format": SFT_FORMAT_VERSION, "config": asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$ASYMPO_CACHE`, else `~/.cache/asympo`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("ASYMPO_CACHE") or "~/.cache/asympo").expanduser()


def sft_cache_path(cfg: SFTConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "sft" / cfg.key()


def _encode_examples(tokenizer: Any, cfg: ArithmeticConfig) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per train problem: labels only on the answer and the EOS after it."""
    examples = []
    for p in arithmetic_problems(cfg, "train"):
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
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def train_sft(cfg: SFTConfig, progress: bool = True) -> tuple[torch.nn.Module, Any, dict]:
    """Build and train the model in memory; returns (model, tokenizer, stats)."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(cfg.model, tokenizer).train()
    examples = _encode_examples(tokenizer, cfg.task)
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    losses: list[float] = []
    start = time.perf_counter()
    bar = _progress_bar(progress)
    with bar:
        task = bar.add_task("SFT warm-up", total=cfg.steps, loss=float("nan")) if bar else None
        for _ in range(cfg.steps):
            ids, mask, labels = _collate(
                rng.sample(examples, min(cfg.batch_size, len(examples))), tokenizer.pad_token_id
            )
            loss = _answer_loss(model, ids, mask, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if bar:
                bar.update(task, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
    stats = {
        "seconds": time.perf_counter() - start,
        "parameters": count_parameters(model),
        "loss_first": losses[0],
        "loss_last": sum(losses[-20:]) / len(losses[-20:]),
        "losses": losses,
    }
    return model.eval(), tokenizer, stats


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

    def __bool__(self):
        return False


def _progress_bar(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        transient=False,
    )


def warmup(
    cfg: SFTConfig | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """The SFT'd model directory for `cfg`, trained now or taken from the cache.

    Load it with `TorchEngine.from_pretrained(path)` or `AutoModelForCausalLM.from_pretrained(path)` plus
    `asympo.models.load_tokenizer(path)`. `sft.json` in it records the config and the training stats.
    """
    cfg = cfg or SFTConfig()
    final = sft_cache_path(cfg, cache_dir)
    if (final / "sft.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer, stats = train_sft(cfg, progress=progress)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        save_pretrained(model, tokenizer, tmp)
        meta = {"format": SFT_FORMAT_VERSION, "key": cfg.key(), "config": asdict(cfg), "stats": stats}
        (tmp / "sft.json").write_text(json.dumps(meta, indent=1))
        _fsync_tree(tmp)
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
