"""`train(cfg)`: wires a run together and drives the loop.

    backend.next_batch(version) -> learner.step(batch) -> backend.publish(weights, version + 1)
    -> metrics.jsonl, periodic held-out eval (eval.jsonl), atomic checkpoints, progress bar.

All validation (names, paths, shapes of the config, engine/objective compatibility) happens before any
model is loaded or process started. The runtime reports through callbacks and never imports the CLI.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asympo.checkpoint import atomic_write_text, latest_checkpoint, load_training_state, save_checkpoint
from asympo.config import TrainConfig
from asympo.data.problem import Problem
from asympo.engines.base import SamplingParams
from asympo.learner import Learner
from asympo.runtime.backend import Backend, WorkerSpec
from asympo.runtime.scheduler import PromptScheduler

Callback = Callable[[dict], None]


@dataclass
class RunResult:
    out: Path
    steps: int
    pass1_before: float | None
    pass1_after: float | None
    wall_s: float
    final_metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- setup


def resolve_model_path(cfg: TrainConfig, progress: bool = True) -> str:
    """The HF directory (or hub id) of the initial policy; runs/fetches the embedded SFT warm-up if asked."""
    if cfg.model.path != "embedded":
        check_model_path(cfg.model.path)
        return cfg.model.path
    from asympo.sft import SFTConfig, warmup

    # The warm-up learns the task RL then trains on (arithmetic for any task but reasoning).
    if cfg.task.name == "reasoning":
        sft = {"task_name": "reasoning", **cfg.sft, "task": {**cfg.task.reasoning, **cfg.sft.get("task", {})}}
    else:
        sft = {**cfg.sft, "task": {**cfg.task.arithmetic, **cfg.sft.get("task", {})}}
    return str(warmup(SFTConfig(**sft), progress=progress))


def check_model_path(path: str) -> None:
    """A local HF model directory must have config.json; anything else must look like a hub id."""
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise FileNotFoundError(
                f"model.path {path} exists but has no config.json (not a HF model directory)"
            )
    elif path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise FileNotFoundError(f"model.path {path!r} does not exist (and is not a hub id like org/name)")


def load_task(cfg: TrainConfig, split: str, tokenizer=None) -> list[Problem]:
    t = cfg.task
    if t.name == "arithmetic":
        from asympo.data.arithmetic import ArithmeticConfig, arithmetic_problems

        return arithmetic_problems(ArithmeticConfig(**t.arithmetic), split)
    if t.name == "reasoning":
        from asympo.data.reasoning import ReasoningConfig, reasoning_problems

        return reasoning_problems(ReasoningConfig(**t.reasoning), split)
    from asympo.data import load_problems

    return load_problems(t.name, split, fields=t.fields or None, template=t.template, tokenizer=tokenizer)


def check_device(device: str, fix: str = "--set model.device=cpu") -> None:
    """Raise a ValueError that says what to do (`fix`) when `device` cannot be used on this machine."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(
            f"model.device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)"
        ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"model.device={device!r} but this torch build sees no CUDA GPU "
                f"(torch {torch.__version__}); use {fix} or install a CUDA build of torch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"model.device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"model.device={device!r} but MPS is not available; use {fix}")


def validate(cfg: TrainConfig) -> None:
    """Checks that need no model: the reward and the task resolve (before any work starts)."""
    from asympo.rewards import get_reward

    get_reward(cfg.task.reward_name)
    if cfg.backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ImportError("backend=ray needs Ray, which is not installed: pip install 'asympo[ray]'")
    if cfg.model.path != "embedded":
        check_model_path(cfg.model.path)
    check_device(cfg.model.device)
    builtin = ("arithmetic", "reasoning", "gsm8k", "math500")
    if cfg.task.name not in builtin and not cfg.task.name.startswith("hf:"):
        if not Path(cfg.task.name).exists():
            raise FileNotFoundError(
                f"task.name {cfg.task.name!r} is neither a built-in task ({', '.join(builtin)}), "
                "an hf:<dataset>, nor an existing file"
            )


def make_backend(cfg: TrainConfig, spec: WorkerSpec, scheduler: PromptScheduler) -> Backend:
    if cfg.backend == "ray":
        from asympo.runtime.ray import RayBackend

        return RayBackend(
            spec,
            scheduler,
            cfg.buffer,
            num_workers=cfg.rollout.num_workers,
            max_tasks_per_call=cfg.rollout.max_prompts_per_call,
            ray_address=cfg.ray.address,
            worker_resources=cfg.ray.worker_resources or None,
        )
    from asympo.runtime.local import InlineBackend, ProcessBackend

    if cfg.mode == "sync":
        return InlineBackend(spec, scheduler, cfg.buffer)
    return ProcessBackend(
        spec,
        scheduler,
        cfg.buffer,
        num_workers=cfg.rollout.num_workers,
        max_tasks_per_call=cfg.rollout.max_prompts_per_call,
    )


class JsonlWriter:
    """Appends one JSON object per line, flushed and fsync'ed (a crash loses at most the line being written)."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(_jsonable(record)) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _truncate_jsonl(path: Path, before_step: int) -> None:
    """On resume, keep only the lines of steps before the checkpoint (they are re-run after it)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the crash
        if rec.get("step", -1) < before_step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


# ---------------------------------------------------------------------------------------------- evaluation


class HeldOutEval:
    """pass@1 on held-out problems with the learner's current weights and the training reward."""

    def __init__(self, cfg: TrainConfig, model, tokenizer, problems: list[Problem]):
        from asympo.engines.torch import TorchEngine
        from asympo.rewards import get_reward

        self.cfg = cfg
        self.problems = problems[: cfg.eval.limit] if cfg.eval.limit else problems
        self.engine = TorchEngine(model, tokenizer)
        from asympo.rewards.pool import RewardPool, RewardPoolConfig

        self.reward = get_reward(cfg.task.reward_name)
        self.pool = RewardPool(
            cfg.task.reward_name,
            RewardPoolConfig(num_workers=cfg.rollout.reward_workers, timeout_s=cfg.rollout.reward_timeout_s),
        )
        self.sampling = SamplingParams(
            temperature=cfg.eval.temperature,
            top_p=1.0,
            max_new_tokens=cfg.rollout.max_new_tokens,
            seed=cfg.seed + 12345,
        )

    def __call__(self) -> dict:
        from asympo.evaluate import evaluate

        was_training = self.engine.model.training
        self.engine.model.eval()
        try:
            return evaluate(
                self.engine, self.problems, self.reward, n=self.cfg.eval.n, sampling=self.sampling
            )
        finally:
            self.engine.model.train(was_training)


# ---------------------------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig, *, resume: bool = False, progress: bool = True, callbacks: list[Callback] | None = None
) -> RunResult:
    """Run (or with `resume=True`, continue) the training described by `cfg`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_start = time.monotonic()
    callbacks = callbacks or []
    out = Path(cfg.out)
    validate(cfg)
    ckpt_root = out / "checkpoints"
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {ckpt_root}")
    if not resume and (out / "metrics.jsonl").exists():
        raise FileExistsError(
            f"{out} already holds a run (metrics.jsonl); pass --resume to continue it or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.mode == "async" and cfg.model.device == "cpu":
        # Leave the rollout workers their cores, so generation and training truly overlap.
        busy = cfg.rollout.num_workers * cfg.rollout.threads
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - busy))
    model_path = resolve_model_path(cfg, progress=progress)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
    dtype = getattr(torch, cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        str(ckpt or model_path), dtype=dtype, trust_remote_code=False
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_problems = load_task(cfg, cfg.task.train_split, tokenizer)
    eval_problems = load_task(cfg, cfg.task.eval_split, tokenizer)

    if not resume:
        atomic_write_text(out / "config.json", cfg.to_json())
    learner = Learner(model, cfg.learner, pad_id=pad_id, device=cfg.model.device)
    scheduler = PromptScheduler(
        train_problems,
        prompts_per_step=cfg.rollout.prompts_per_step,
        group_size=cfg.rollout.group_size,
        buffer=cfg.buffer,
        seed=cfg.seed,
        synchronous=cfg.mode == "sync",
    )
    sampling = SamplingParams(
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens,
        return_logprobs=cfg.learner.needs_behavior_logp,
    )
    spec = WorkerSpec(
        engine=cfg.rollout.engine,
        model_path=model_path,
        sampling=sampling,
        reward=cfg.task.reward_name,
        engine_kwargs={"device": cfg.model.device, **cfg.rollout.engine_kwargs}
        if cfg.rollout.engine == "torch"
        else dict(cfg.rollout.engine_kwargs),
        reward_workers=cfg.rollout.reward_workers,
        reward_timeout_s=cfg.rollout.reward_timeout_s,
        threads=cfg.rollout.threads,
    )
    backend = make_backend(cfg, spec, scheduler)
    start_step = 0
    if ckpt is not None:
        learner_state, trainer_state = load_training_state(ckpt)
        learner.load_state_dict(learner_state)
        backend.load_state_dict(trainer_state["backend"])
        start_step = trainer_state["step"]
        for name in ("metrics.jsonl", "eval.jsonl"):
            _truncate_jsonl(out / name, start_step)

    evaluator = HeldOutEval(cfg, learner.model, tokenizer, eval_problems)
    learner.model.train()  # the engine wrapper put it in eval mode
    metrics_log = JsonlWriter(out / "metrics.jsonl")
    eval_log = JsonlWriter(out / "eval.jsonl")
    pass1_before = None

    def run_eval(step: int) -> float:
        t0 = time.monotonic()
        res = evaluator()
        rec = {"step": step, **res, "time": time.monotonic() - t0}
        eval_log.write(rec)
        for cb in callbacks:
            cb({"event": "eval", **rec})
        return res["pass@1"]

    if start_step == 0:
        pass1_before = run_eval(0)
    bar = _Progress(cfg.steps, start_step, enabled=progress)
    last: dict = {}
    backend.start(learner.model.state_dict(), learner.version)
    try:
        for step in range(start_step, cfg.steps):
            batch = backend.next_batch(learner.version, cfg.rollout.prompts_per_step)
            m = learner.step(batch)
            backend.publish(learner.model.state_dict(), learner.version)
            m["step"] = step
            m["time/wait"] = batch.time_wait
            m["time/generate"] = sum(g.time_generate for g in batch.groups)
            m["throughput/tokens_per_s"] = m["batch/response_tokens"] / max(
                1e-9, m["time/train"] + batch.time_wait
            )
            m.update(backend.metrics())
            metrics_log.write(m)
            last = m
            for cb in callbacks:
                cb({"event": "step", **m})
            done = step + 1
            if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.steps:
                run_eval(done)
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps:
                save_checkpoint(
                    ckpt_root,
                    done,
                    model=learner.model,
                    tokenizer=tokenizer,
                    learner_state=learner.state_dict(),
                    trainer_state={"backend": backend.state_dict()},
                    keep=cfg.keep_checkpoints,
                )
            bar.update(m)
    finally:
        bar.close()
        backend.close()
    pass1_after = run_eval(cfg.steps)
    evaluator.pool.close()
    metrics_log.close()
    eval_log.close()
    wall = time.monotonic() - t_start
    summary = {
        "pass1_before": pass1_before,
        "pass1_after": pass1_after,
        "steps": cfg.steps,
        "wall_s": wall,
        "resumed_from": start_step or None,
    }
    atomic_write_text(out / "summary.json", json.dumps(_jsonable(summary), indent=2))
    if cfg.report:
        from asympo.report import write_report

        write_report(out)
    return RunResult(out, cfg.steps, pass1_before, pass1_after, wall, last)


class _Progress:
    """A rich progress bar with reward, staleness and ETA; plain lines when stderr is not a terminal."""

    def __init__(self, total: int, start: int, enabled: bool):
        import sys

        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.total, self.count = total, start
        self._bar = None
        if enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("reward {task.fields[reward]}  staleness {task.fields[stale]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, reward="-", stale="-")
            self._bar.start()
        self._t0 = time.monotonic()

    def update(self, m: dict) -> None:
        self.count += 1
        reward, stale = f"{m['reward/mean']:.3f}", f"{m['staleness/mean']:.1f}"
        if self._bar is not None:
            self._bar.update(self._task, advance=1, reward=reward, stale=stale)
        elif self.enabled and (self.count % 10 == 0 or self.count == self.total):
            import sys

            el = time.monotonic() - self._t0
            print(
                f"step {self.count}/{self.total} reward {reward} staleness {stale} ({el:.0f}s)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
