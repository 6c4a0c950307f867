"""`train(cfg)`: wires a run together and drives the loop.

    backend.next_batch(version) -> learner.step(batch) -> backend.publish(weights, version + 1)
    -> metrics.jsonl, periodic held-out eval (eval.jsonl), atomic checkpoints, progress bar.

All validation (names, paths, shapes of the config, engine/objective compatibility) happens before any
model is loaded or process started. The runtime reports through callbacks and never imports the CLI.

With `learner.parallel.procs = N > 1` (docs/scaling.md) `train()` starts N learner ranks itself
(`asympo.distributed.launch`; under `torchrun`, every rank enters `train()` itself). Rank 0 runs the loop
below and owns the backend, scheduler, buffer, metrics, evaluation and checkpoint files; the other ranks follow
(`_follow`): they receive each batch, take part in the sharded step, the weight gather and the sharded
checkpoint writes. In-process callbacks cannot cross into the ranks, so they need procs=1.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from asympo.checkpoint import (
    atomic_write_text,
    latest_checkpoint,
    load_training_state,
    load_weight_history,
    save_checkpoint,
)
from asympo.config import TrainConfig
from asympo.data.problem import Problem
from asympo.distributed import (
    SHARDED_META,
    SINGLE,
    DistContext,
    RankFailed,
    full_state_dict,
    init_from_env,
    launch,
    load_sharded,
    rank_device,
    save_sharded,
    under_launcher,
)
from asympo.engines.base import SamplingParams
from asympo.evaluate import load_task
from asympo.learner import Learner, NonFiniteStepsError, master_dtype, resolve_precision
from asympo.loggers import check_backends, make_loggers
from asympo.lora import policy_copy, policy_state_dict
from asympo.modelpath import check_model_path, check_model_source
from asympo.runtime.backend import Backend, WorkerSpec
from asympo.runtime.records import Batch
from asympo.runtime.scheduler import PromptScheduler
from asympo.runtime.staleness import make_policy

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
        return check_model_path(cfg.model.path, "model.path")
    from asympo.sft import SFTConfig, warmup

    return str(warmup(SFTConfig(**cfg.sft_settings()), progress=progress))


def load_policy(cfg: TrainConfig, model_path: str, ckpt: Path | None):
    """The learner's model and its KL reference (None: a copy of the model is right).

    The learner keeps its weights in fp32 (bf16 only for learner.precision=bf16-pure) whatever model.dtype
    says: model.dtype is the rollout engine's. A resumed run with kl_coef > 0 loads the *initial* policy
    from `model_path` as the reference, not the checkpoint's weights.
    """
    from transformers import AutoModelForCausalLM

    dtype = master_dtype(resolve_precision(cfg.learner.precision, cfg.model.device))
    if cfg.model.lora:
        # Only the adapter is trained (peft keeps it in fp32): the frozen base stays in model.dtype, and a
        # LoRA checkpoint holds only the adapter, so the base always comes from model.path.
        from asympo.lora import LoraSettings, wrap_lora

        base = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, cfg.model.dtype), trust_remote_code=cfg.model.trust_remote_code
        )
        model = wrap_lora(base, LoraSettings.from_dict(cfg.model.lora), adapter_dir=ckpt)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(ckpt or model_path), dtype=dtype, trust_remote_code=cfg.model.trust_remote_code
        )
    reference = None
    if ckpt is not None and cfg.learner.kl_coef > 0:
        reference = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code
        )
    return model, reference


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


def check_writable(out: Path) -> None:
    """Create the run directory and write a probe file in it, so that an unwritable --out (or a file in
    its way) is an OSError naming the path before any work starts, not after the first hour."""
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".write-test-{os.getpid()}"
    try:
        with open(probe, "w") as f:
            f.write("ok")
            f.flush()
            os.fsync(f.fileno())
    finally:
        probe.unlink(missing_ok=True)


def validate(cfg: TrainConfig) -> None:
    """Checks that need no model: the reward and the task resolve (before any work starts)."""
    from asympo.rewards import get_reward

    get_reward(cfg.task.reward_name)
    if cfg.backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ImportError("backend=ray needs Ray, which is not installed: pip install 'asympo[ray]'")
    if cfg.model.path != "embedded":
        check_model_source(cfg.model.path, "model.path")
    check_device(cfg.model.device)
    check_backends(cfg.logging.backends)
    if Path(cfg.task.name).suffix.lower() in (".jsonl", ".parquet"):
        from asympo.data import load_problems

        # Every line of a data file is checked now, not when the loader reaches it after model loading.
        load_problems(cfg.task.name, fields=cfg.task.fields or None, template="plain")
    if cfg.model.lora:
        from asympo.lora import require_peft

        require_peft()
    builtin = ("arithmetic", "reasoning", "gsm8k", "math500")
    if cfg.task.name not in builtin and not cfg.task.name.startswith("hf:"):
        if not Path(cfg.task.name).exists():
            raise FileNotFoundError(
                f"task.name {cfg.task.name!r} is neither a built-in task ({', '.join(builtin)}), "
                "an hf:<dataset>, nor an existing file"
            )


def check_parallel(cfg: TrainConfig, ckpt: Path | None) -> None:
    """What a sharded learner cannot do, and a resume with another number of ranks: refused before any rank
    starts (the optimiser state of a sharded checkpoint is in its shards, readable only by as many ranks)."""
    par = cfg.learner.parallel
    if par.enabled and cfg.model.lora:
        raise ValueError(
            "model.lora with learner.parallel.kind=fsdp2 is not supported (the adapter is small enough for "
            "one device); set learner.parallel.kind=none or drop model.lora"
        )
    if ckpt is None:
        return
    meta = ckpt / SHARDED_META
    written = json.loads(meta.read_text())["world_size"] if meta.exists() else 1
    running = par.procs  # 1 unless kind=fsdp2
    if written != running:
        raise ValueError(
            f"checkpoint {ckpt} was written by {written} learner rank(s), this run has {running}; resume with "
            + (
                "learner.parallel.kind=none"
                if written == 1
                else f'learner.parallel=\'{{"kind": "fsdp2", "procs": {written}}}\''
            )
        )


def make_scheduler(cfg: TrainConfig, problems: list[Problem]) -> PromptScheduler:
    """The prompt scheduler of a run: its prompts, group shape, staleness policy and seed."""
    return PromptScheduler(
        problems,
        prompts_per_step=cfg.rollout.prompts_per_step,
        group_size=cfg.rollout.group_size,
        policy=make_policy(cfg.buffer, cfg.mode),
        seed=cfg.seed,
    )


def make_backend(cfg: TrainConfig, spec: WorkerSpec, scheduler: PromptScheduler) -> Backend:
    """The rollout side of the run; the scheduler carries the staleness policy every part asks."""
    if cfg.backend == "ray":
        from asympo.runtime.ray import RayBackend

        return RayBackend(
            spec,
            scheduler,
            num_workers=cfg.rollout.num_workers,
            max_tasks_per_call=cfg.rollout.max_prompts_per_call,
            max_restarts=cfg.rollout.max_restarts,
            ray_address=cfg.ray.address,
            worker_resources=cfg.ray.worker_resources or None,
            # GPU learner ranks get a reserved GPU each; CPU ranks share the driver node's cores.
            learner_ranks=cfg.learner.parallel.procs if cfg.learner.parallel.procs > 1 else 0,
            learner_bundle={"GPU": 1, "CPU": 1} if cfg.model.device.startswith("cuda") else None,
        )
    from asympo.runtime.local import InlineBackend, ProcessBackend

    if cfg.mode == "sync":
        return InlineBackend(spec, scheduler)
    return ProcessBackend(
        spec,
        scheduler,
        num_workers=cfg.rollout.num_workers,
        max_tasks_per_call=cfg.rollout.max_prompts_per_call,
        max_restarts=cfg.rollout.max_restarts,
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
    """pass@1 on held-out problems with the training reward, off the learner's critical path.

    It generates with its own copy of the policy (in the rollout's dtype, `model.dtype`), loaded from a
    snapshot of the learner's weights, so it can run in a background thread while the learner trains
    (`submit`/`poll`/`join`, async mode) or inline (`__call__`, sync mode and the first and last eval).
    Grading goes through a `RewardPool` with `rollout.reward_timeout_s`: a grader that hangs costs that
    timeout (the answer grades 0.0 and is counted in `reward/timeouts`), never the run. With
    `rollout.reward_workers=0` the built-in arithmetic reward is graded inline (exact string match, it
    cannot hang); any other reward still gets one grader process.
    """

    def __init__(self, cfg: TrainConfig, model, tokenizer, problems: list[Problem]):
        from concurrent.futures import ThreadPoolExecutor

        from asympo.engines.torch import TorchEngine
        from asympo.rewards import get_reward
        from asympo.rewards.pool import RewardPool, RewardPoolConfig

        self.cfg = cfg
        self.problems = problems[: cfg.eval.limit] if cfg.eval.limit else problems
        rollout_model = policy_copy(model).to(getattr(torch, cfg.model.dtype))
        self.engine = TorchEngine(rollout_model, tokenizer)
        self.engine.model.eval()
        name = cfg.task.reward_name
        self.reward = get_reward(name)
        workers = cfg.rollout.reward_workers or (0 if name == "arithmetic" else 1)
        self.pool = RewardPool(
            name,
            RewardPoolConfig(
                num_workers=workers,
                timeout_s=cfg.rollout.reward_timeout_s,
                batch_timeout_s=cfg.rollout.reward_batch_timeout_s,
                preload=("asympo.rewards.math:warm_up",) if name == "math" else (),
            ),
        )
        self.sampling = SamplingParams(
            temperature=cfg.eval.temperature,
            top_p=1.0,
            max_new_tokens=cfg.rollout.max_new_tokens,
            seed=cfg.seed + 12345,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asympo-eval")
        self._pending = None  # (step, t0, Future) of the background evaluation in flight
        self._timeouts = self._errors = 0  # grading outcomes of the evaluation running now

    def _score(self, completions: list[str], references: list[str]) -> list[float]:
        batch = self.pool.score_batch(completions, references)
        self._timeouts += batch.timeouts
        self._errors += batch.errors
        return batch.rewards

    def _evaluate(self, state: dict | None) -> dict:
        from asympo.evaluate import evaluate

        if state is not None:
            self.engine.model.load_state_dict(state)
        self._timeouts = self._errors = 0
        with torch.no_grad():
            res = evaluate(
                self.engine,
                self.problems,
                self.reward,
                n=self.cfg.eval.n,
                sampling=self.sampling,
                scorer=self._score,
            )
        return {**res, "reward/timeouts": self._timeouts, "reward/errors": self._errors}

    @staticmethod
    def snapshot(model) -> dict:
        """A copy of the weights of `model` (a module, or a state dict such as a sharded learner's gathered
        weights) that the learner's next step cannot change."""
        state = model if isinstance(model, dict) else policy_state_dict(model)
        return {k: v.detach().clone() for k, v in state.items()}

    def __call__(self, model=None) -> dict:
        """Evaluate now (the weights of `model`, a module or state dict, or those loaded last)."""
        self.join_pending()
        return self._evaluate(self.snapshot(model) if model is not None else None)

    def submit(self, step: int, model) -> list[tuple[int, dict, float]]:
        """Start evaluating a snapshot of `model` in the background; returns evaluations that finished
        meanwhile (a previous one still running is waited for: at most one runs at a time)."""
        done = self.join_pending()
        state = self.snapshot(model)
        self._pending = (step, time.monotonic(), self._executor.submit(self._evaluate, state))
        return done

    def poll(self) -> list[tuple[int, dict, float]]:
        """(step, result, seconds) of a background evaluation that has finished, without waiting."""
        if self._pending is not None and self._pending[2].done():
            return self.join_pending()
        return []

    def join_pending(self) -> list[tuple[int, dict, float]]:
        """Wait for the background evaluation in flight, if any; re-raises its error."""
        if self._pending is None:
            return []
        step, t0, future = self._pending
        self._pending = None
        result = future.result()
        return [(step, result, time.monotonic() - t0)]

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.pool.close()


# ---------------------------------------------------------------------------------------------- the loop


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset or `taskset` limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def learner_threads(cfg: TrainConfig) -> int | None:
    """The torch threads the learner's process should use, or None to leave torch's choice
    (`learner.threads`, 0 = auto)."""
    if cfg.learner.threads:
        return cfg.learner.threads
    if cfg.model.device != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None  # torch already follows OMP_NUM_THREADS
    if cfg.mode == "async":
        # Leave the rollout workers their cores, so generation and training truly overlap.
        busy = cfg.rollout.num_workers * cfg.rollout.threads
        return max(1, usable_cpus() - busy)
    return None


def train(
    cfg: TrainConfig, *, resume: bool = False, progress: bool = True, callbacks: list[Callback] | None = None
) -> RunResult | None:
    """Run (or with `resume=True`, continue) the training described by `cfg`.

    With learner.parallel.procs > 1 outside a launcher, starts the learner ranks and returns rank 0's result;
    a rank that dies raises `RankFailed` naming it and the checkpoint to resume from. Under a launcher
    (torchrun), the ranks other than 0 return None."""
    from transformers import AutoTokenizer

    t_start = time.monotonic()
    callbacks = callbacks or []
    par = cfg.learner.parallel
    if par.procs > 1 and not under_launcher():
        if callbacks:
            raise ValueError(
                "train(callbacks=...) cannot reach the learner ranks of learner.parallel.procs > 1 (rank 0 is "
                "another process); use learner.parallel.procs=1 for in-process callbacks, or logging.backends"
            )
        _preflight(cfg, resume)  # config, paths and checkpoint errors surface here, before any rank starts
        try:
            return launch(_train_rank, (cfg, resume, progress), par.procs)
        except RankFailed as e:
            last_good = latest_checkpoint(Path(cfg.out) / "checkpoints")
            where = (
                f"resume from the last good checkpoint {last_good} with --resume (same learner.parallel)"
                if last_good
                else "no checkpoint was written yet"
            )
            raise RankFailed(f"{e}; {where}") from None
    dist = init_from_env(cfg.model.device, par.backend) if par.enabled else SINGLE
    if under_launcher() and par.enabled and dist.world != par.procs:
        raise ValueError(
            f"learner.parallel.procs={par.procs} but the launcher started {dist.world} ranks; set "
            f"learner.parallel.procs={dist.world} (torchrun --nproc-per-node must match it)"
        )
    if not dist.is_main:
        return _follow(cfg, dist)
    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    ckpt = _preflight(cfg, resume)

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    threads = learner_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    model_path = resolve_model_path(cfg, progress=progress)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # The followers load the same model (and checkpoint) as rank 0: the SFT warm-up runs here only.
    dist.broadcast(_Setup(model_path, None if ckpt is None else str(ckpt), pad_id))
    model, reference = load_policy(cfg, model_path, ckpt)
    # Sharded, rank 0 keeps a plain copy: the held-out eval's source and the consolidated HF export.
    plain = copy.deepcopy(model).to(rank_device(cfg.model.device, dist)) if dist.distributed else None
    train_problems = load_task(cfg.task, cfg.task.train_split, tokenizer)
    eval_problems = load_task(cfg.task, cfg.task.eval_split, tokenizer)

    if not resume:
        atomic_write_text(out / "config.json", cfg.to_json())
    learner = Learner(
        model,
        cfg.learner,
        pad_id=pad_id,
        device=rank_device(cfg.model.device, dist),
        reference=reference,
        dist=dist,
    )
    scheduler = make_scheduler(cfg, train_problems)
    sampling = SamplingParams(
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens,
        return_logprobs=cfg.learner.needs_behavior_logp,
    )
    engine_kwargs, server = dict(cfg.rollout.engine_kwargs), None
    if cfg.rollout.engine == "openai":  # weight sync, and `asympo serve` when rollout.serve is set
        from asympo.serve import openai_engine_kwargs

        engine_kwargs, server = openai_engine_kwargs(cfg, model_path, out)
    spec = WorkerSpec(
        engine=cfg.rollout.engine,
        model_path=model_path,
        sampling=sampling,
        reward=cfg.task.reward_name,
        engine_kwargs={
            "device": cfg.model.device,
            # The engine keeps model.dtype; the learner's fp32 master weights are cast as they are loaded.
            "dtype": cfg.model.dtype,
            **({"trust_remote_code": True} if cfg.model.trust_remote_code else {}),
            **cfg.rollout.engine_kwargs,
        }
        if cfg.rollout.engine == "torch"
        else engine_kwargs,
        reward_workers=cfg.rollout.reward_workers,
        reward_timeout_s=cfg.rollout.reward_timeout_s,
        reward_batch_timeout_s=cfg.rollout.reward_batch_timeout_s,
        threads=cfg.rollout.threads,
    )
    try:
        backend = make_backend(cfg, spec, scheduler)
    except BaseException:
        if server is not None:
            server.close()
        raise
    start_step, history = 0, None
    if ckpt is not None:
        if dist.distributed:
            load_sharded(ckpt, learner.model, learner.opt, dist)
        learner_state, trainer_state = load_training_state(ckpt)
        learner.load_state_dict(learner_state)
        backend.load_state_dict(trainer_state["backend"])
        history = load_weight_history(ckpt)  # older versions the re-issued in-flight tasks need
        start_step = trainer_state["step"]
        for name in ("metrics.jsonl", "eval.jsonl", "groups.jsonl"):
            _truncate_jsonl(out / name, start_step)

    evaluator = HeldOutEval(cfg, plain if dist.distributed else learner.model, tokenizer, eval_problems)
    learner.model.train()
    loggers = make_loggers(cfg, out, resume=resume)
    callbacks = [*callbacks, *loggers]
    metrics_log = JsonlWriter(out / "metrics.jsonl")
    eval_log = JsonlWriter(out / "eval.jsonl")
    # Which groups each step trained on and dropped (with the reason): the audit trail of the promise that
    # every prompt is trained on or dropped with a reason, none twice, across restarts and resumes.
    groups_log = JsonlWriter(out / "groups.jsonl")
    pass1_before = None

    def log_eval(step: int, res: dict, seconds: float) -> float:
        rec = {"step": step, **res, "time": seconds}
        eval_log.write(rec)
        for cb in callbacks:
            cb({"event": "eval", **rec})
        return res["pass@1"]

    def run_eval(step: int) -> float:
        for done_eval in evaluator.join_pending():
            log_eval(*done_eval)
        t0 = time.monotonic()
        # Sharded: the gathered weights (a forward of the sharded model on rank 0 alone would hang).
        return log_eval(
            step, evaluator(weights if dist.distributed else learner.model), time.monotonic() - t0
        )

    def gather() -> dict:
        """The full weights to publish (sharded: a collective every rank joins, `_follow`)."""
        if not dist.distributed:
            return policy_state_dict(learner.model)
        return full_state_dict(learner.model, dist)

    def save_shards(tmp: Path) -> None:
        """Every rank writes its shard of the model and optimiser into checkpoint directory `tmp`."""
        dist.broadcast(_Order("checkpoint", path=str(tmp)))
        save_sharded(tmp, learner.model, learner.opt, dist)

    weights = gather()
    if start_step == 0:
        pass1_before = run_eval(0)
    bar = _Progress(cfg.steps, start_step, enabled=progress)
    last: dict = {}

    def close_outputs() -> None:
        evaluator.close()  # waits for a background evaluation still running
        metrics_log.close()
        eval_log.close()
        groups_log.close()
        for logger in loggers:
            logger.close()

    backend.start(weights, learner.version, history=history)
    failed = True
    try:
        for step in range(start_step, cfg.steps):
            batch = backend.next_batch(learner.version, cfg.rollout.prompts_per_step)
            dist.broadcast(_Order("step", step=step, batch=batch))
            try:
                m = learner.step(batch)
            except NonFiniteStepsError as e:
                last_good = latest_checkpoint(ckpt_root)
                where = (
                    f"the last good checkpoint is {last_good}"
                    if last_good
                    else "no checkpoint was written yet"
                )
                raise NonFiniteStepsError(f"step {step}: {e}; {where}", e.version) from e
            t_gather = time.monotonic()
            weights = gather()
            backend.publish(weights, learner.version)
            m["step"] = step
            if dist.distributed:
                m["time/weight_gather"] = time.monotonic() - t_gather
            m["time/wait"] = batch.time_wait
            m["time/generate"] = sum(g.time_generate for g in batch.groups)
            m["time/weight_sync"] = sum(g.time_weight_sync for g in batch.groups)
            m["throughput/tokens_per_s"] = m["batch/response_tokens"] / max(
                1e-9, m["time/train"] + batch.time_wait
            )
            m.update(backend.metrics())
            metrics_log.write(m)
            groups_log.write(
                {
                    "step": step,
                    "trained": [g.group_id for g in batch.groups],
                    "dropped": [[d.group_id, d.reason] for d in batch.dropped],
                }
            )
            last = m
            for cb in callbacks:
                cb({"event": "step", **m})
            for done_eval in evaluator.poll():
                log_eval(*done_eval)
            done = step + 1
            if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.steps:
                if cfg.mode == "async":
                    # The learner keeps training while a snapshot of these weights is evaluated.
                    for done_eval in evaluator.submit(done, weights if dist.distributed else learner.model):
                        log_eval(*done_eval)
                else:
                    run_eval(done)
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps:
                if plain is not None:  # the consolidated HF export of the sharded weights
                    plain.load_state_dict(weights)
                save_checkpoint(
                    ckpt_root,
                    done,
                    model=plain if plain is not None else learner.model,
                    tokenizer=tokenizer,
                    learner_state=learner.state_dict(),
                    trainer_state={"backend": backend.state_dict()},
                    weight_history=backend.history(),
                    keep=cfg.keep_checkpoints,
                    write_extra=save_shards if dist.distributed else None,
                )
            bar.update(m)
        failed = False
        dist.broadcast(_Order("stop"))
    finally:
        bar.close()
        backend.close()
        if server is not None:
            server.close()
        if failed:
            close_outputs()
    try:
        pass1_after = run_eval(cfg.steps)
    finally:
        close_outputs()
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


def _preflight(cfg: TrainConfig, resume: bool) -> Path | None:
    """Every check that needs no model; returns the checkpoint to resume from (None for a new run)."""
    out = Path(cfg.out)
    validate(cfg)
    ckpt_root = out / "checkpoints"
    # The newest intact checkpoint: damaged newer ones are skipped with a warning naming them.
    ckpt = latest_checkpoint(ckpt_root, strict=True) if resume else None
    if resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {ckpt_root}")
    if not resume and (out / "metrics.jsonl").exists():
        raise FileExistsError(
            f"{out} already holds a run (metrics.jsonl); pass --resume to continue it or choose another --out"
        )
    check_parallel(cfg, ckpt)
    check_writable(out)
    return ckpt


# ------------------------------------------------------------------------------------- the learner ranks

KILL_ENV = "ASYMPO_TEST_KILL_RANK"
"""Test hook: "<rank>:<step>" makes that follower rank exit (code 17) as it receives that step's batch."""


@dataclass
class _Setup:
    """Rank 0 -> the followers, once: what to load."""

    model_path: str
    ckpt: str | None
    pad_id: int


@dataclass
class _Order:
    """Rank 0 -> the followers, per collective: `step` (train on `batch`, then gather the weights),
    `checkpoint` (write this rank's shard into `path`) or `stop`."""

    kind: str
    step: int = -1
    batch: Batch | None = None
    path: str = ""


@record  # under torchrun, the rank's exception reaches torchrun's error file (our own launcher records it too)
def _train_rank(cfg: TrainConfig, resume: bool, progress: bool) -> RunResult | None:
    """The entry point of a rank started by `launch` (module level, so spawn can import it)."""
    return train(cfg, resume=resume, progress=progress)


def _follow(cfg: TrainConfig, dist: DistContext) -> None:
    """A learner rank other than 0: load the same model, then join every collective rank 0 orders."""
    setup: _Setup = dist.broadcast(None)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ckpt = Path(setup.ckpt) if setup.ckpt else None
    model, _ = load_policy(cfg, setup.model_path, ckpt)
    device = rank_device(cfg.model.device, dist)
    learner = Learner(model, cfg.learner, pad_id=setup.pad_id, device=device, dist=dist)
    if ckpt is not None:
        load_sharded(ckpt, learner.model, learner.opt, dist)
        learner.load_state_dict(load_training_state(ckpt)[0])
    full_state_dict(learner.model, dist)  # rank 0's first gather (the weights the rollout starts from)
    kill = os.environ.get(KILL_ENV, "")
    while True:
        order: _Order = dist.broadcast(None)
        if order.kind == "stop":
            return None
        if order.kind == "checkpoint":
            save_sharded(Path(order.path), learner.model, learner.opt, dist)
            continue
        if kill == f"{dist.rank}:{order.step}":
            os._exit(17)
        learner.step(order.batch)
        full_state_dict(learner.model, dist)


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
