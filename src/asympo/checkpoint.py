"""Atomic checkpoints: a crash at any point leaves either the previous checkpoint or the new one, whole.

Layout of `DIR/checkpoints/step_00000040/`:
- the model in HF format (`config.json`, `model.safetensors`) and its tokenizer, so `from_pretrained` and
  `asympo eval --model` load it directly;
- `optimizer.safetensors` + `optimizer.json`: the optimiser's tensors and the rest of its state;
- `trainer_state.json`: step, learner version, RNG states, the scheduler's data position, prompts in flight,
  the rollout groups still buffered and the staleness policy's state (so resume neither skips nor loses a
  prompt);
- `weights_v<N>.safetensors`: the older weight versions that work in flight still needs (fixed-delay mode
  generates step k with version k - d, so a resume needs the d versions before the checkpoint's);
- `sharded/` + `sharded.json` (a learner of N > 1 ranks, docs/scaling.md): every rank's shard of the model
  and optimiser (torch.distributed.checkpoint, safetensors); the HF files above are then the consolidated
  export and `optimizer.safetensors` holds only the RNG state;
- `manifest.json`: the size and sha256 of every other file, written last inside the temporary directory.

Each checkpoint is written to a temporary directory, every file fsync'ed, then renamed into place; the
`latest` pointer is replaced atomically the same way. A resume verifies the manifest and falls back to the
newest intact checkpoint (`latest_checkpoint`). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from asympo.files import atomic_write_text, fsync_dir  # atomic_write_text: re-exported for callers

STEP_PREFIX = "step_"
MANIFEST = "manifest.json"
_WEIGHTS = re.compile(r"^weights_v(\d+)\.safetensors$")

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """No intact checkpoint to resume from (each damaged one is named with what is wrong)."""


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
    weight_history: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    keep: int = 2,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `step` under `root` atomically and keep only the newest `keep` intact ones (0: all).

    On any error during the write (e.g. a full disk) the temporary directory is removed and the error
    re-raised; the checkpoints already there stay as they were.

    `weight_history` = {version: state dict} of older weight versions in-flight work still needs.
    `write_extra(tmpdir)` writes more files into the checkpoint before its manifest (a sharded learner's
    ranks write their shards there)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
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
        for v, state in (weight_history or {}).items():
            save_file(
                {k: t.detach().cpu().contiguous() for k, t in state.items()},
                tmp / f"weights_v{v}.safetensors",
            )
        if write_extra is not None:
            write_extra(tmp)
        # Written last: a manifest means every file it lists was complete when it was written.
        (tmp / MANIFEST).write_text(json.dumps({"files": _describe(tmp)}, indent=1))
        for f in sorted(tmp.rglob("*"), reverse=True):  # files and subdirectories before their parents
            if f.is_dir():
                fsync_dir(f)
                continue
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            # safetensors writes 0600 files; a checkpoint gets the user's normal mode like every other output.
            os.chmod(f, 0o666 & ~_umask())
        fsync_dir(tmp)
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
    except BaseException:
        # A full disk (or an error, or Ctrl-C) mid-write: a half-written copy of the weights must not stay
        # behind and hold the space the user needs to go on; the previous checkpoints are untouched.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest", final.name + "\n")
    if keep > 0:
        _prune(root, keep, written=final)
    return final


def _prune(root: Path, keep: int, *, written: Path) -> None:
    """Remove all but the newest `keep` intact checkpoints under `root`.

    A damaged checkpoint does not count as one of the kept ones: a resume would skip it, so counting it
    could prune the last checkpoint a resume can use. It is removed with a warning naming the problem.
    `written` was just written and is known intact; the others are verified (hashed) newest first only
    until `keep` intact ones are found, so each save reads at most `keep - 1` older checkpoints."""
    kept = 0
    for path in reversed(list_checkpoints(root)):
        if kept < keep:
            problem = None if path == written else verify_checkpoint(path)
            if problem is None:
                kept += 1
                continue
            log.warning(
                "removing damaged checkpoint %s (%s); it does not count toward keep=%d", path, problem, keep
            )
        shutil.rmtree(path, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _describe(ckpt: Path) -> dict[str, dict]:
    """{relative path: {size, sha256}} of every file in `ckpt` except the manifest."""
    return {
        str(f.relative_to(ckpt)): {"size": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(ckpt.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }


def verify_checkpoint(path: Path) -> str | None:
    """None if checkpoint `path` is intact, else what is wrong with it (one line)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"{path.name} has no {MANIFEST}"
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return f"{path.name}/{MANIFEST} is unreadable ({e})"
    for name, want in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{path.name}/{name} is missing"
        if f.stat().st_size != want["size"]:
            return f"{path.name}/{name} has {f.stat().st_size} bytes, the manifest says {want['size']}"
        if _sha256(f) != want["sha256"]:
            return f"{path.name}/{name} does not match its sha256 in the manifest"
    return None


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX))


def latest_checkpoint(root: Path, *, strict: bool = False) -> Path | None:
    """The newest intact checkpoint under `root`, or None if there is none.

    Damaged ones (a file missing, truncated or changed since its manifest was written) are skipped with a
    one-line warning each; temporary directories of interrupted writes are never checkpoints. With
    `strict=True`, checkpoints that exist but are all damaged raise `CheckpointError` instead of None."""
    damaged = []
    for p in reversed(list_checkpoints(root)):
        problem = verify_checkpoint(p)
        if problem is None:
            return p
        log.warning("checkpoint %s is damaged (%s); trying the one before it", p, problem)
        damaged.append(problem)
    if strict and damaged:
        raise CheckpointError(
            f"no intact checkpoint under {root}: " + "; ".join(damaged) + ". Start a new run with another "
            "--out (or without --resume), or restore the checkpoint files from a backup"
        )
    return None


def load_weight_history(path: Path) -> dict[int, dict[str, torch.Tensor]]:
    """{version: state dict} of the older weight versions saved with checkpoint `path`."""
    out = {}
    for f in Path(path).iterdir():
        m = _WEIGHTS.match(f.name)
        if m:
            out[int(m.group(1))] = load_file(f)
    return dict(sorted(out.items()))


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
