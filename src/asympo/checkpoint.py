"""Atomic checkpoints: a crash at any point leaves either the previous checkpoint or the new one, whole.

Layout of `DIR/checkpoints/step_00000040/`:
- the model in HF format (`config.json`, `model.safetensors`) and its tokenizer, so `from_pretrained` and
  `asympo eval --model` load it directly;
- `optimizer.safetensors` + `optimizer.json`: the optimiser's tensors and the rest of its state;
- `trainer_state.json`: step, learner version, RNG states, the scheduler's data position, prompts in flight
  and the rollout groups still buffered (so resume neither skips nor loses a prompt).

Each checkpoint is written to a temporary directory, every file fsync'ed, then renamed into place; the
`latest` pointer is replaced atomically the same way. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from asympo.files import atomic_write_text, fsync_dir  # atomic_write_text: re-exported for callers

STEP_PREFIX = "step_"


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, st in state["state"].items():
        entry = {}
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                key = f"state.{idx}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                entry[name] = {"tensor": key}
            else:
                entry[name] = {"value": value}
        meta["state"][str(idx)] = entry
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {
            name: tensors[v["tensor"]] if "tensor" in v else v["value"] for name, v in entry.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: torch.nn.Module,
    tokenizer=None,
    learner_state: dict,
    trainer_state: dict,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under `root` atomically and keep only the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    opt_tensors, opt_meta = _flatten_optimizer(learner_state["optimizer"])
    rng_tensors, rng_meta = rng_state()
    save_file({**opt_tensors, **rng_tensors}, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(
        json.dumps({"optimizer": opt_meta, "lr_sched": learner_state["lr_sched"], "rng": rng_meta})
    )
    (tmp / "trainer_state.json").write_text(
        json.dumps({**trainer_state, "step": step, "version": learner_state["version"]})
    )
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        # safetensors writes 0600 files; a checkpoint gets the user's normal mode like every other output.
        os.chmod(f, 0o666 & ~_umask())
    fsync_dir(tmp)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest", final.name + "\n")
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX))


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` (temporary directories are never complete)."""
    pointer = Path(root) / "latest"
    if pointer.exists():
        p = Path(root) / pointer.read_text().strip()
        if (p / "trainer_state.json").exists():
            return p
    ckpts = [p for p in list_checkpoints(root) if (p / "trainer_state.json").exists()]
    return ckpts[-1] if ckpts else None


def load_training_state(path: Path) -> tuple[dict, dict]:
    """(learner_state, trainer_state) of checkpoint `path`; restores the RNG states as a side effect."""
    path = Path(path)
    tensors = load_file(path / "optimizer.safetensors")
    meta = json.loads((path / "optimizer.json").read_text())
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    set_rng_state(tensors, meta["rng"])
    learner_state = {
        "version": trainer_state["version"],
        "optimizer": _unflatten_optimizer(tensors, meta["optimizer"]),
        "lr_sched": meta["lr_sched"],
    }
    return learner_state, trainer_state
