"""The `asympo` command line: one subcommand per user task; `asympo <command> --help` documents each.

Errors in what the user asked for (unknown names, missing files, incompatible choices) are reported as one
line `asympo: error: ...` with exit status 2, before any model is loaded or process started.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from asympo import __version__
from asympo.engines.openai import OpenAIEngineError
from asympo.engines.weight_sync import WeightSyncError
from asympo.runtime.buffer import BufferClosed

USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    ImportError,
    BufferClosed,
    OpenAIEngineError,
    WeightSyncError,
)
DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
}


class UserError(Exception):
    pass


# ---------------------------------------------------------------------------------------------- config


def _add_run_args(p: argparse.ArgumentParser, *, out_default: str | None) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a named configuration (see --list-presets)")
    src.add_argument("--config", metavar="FILE", help="a JSON config (e.g. a run's config.json)")
    p.add_argument("--out", default=out_default, metavar="DIR", help="run directory")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--objective", help="naive | spo | asympo | grpo | gspo | cispo | pkg.module:function")
    p.add_argument("--max-staleness", type=int, metavar="D", help="largest allowed staleness (versions)")
    p.add_argument("--fixed-delay", type=int, metavar="D", help="train every batch exactly D versions late")
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        help="local (the default: this machine) or ray (rollout workers as Ray actors; "
        "--set ray.address=auto on a cluster, see docs/ray.md)",
    )
    p.add_argument("--mode", choices=["async", "sync"], help="async (default) or sync (generate, then train)")
    p.add_argument(
        "--model", metavar="PATH", help="HF model directory or hub id ('embedded' = built-in tiny model)"
    )
    p.add_argument("--seed", type=int, help="seed of the data order, sampling and initialisation")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set learner.lr=3e-4 --set learner.hparams='{\"neg_scale\": 0.2}'",
    )
    p.add_argument(
        "--help-config", action="store_true", help="list every config field with its default and meaning"
    )
    p.add_argument("--list-presets", action="store_true", help="list the presets")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace, default_preset: str | None = None, base: dict | None = None):
    """The TrainConfig of --preset/--config (or `base`, else `default_preset`) with the flags and --set applied."""
    from asympo.config import TrainConfig, apply_overrides, load_config_file
    from asympo.presets import preset_dict

    if args.config:
        d = load_config_file(args.config)
    elif args.preset:
        d = preset_dict(args.preset)
    elif base is not None:
        d = base
    elif default_preset:
        d = preset_dict(default_preset)
    else:
        raise UserError("give --preset NAME or --config FILE (asympo train --list-presets shows the presets)")
    sets = list(args.overrides)
    direct = {
        "out": args.out,
        "steps": args.steps,
        "learner.objective": args.objective,
        "buffer.max_staleness": args.max_staleness,
        "buffer.fixed_delay": args.fixed_delay,
        "backend": args.backend,
        "mode": args.mode,
        "model.path": args.model,
        "seed": args.seed,
    }
    for key, value in direct.items():
        if value is not None:
            sets.insert(0, f"{key}={json.dumps(value)}")
    if args.objective is not None and "learner.hparams" not in " ".join(args.overrides):
        sets.insert(0, "learner.hparams={}")  # a preset's hparams belong to the preset's objective
    return TrainConfig.from_dict(apply_overrides(d, sets))


# Fields a resumed run may change: they do not alter what the run computes up to the resume point.
SAFE_ON_RESUME = ("out", "steps", "checkpoint_every", "keep_checkpoints", "report", "eval.*", "logging.*")


def _is_safe_on_resume(key: str) -> bool:
    return any(key == s or (s.endswith(".*") and key.startswith(s[:-1])) for s in SAFE_ON_RESUME)


def _leaves(d: dict) -> dict:
    """{"learner.lr": 1e-4, ...} for every config field of a TrainConfig dict (dict fields compared whole)."""
    from asympo.config import describe

    out = {}
    for key, _, _ in describe():
        node = d
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def resume_config(args: argparse.Namespace):
    """The config to resume `--out` with: the run's own, plus the flags and --set of safe fields.

    A change to any other field (a different learning rate, objective, model, ...) would silently make
    the resumed run a different experiment, so it is an error listing the differing fields.
    """
    from asympo.config import TrainConfig, load_config_file

    if not args.out:
        raise UserError("--resume needs --out DIR (the run to continue)")
    config_path = Path(args.out, "config.json")
    if not config_path.exists():
        raise UserError(f"--resume: {args.out} holds no run (no config.json)")
    run = TrainConfig.from_dict(load_config_file(config_path))
    asked = config_from_args(args, base=run.to_dict())
    before, after = _leaves(run.to_dict()), _leaves(asked.to_dict())
    differ = [k for k in after if before[k] != after[k] and not _is_safe_on_resume(k)]
    if differ:
        changes = "; ".join(f"{k}: {before[k]!r} -> {after[k]!r}" for k in differ)
        raise UserError(
            f"--resume: the config differs from the run's ({config_path}) in {changes}. A resumed run may "
            f"change only {', '.join(SAFE_ON_RESUME)}; to change the others start a new run (another --out)"
        )
    return asked


def _print_config_help() -> None:
    from asympo.config import describe

    rows = describe()
    width = max(len(key) for key, _, _ in rows)  # aligned however long a field name gets
    for key, default, doc in rows:
        print(f"{key:{width}s}  {default:22s} {doc}")


def _print_presets() -> None:
    from asympo.presets import PRESETS

    for name, d in PRESETS.items():
        print(f"{name:10s} {json.dumps(d)}")


# ---------------------------------------------------------------------------------------------- commands


def _cmd_train(args: argparse.Namespace) -> int:
    if args.help_config:
        _print_config_help()
        return 0
    if args.list_presets:
        _print_presets()
        return 0
    cfg = resume_config(args) if args.resume else config_from_args(args)
    from asympo.train import train

    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    if result is not None:  # None on the learner ranks other than 0 under torchrun
        _print_result(result)
    return 0


def _print_result(result) -> None:
    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"held-out pass@1: before {fmt(result.pass1_before)}  after {fmt(result.pass1_after)}")
    print(f"wall time: {result.wall_s:.0f}s   run: {result.out}")
    report = Path(result.out) / "report.html"
    if report.exists():
        print(f"report: {report}")


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.help_config:
        _print_config_help()
        return 0
    cfg = config_from_args(args, default_preset="demo")
    from asympo.train import train

    out = Path(cfg.out)
    if out.exists() and (out / "config.json").exists():
        print(f"replacing the previous demo run in {out}", file=sys.stderr)
        shutil.rmtree(out)
    t0 = time.monotonic()
    result = train(cfg, progress=not args.no_progress)
    _print_result(result)
    print(f"demo total (SFT warm-up included): {time.monotonic() - t0:.0f}s")
    return 0


def _eval_setup_from_run(args: argparse.Namespace):
    """(model dir, problems, reward name, defaults) of `--run DIR`: its newest checkpoint, evaluated on its
    own held-out split with its own task settings (arithmetic ranges, template, fields, reward)."""
    from asympo.checkpoint import latest_checkpoint
    from asympo.config import TrainConfig
    from asympo.evaluate import load_task

    run = Path(args.run)
    if not (run / "config.json").exists():
        raise UserError(
            f"--run {str(run)!r} is not a run directory (no config.json); pass the --out of a train run"
        )
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    model = latest_checkpoint(run / "checkpoints")
    if model is None:
        raise UserError(
            f"--run {str(run)!r} has no complete checkpoint under checkpoints/ "
            "(set checkpoint_every > 0, or evaluate a model directory with --model)"
        )
    from transformers import AutoTokenizer

    problems = load_task(cfg.task, cfg.task.eval_split, AutoTokenizer.from_pretrained(str(model)))
    defaults = {
        "n": cfg.eval.n,
        "limit": cfg.eval.limit,
        "temperature": cfg.eval.temperature,
        "max_new_tokens": cfg.rollout.max_new_tokens,
    }
    return str(model), problems, cfg.task.reward_name, f"{cfg.task.name}:{cfg.task.eval_split}", defaults


def _cmd_eval(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from asympo.engines.base import SamplingParams
    from asympo.engines.torch import TorchEngine
    from asympo.evaluate import evaluate
    from asympo.modelpath import check_model_source
    from asympo.rewards import get_reward
    from asympo.train import check_device

    check_device(args.device, fix="--device cpu")
    # Checked before a model is loaded (or the embedded one warmed up); None = the default or the run's.
    for flag, value, low in (
        ("--n", args.n, 1),
        ("--limit", args.limit, 0),
        ("--max-new-tokens", args.max_new_tokens, 1),
    ):
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if args.temperature is not None and not 0 <= args.temperature < math.inf:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if (args.run is None) == (args.model is None):
        raise UserError("asympo eval needs exactly one of --model PATH (with --dataset) or --run DIR")
    defaults = {"n": 1, "limit": 0, "temperature": 0.0, "max_new_tokens": 512}
    if args.run is not None:
        if args.dataset:
            raise UserError("--run evaluates on the run's own task; leave out --dataset (or use --model)")
        model, problems, reward, dataset, defaults = _eval_setup_from_run(args)
    else:
        if not args.dataset:
            raise UserError("--model needs --dataset (gsm8k, math500 or arith)")
        dataset, model = args.dataset, args.model
        if model == "embedded":
            from asympo.config import TrainConfig
            from asympo.train import resolve_model_path

            model = resolve_model_path(TrainConfig(), progress=True)
        else:
            model = check_model_source(model, "--model")
        from asympo.config import TaskConfig
        from asympo.evaluate import load_task

        task = TaskConfig(
            name="arithmetic" if args.dataset == "arith" else args.dataset, template=args.template
        )
        tok = None if task.name == "arithmetic" else AutoTokenizer.from_pretrained(model)
        problems, reward = load_task(task, "test", tok), task.reward_name
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.limit:
        problems = problems[: args.limit]
    engine = TorchEngine.from_pretrained(model, device=args.device)
    sampling = SamplingParams(
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    from asympo.rewards.pool import RewardPool, RewardPoolConfig

    # The math verifier runs in a pool with timeouts (a pathological completion can't hang the command).
    workers = 0 if reward == "arithmetic" else 2
    with RewardPool(reward, RewardPoolConfig(num_workers=workers, timeout_s=5.0)) as pool:
        res = evaluate(engine, problems, get_reward(reward), n=args.n, sampling=sampling, scorer=pool.score)
    print(json.dumps({"model": str(model), "dataset": dataset, "problems": len(problems), **res}, indent=2))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from asympo.study import STUDY_PRESETS, StudyConfig, run_study

    if args.list_presets:
        for name, st in STUDY_PRESETS.items():
            labels = ", ".join(o.label for o in st.objectives)
            print(
                f"{name:16s} objectives: {labels}; staleness {st.staleness}; seeds {st.seeds}; lrs {st.lrs}"
            )
        return 0
    if args.preset not in STUDY_PRESETS:
        raise UserError(f"unknown study preset {args.preset!r}; valid: {', '.join(STUDY_PRESETS)}")
    if not args.out:
        raise UserError("asympo study needs --out DIR")
    from asympo.study import parse_objective_spec

    base = STUDY_PRESETS[args.preset]
    study = StudyConfig(
        objectives=[parse_objective_spec(o) for o in args.objectives] if args.objectives else base.objectives,
        staleness=args.staleness or base.staleness,
        seeds=args.seeds or base.seeds,
        lrs=args.lrs or base.lrs,
        base=base.base,
        overrides=[
            *base.overrides,
            *([f"steps={args.steps}"] if args.steps is not None else []),
            *args.overrides,
        ],
        collapse_fraction=base.collapse_fraction,
        mode=base.mode,
    )
    t0 = time.monotonic()
    path = run_study(
        study, args.out, parallel=args.parallel, progress=not args.no_progress, reuse=args.reuse or ()
    )
    print(f"results: {path}")
    print(f"report: {Path(args.out) / 'report.html'}")
    print(f"wall time: {time.monotonic() - t0:.0f}s")
    return 0


def _cmd_objectives(args: argparse.Namespace) -> int:
    from asympo.objectives import OBJECTIVES

    for name, obj in OBJECTIVES.items():
        hp = ", ".join(f"{k}={v!r}" for k, v in obj.hparams.items()) or "-"
        needs = "needs behavior log-probs" if obj.needs_behavior_logp else "current policy only"
        print(f"{name:8s} {needs:26s} hparams: {hp}")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asympo",
        description="Asynchronous RL post-training for language models without behavior-policy information.",
    )
    parser.add_argument("--version", action="version", version=f"asympo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="the embedded default: SFT warm-up, async ASymPO, report (minutes on a CPU)",
        description="Train the built-in tiny model with asynchronous ASymPO and write a report.",
    )
    _add_run_args(p, out_default=None)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "train",
        help="train with a preset or config file",
        description="Train a policy. Writes DIR/metrics.jsonl, eval.jsonl, config.json, checkpoints/.",
    )
    _add_run_args(p, out_default=None)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="held-out pass@1 / pass@k of a model, with the training reward code",
        description="Evaluate a model on gsm8k, math500 or the arithmetic task, or a training run's newest "
        "checkpoint on that run's own held-out task (--run). Prints JSON: pass@1, pass@n, counts.",
    )
    p.add_argument("--model", help="HF model directory (a checkpoint dir works) or 'embedded'")
    p.add_argument(
        "--run",
        metavar="DIR",
        help="a train run's --out: its newest checkpoint on its own task settings, reward and eval defaults",
    )
    p.add_argument("--dataset", choices=["gsm8k", "math500", "arith", "arithmetic"], help="with --model")
    p.add_argument("--n", type=int, help="samples per problem (pass@k for k <= n; default 1, or the run's)")
    p.add_argument(
        "--limit", type=int, help="evaluate only the first N problems (0 = all; default 0, or the run's)"
    )
    p.add_argument("--temperature", type=float, help="0 = greedy (default 0, or the run's eval temperature)")
    p.add_argument("--max-new-tokens", type=int, help="default 512, or the run's rollout.max_new_tokens")
    p.add_argument(
        "--template", choices=["plain", "chat"], default="plain", help="prompt template, with --model"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "study",
        help="objective x staleness x seed grid: results.csv, plots, report.html",
        description="Run a study grid in the deterministic fixed-delay mode (the async preset: real "
        "asynchronous runs; resumable: finished cells are skipped). Collapse = final held-out pass@1 below "
        "half its start.",
    )
    p.add_argument(
        "--preset",
        default="smoke",
        help="smoke | staleness | lr | rescale | reasoning | async | async-arithmetic | aggregation "
        "(see --list-presets)",
    )
    p.add_argument("--out", metavar="DIR", help="study directory")
    p.add_argument("--parallel", type=int, default=2, help="cells run at once (processes)")
    p.add_argument("--steps", type=int, help="override every cell's optimiser steps")
    p.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    p.add_argument(
        "--reuse",
        nargs="+",
        metavar="DIR",
        help="other study directories: a finished fixed-delay cell there with the same config is copied "
        "instead of run again (deterministic; async cells are always run)",
    )
    p.add_argument(
        "--objectives",
        nargs="+",
        metavar="SPEC",
        help="override the objectives: NAME or NAME:KEY=VALUE,... (e.g. naive spo:neg_scale=0.2 "
        "asympo:rescale=batch_mean)",
    )
    p.add_argument("--staleness", type=int, nargs="+", metavar="D", help="override the staleness levels")
    p.add_argument("--lrs", type=float, nargs="+", metavar="LR", help="override the learning rates")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of every cell's config",
    )
    p.add_argument("--list-presets", action="store_true", help="list the study presets")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per finished cell)")
    p.set_defaults(func=_cmd_study)

    # Listed here for `asympo --help`; `main` hands `asympo report ...` to asympo.report.main.
    sub.add_parser(
        "report", help="plots (PNG) and report.html for a run or study directory (asympo report DIR)"
    )

    p = sub.add_parser("objectives", help="list the built-in objectives and their hyperparameters")
    p.set_defaults(func=_cmd_objectives)

    from asympo.serve import add_serve_parser

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Our own progress bars say what is happening; transformers' per-load bars only add noise
    # (set before transformers is imported; child processes inherit it).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if argv[:1] == ["report"]:  # the report command parses its own arguments (and --help)
        from asympo.report import main as report_main

        return report_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except UserError as e:
        print(f"asympo: error: {e}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        print(f"asympo: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        # The NaN guard gave up (learner.max_skipped_steps non-finite steps in a row): the message names the
        # step and the last good checkpoint, which is all the user needs; a traceback would bury it. Looked up
        # in sys.modules so that `asympo --help` does not import torch (if learner was never imported, this
        # cannot be its error).
        learner = sys.modules.get("asympo.learner")
        if learner is None or not isinstance(e, learner.NonFiniteStepsError):
            raise
        print(f"asympo: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRNOS or e.filename is None:
            raise
        # Disk full, read-only or unwritable output: say which file, not a traceback. Checkpoints are
        # written to a temporary directory and renamed, so the last complete one is still intact.
        print(
            f"asympo: error: cannot write {e.filename}: {e.strerror} "
            "(free disk space or choose a writable --out; the last complete checkpoint is intact)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("asympo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
