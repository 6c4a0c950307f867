"""Experiment-tracking backends for `logging.backends`: TensorBoard, Weights & Biases, Trackio.

Each backend is a callback of `train()` (`logger(event)` with `event["event"]` either "step", carrying a
metrics.jsonl row, or "eval", carrying an eval.jsonl row) plus `close()`. metrics.jsonl and eval.jsonl are
always written (they are the run's record and what `asympo report` reads); the backends mirror them.
Every backend is an optional extra: a missing package is an ImportError at start naming the extra, before
any model is loaded.
"""

from __future__ import annotations

import importlib.util
import math
import secrets
from pathlib import Path
from typing import Protocol

from asympo.checkpoint import atomic_write_text

# backend → (module that must be importable, pip extra)
BACKEND_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}
LOGGING_BACKENDS = ("jsonl", *BACKEND_PACKAGES)


class Logger(Protocol):
    def __call__(self, event: dict) -> None: ...

    def close(self) -> None: ...


def check_backends(backends: list[str]) -> None:
    """ImportError naming the pip extra for the first requested backend whose package is missing."""
    for name in backends:
        if name not in BACKEND_PACKAGES:
            continue
        module, extra = BACKEND_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ImportError(
                f"logging.backends includes {name!r}, which needs the {module} package: "
                f"pip install 'asympo[{extra}]' (or remove {name!r} from logging.backends)"
            )


def _scalars(event: dict, prefix: str = "") -> dict[str, float]:
    """The finite numeric entries of a metrics/eval row (bools and text are not plotted)."""
    out = {}
    for key, value in event.items():
        if key in ("event", "step") or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[prefix + key] = float(value)
    return out


def _rows(event: dict) -> tuple[int, dict[str, float]] | None:
    """(step, {key: value}) of an event, eval keys under `eval/`; None for events not logged."""
    kind = event.get("event")
    if kind == "step":
        return int(event["step"]), _scalars(event)
    if kind == "eval":
        return int(event["step"]), _scalars(event, "eval/")
    return None


class TensorBoardLogger:
    """Event files under `<out>/tensorboard/` (`tensorboard --logdir <out>/tensorboard`)."""

    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(out) / "tensorboard"
        self._writer = SummaryWriter(log_dir=str(self.dir))

    def __call__(self, event: dict) -> None:
        row = _rows(event)
        if row is None:
            return
        step, values = row
        for key, value in values.items():
            self._writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


class WandbLogger:
    """A W&B run (online, or offline with WANDB_MODE=offline) in `<out>/wandb/`, the config attached.

    Eval rows are plotted against their own `eval/step`: an evaluation that ran in the background is
    logged after later training steps, and W&B drops rows whose `step` goes backwards.
    """

    def __init__(self, out: Path, project: str, run_name: str, config: dict, resume: bool):
        import wandb

        # The W&B run id is kept in the run directory, so `--resume` continues the same W&B run (and two
        # runs whose directories share a name do not).
        id_file = Path(out) / "wandb_run_id.txt"
        if resume and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)  # W&B ids: short, lowercase alphanumeric
            atomic_write_text(id_file, run_id + "\n")
        self._run = wandb.init(
            project=project,
            name=run_name,
            dir=str(out),
            config=config,
            id=run_id,
            resume="allow" if resume else None,
        )
        self._run.define_metric("eval/step")
        self._run.define_metric("eval/*", step_metric="eval/step")

    def __call__(self, event: dict) -> None:
        row = _rows(event)
        if row is None:
            return
        step, values = row
        if event["event"] == "eval":
            self._run.log({**values, "eval/step": step})
        else:
            self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()


class TrackioLogger:
    """A Trackio run (local, `trackio show` to view) in project `logging.project`."""

    def __init__(self, project: str, run_name: str, config: dict, resume: bool):
        import trackio

        self._trackio = trackio
        self._run = trackio.init(
            project=project, name=run_name, config=config, resume="allow" if resume else "never"
        )

    def __call__(self, event: dict) -> None:
        row = _rows(event)
        if row is None:
            return
        step, values = row
        if event["event"] == "eval":
            values = {**values, "eval/step": step}
            self._run.log(values)
        else:
            self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()


def make_loggers(cfg, out: Path, *, resume: bool = False) -> list[Logger]:
    """The loggers `cfg.logging.backends` asks for (jsonl is written by train() itself)."""
    backends = cfg.logging.backends
    check_backends(backends)
    name = cfg.logging.run_name or Path(out).resolve().name
    loggers: list[Logger] = []
    try:
        for backend in backends:
            if backend == "tensorboard":
                loggers.append(TensorBoardLogger(out))
            elif backend == "wandb":
                loggers.append(WandbLogger(out, cfg.logging.project, name, cfg.to_dict(), resume))
            elif backend == "trackio":
                loggers.append(TrackioLogger(cfg.logging.project, name, cfg.to_dict(), resume))
    except BaseException:
        for logger in loggers:
            logger.close()
        raise
    return loggers
