"""A learner on more than one device: N ranks under torch.distributed, the model sharded with FSDP2.

PyTorch's own FSDP2 (`torch.distributed.fsdp.fully_shard`, the engine torchtitan, prime-rl and verl's FSDP2
path use) shards every transformer block and the root across the ranks; gloo on CPU, NCCL on GPU.

How a batch is split (docs/design.md, "Scale"): rank 0 owns the scheduler, the buffer, metrics and
checkpoints; it broadcasts each batch, and every rank trains on its own share of the responses while
normalising by the *global* response and token counts (`DistContext.reduce_sum`), so the summed gradient
equals the single-process gradient for every aggregation mode. FSDP2 averages gradients over the ranks, so a
rank's loss is multiplied by the world size (gloo cannot do FSDP2's pre-multiplied sum).

Launch: `asympo train` starts the ranks itself with torch's elastic launcher when `learner.parallel.procs > 1`
(`torchrun --nproc-per-node N -m asympo train ...` works as well). A rank that dies ends the run with an
error naming the rank.

Checkpoints: sharded with `torch.distributed.checkpoint` in safetensors files (its Hugging Face storage
format: nothing is unpickled), model and optimiser together; rank 0 also exports consolidated HF weights.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PARALLEL_KINDS = ("none", "fsdp2")
DIST_BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class ParallelConfig:
    """How many processes the learner runs on (`learner.parallel`)."""

    kind: str = "none"
    """none: one process (the default); fsdp2: `procs` ranks, the model sharded with FSDP2."""
    procs: int = 1
    """Learner processes (ranks) on this node; > 1 needs kind=fsdp2."""
    backend: str = "auto"
    """Collective backend: auto (nccl on CUDA, gloo on CPU) | gloo | nccl."""

    def __post_init__(self):
        if self.kind not in PARALLEL_KINDS:
            raise ValueError(
                f"learner.parallel.kind must be one of {', '.join(PARALLEL_KINDS)}, got {self.kind!r}"
            )
        if not isinstance(self.procs, int) or isinstance(self.procs, bool) or self.procs < 1:
            raise ValueError(f"learner.parallel.procs must be an int >= 1, got {self.procs!r}")
        if self.procs > 1 and self.kind != "fsdp2":
            raise ValueError(
                f"learner.parallel.procs={self.procs} needs kind='fsdp2' (one process has nothing to shard over)"
            )
        if self.backend not in DIST_BACKENDS:
            raise ValueError(
                f"learner.parallel.backend must be one of {', '.join(DIST_BACKENDS)}, got {self.backend!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.kind == "fsdp2"


@dataclass(frozen=True)
class DistContext:
    """This process's place among the learner ranks; `SINGLE` when there is one process.

    Every method is a collective when `world > 1`: all ranks must call it, in the same order.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of `t` over the ranks (a new tensor; `t` is left as it is)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        if not self.distributed:
            return t
        import torch.distributed as dist

        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled between our own processes only, never read from disk)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (pickled between our own processes only)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of `n` items (the first `n % world` ranks take one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


SINGLE = DistContext()


def under_launcher() -> bool:
    """True inside a rank started by torchrun or our own launcher (WORLD_SIZE is set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_from_env(device: str = "cpu", backend: str = "auto") -> DistContext:
    """Join the process group described by the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...);
    `SINGLE` outside a launcher. On CUDA each rank takes the GPU of its local rank."""
    if not under_launcher():
        return SINGLE
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if world == 1:
        return SINGLE
    is_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        backend = "nccl" if is_cuda else "gloo"
    if is_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank)


def rank_device(device: str, ctx: DistContext) -> str:
    """The device of this rank: `cuda:<local_rank>` for a CUDA run under several ranks, else `device`."""
    if ctx.distributed and torch.device(device).type == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one: HF's `_no_split_modules` classes (the decoder layers)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        layers = getattr(getattr(model, "model", None), "layers", None)
        blocks = list(layers) if layers is not None else []
    if not blocks:
        raise ValueError(
            f"cannot find the transformer blocks of {type(model).__name__} to shard "
            "(no _no_split_modules and no model.layers)"
        )
    return blocks


def shard_model(
    model: torch.nn.Module, *, param_dtype: torch.dtype | None = None, root: torch.nn.Module | None = None
) -> torch.nn.Module:
    """`fully_shard` every transformer block, then the root (`root`, default `model`: a module holding
    `model` whose forward is what the learner calls, so the root's parameters are gathered around it).
    `param_dtype` (e.g. bf16) is the dtype of the gathered parameters the forward pass computes in; the
    sharded master parameters, the gradients' reduction and the optimiser stay fp32 (mixed precision with
    fp32 master weights)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for block in transformer_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(root if root is not None else model, **kwargs)
    return model


def full_state_dict(model: torch.nn.Module, ctx: DistContext) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on CPU on rank 0 (None on the others); a collective under FSDP2."""
    if not ctx.distributed:
        return {k: v.detach() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if ctx.is_main else None


# ------------------------------------------------------------------------------------- sharded checkpoints

SHARDED_DIR = "sharded"
SHARDED_META = "sharded.json"


def _flat_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    flat, seen = {}, set()
    for k, v in msd.items():
        # Tied weights (embedding = LM head) are one tensor: safetensors refuses to write it twice.
        local = v.to_local() if hasattr(v, "to_local") else v
        if local.numel() and local.data_ptr() in seen:
            continue
        seen.add(local.data_ptr())
        flat[f"model.{k}"] = v
    for fqn, st in osd["state"].items():
        for name, v in st.items():
            flat[f"optim.{fqn}.{name}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return flat, osd["param_groups"]


def save_sharded(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext
) -> None:
    """Every rank writes its shard of the model and optimiser into `path/sharded/` (safetensors, via
    torch.distributed.checkpoint); rank 0 writes `sharded.json` with the world size and param groups.
    A collective: every rank calls it with the same `path`."""
    import json

    import torch.distributed.checkpoint as dcp

    flat, groups = _flat_state(model, optimizer)
    target = Path(path) / SHARDED_DIR
    dcp.save(flat, storage_writer=dcp.HuggingFaceStorageWriter(str(target), save_distributed=True))
    if ctx.is_main:
        meta = {"world_size": ctx.world, "param_groups": groups}
        (Path(path) / SHARDED_META).write_text(json.dumps(meta))
    ctx.barrier()


def load_sharded(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext
) -> None:
    """Load what `save_sharded` wrote into an already sharded model and its optimiser (same world size)."""
    import json

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    meta_path = Path(path) / SHARDED_META
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{path} has no sharded learner state ({SHARDED_META}); was it written by N > 1 ranks?"
        )
    meta = json.loads(meta_path.read_text())
    if meta["world_size"] != ctx.world:
        raise ValueError(
            f"checkpoint {path} was written by {meta['world_size']} learner ranks, this run has {ctx.world}; "
            f"resume with learner.parallel.procs={meta['world_size']}"
        )
    # The optimiser's state exists only after a first step: create it (zeros) so DCP has tensors to load into.
    _materialise_optimizer_state(optimizer)
    flat, _ = _flat_state(model, optimizer)
    dcp.load(flat, storage_reader=dcp.HuggingFaceStorageReader(str(Path(path) / SHARDED_DIR)))
    msd = {k[len("model.") :]: v for k, v in flat.items() if k.startswith("model.")}
    osd: dict = {"state": {}, "param_groups": meta["param_groups"]}
    for k, v in flat.items():
        if k.startswith("optim."):
            fqn, name = k[len("optim.") :].rsplit(".", 1)
            osd["state"].setdefault(fqn, {})[name] = v
    # strict=False: a tied weight was written once (`_flat_state`); loading it sets both names.
    set_model_state_dict(model, msd, options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, osd)


def _materialise_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and not optimizer.state.get(p):
                p.grad = torch.zeros_like(p)
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    optimizer.step()  # AdamW with lr 0 and zero gradients: creates the state, changes no weight
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------ launch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankFailed(RuntimeError):
    """A learner rank died; the message names it, its exit code, and what to resume from."""


def launch(entry, args: tuple, procs: int, *, resume_hint: str = "") -> Any:
    """Run `entry(*args)` on `procs` local ranks with torch's elastic launcher; returns rank 0's result.

    A rank that fails (an exception, or killed) ends every rank; the error names it (and its exception,
    when `entry` is decorated with `torch.distributed.elastic.multiprocessing.errors.record`).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=procs,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        run_id=f"asympo-{os.getpid()}",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    try:
        results = elastic_launch(config, entry)(*args)
    except ChildFailedError as e:
        parts = []
        for rank, failure in sorted(e.failures.items()):
            code = failure.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            msg = failure.message  # the exception when `entry` is decorated with elastic's @record
            msg = msg.get("message", "") if isinstance(msg, dict) else msg
            msg = "" if not isinstance(msg, str) or msg.startswith("To enable traceback") else msg
            parts.append(f"learner rank {rank} failed ({how}){': ' + msg.splitlines()[0] if msg else ''}")
        raise RankFailed("; ".join(parts) + (f". {resume_hint}" if resume_hint else "")) from None
    return results[0]
