"""A learner on more than one device: N ranks under torch.distributed, the model sharded with FSDP2.

PyTorch's own FSDP2 (`torch.distributed.fsdp.fully_shard`, the engine torchtitan, prime-rl and verl's FSDP2
path use) shards every transformer block and the root across the ranks; gloo on CPU, NCCL on GPU.

How a batch is split (docs/design.md, "Scale"): rank 0 owns the scheduler, the buffer, metrics and
checkpoints; it broadcasts each batch, and every rank trains on its own share of the responses while
normalising by the *global* response and token counts (`DistContext.reduce_sum`), so the summed gradient
equals the single-process gradient for every aggregation mode. FSDP2 averages gradients over the ranks, so a
rank's loss is multiplied by the world size (gloo cannot do FSDP2's pre-multiplied sum).

Launch: `asympo train` starts the ranks itself when `learner.parallel.procs > 1` (`launch`: spawned processes
with torchrun's environment; `torchrun --nproc-per-node N -m asympo train ...` works as well). A rank that dies ends the run with an
error naming the rank that died first, not the ranks that only lost their peer.

Checkpoints: sharded with `torch.distributed.checkpoint` in safetensors files (its Hugging Face storage
format: nothing is unpickled), model and optimiser together; rank 0 also exports consolidated HF weights.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import tempfile
import time
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


# A rank whose collective lost its peer ends with one of these: it is a casualty of another rank's death,
# not the cause, and must not be named as the rank that failed.
_PEER_LOST = re.compile(
    r"connection (reset|closed) by peer|broken pipe|connection refused|socket closed|peer .*(closed|lost|died)"
    r"|remote process exited|NCCL communicator was aborted",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RankExit:
    """How one rank ended: its exit code (negative: the signal), its exception, whether the launcher
    stopped it after another rank had failed."""

    rank: int
    exitcode: int
    error: str = ""
    stopped: bool = False

    @property
    def how(self) -> str:
        if self.exitcode >= 0:
            return f"exit code {self.exitcode}"
        try:
            name = signal.Signals(-self.exitcode).name
        except ValueError:
            name = f"signal {-self.exitcode}"
        hint = ", often the out-of-memory killer" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"

    @property
    def casualty(self) -> bool:
        """Ended because another rank had died (stopped by us, or its collective lost the peer)."""
        return self.stopped or bool(_PEER_LOST.search(self.error))


def describe_failures(exits: list[RankExit], first: list[int]) -> str:
    """The message of `RankFailed`: the ranks that failed on their own first (among those found dead at the
    first failure, `first`, then any other), the ranks that only lost their peers after it.

    Which dead rank the operating system reports first is a race, so a rank whose error says its peer went
    away is never named as the cause while a rank without one exists."""
    failed = [e for e in exits if e.exitcode != 0]
    order = {r: i for i, r in enumerate(first)}
    failed.sort(key=lambda e: (order.get(e.rank, len(order)), e.rank))
    causes = [e for e in failed if not e.casualty] or [e for e in failed if not e.stopped] or failed
    parts = [f"learner rank {e.rank} failed ({e.how}){': ' + e.error if e.error else ''}" for e in causes]
    after = [e for e in failed if e not in causes]
    if after:
        parts.append(
            "then "
            + ", ".join(
                f"rank {e.rank} was stopped by the launcher"
                if e.stopped
                else f"rank {e.rank} lost its peer ({e.how})"
                for e in after
            )
        )
    return "; ".join(parts)


def _rank_main(rank: int, procs: int, port: int, run_dir: str, result_conn, entry, args: tuple) -> None:
    """A spawned rank: the environment torchrun would give it, then `entry(*args)`; its exception is written
    where the launcher reads it, rank 0 sends its result through the launcher's pipe."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(procs),
        LOCAL_WORLD_SIZE=str(procs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        result = entry(*args)
    except BaseException as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        Path(run_dir, f"rank{rank}.error").write_text(f"{type(e).__name__}: {first_line}".rstrip(": "))
        raise
    if rank == 0:
        result_conn.send(result)
        # Tensors travel as shared memory this process serves: stay until the launcher has unpickled them.
        try:
            result_conn.recv()
        except EOFError:
            pass
    # The rank's work is done and written (files atomically, rank 0's result acknowledged). End it here:
    # about one run in ten, interpreter teardown met a thread of the process group still running and
    # aborted a rank that had finished (SIGABRT, "terminate called without an active exception"), which
    # the launcher then reported as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _stop(procs: list, grace_s: float) -> set[int]:
    """Let the remaining ranks end by themselves for `grace_s`, then terminate (and kill) them; returns the
    ranks it had to stop."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    stopped = {r for r, p in enumerate(procs) if p.is_alive()}
    for r in stopped:
        procs[r].terminate()
    for r in stopped:
        procs[r].join(10)
        if procs[r].is_alive():
            procs[r].kill()
            procs[r].join()
    return stopped


def launch(entry, args: tuple, procs: int, *, resume_hint: str = "", grace_s: float = 5.0) -> Any:
    """Run `entry(*args)` on `procs` local ranks (spawned processes with torchrun's environment); returns
    rank 0's result.

    A rank that fails (an exception, or killed) ends every rank: the others get `grace_s` to end by
    themselves, then are terminated. `RankFailed` names the rank that failed first with its exit code or
    signal and its exception, not the ranks that only lost their peer (`describe_failures`).
    """
    import multiprocessing.connection

    ctx = torch.multiprocessing.get_context("spawn")
    results, result_conn = ctx.Pipe()  # rank 0 sends its result, the launcher acknowledges it
    with tempfile.TemporaryDirectory(prefix="asympo-ranks-") as run_dir:
        port = free_port()
        ranks = [
            ctx.Process(
                target=_rank_main,
                args=(r, procs, port, run_dir, result_conn if r == 0 else None, entry, args),
                name=f"asympo-rank{r}",
            )
            for r in range(procs)
        ]
        for p in ranks:
            p.start()
        result_conn.close()  # rank 0 holds the only writer: its death ends the pipe
        first: list[int] = []
        got: list = []
        try:
            # Read rank 0's result as it comes (a large one would block its exit) while watching every rank.
            pending = {p.sentinel: r for r, p in enumerate(ranks)}
            while (pending or not got) and not first:
                waiting = list(pending) + ([results] if not got else [])
                for ready in multiprocessing.connection.wait(waiting):
                    if ready is results:
                        try:
                            got.append(results.recv())
                            results.send(True)
                        except EOFError:
                            got.append(None)  # rank 0 ended without a result: its exit code says why
                    else:
                        ranks[pending.pop(ready)].join()
                first = [r for r, p in enumerate(ranks) if p.exitcode not in (None, 0)]
        finally:
            stopped = _stop(ranks, grace_s if first else 0.0)
            results.close()
        if not first:
            return got[0]
        errors = {r: Path(run_dir, f"rank{r}.error") for r in range(procs)}
        exits = [
            RankExit(r, p.exitcode, errors[r].read_text() if errors[r].exists() else "", r in stopped)
            for r, p in enumerate(ranks)
        ]
    raise RankFailed(describe_failures(exits, first) + (f". {resume_hint}" if resume_hint else ""))
