"""Time to publish a weight version, against model size, and its share of a learner step.

    python bench/bench_weight_sync.py [--quick] [--sizes 128x4,256x4,512x8,1024x12] [--repeats 5]

For random models of the embedded architecture (hidden x layers, char vocabulary), the learner-side cost
of one publication through each transport, as the backends do it:
- `shm`: `asympo.runtime.sync.snapshot(state, share_memory=True)`, what the process backend does per
  step (a detached CPU copy moved to shared memory; the queue then passes handles, not bytes);
- `shm-flat`: the same copy into one shared-memory block per version (a proposed fix: the per-tensor
  segments of `shm` cost a file and an mmap each);
- `ray`: `ray.put` of the CPU state dict, what the Ray backend does (where ray imports; a local Ray is
  started with 1 CPU for the measurement);
- `disk`: a safetensors file written and fsync'ed, what a server weight sync through the disk has to do
  before the server can reload (the reload itself is the server's and not counted).
Interleaved rounds, median. `step` is one learner step (asympo, 8 responses of 16 + 48 tokens) at the
same size, so `share` = publish / (step + publish) says what each publication costs a step.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from bench_learner_step import make_batch
from benchlib import emit, interleaved, median, print_machine, quick_default, random_model

from asympo.learner import Learner, LearnerConfig
from asympo.runtime.sync import snapshot

VOCAB = 128  # about the char tokenizer's size: the embedded model's


def disk_write(state: dict, path: str) -> None:
    from safetensors.torch import save_file

    # Tied weights share storage; safetensors refuses shared tensors, so the copy is what a sync writes.
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # the reader (another process, maybe another machine) must see all of it
    finally:
        os.close(fd)


def flat_shared_snapshot(state: dict) -> dict:
    """The proposed cheaper publication: one shared-memory block per version (per dtype), the tensors as
    views into it, instead of one shared-memory segment (a file in /dev/shm, an mmap) per tensor."""
    out, blocks = {}, {}
    for dtype in {v.dtype for v in state.values()}:
        n = sum(v.numel() for v in state.values() if v.dtype == dtype)
        blocks[dtype] = [torch.empty(n, dtype=dtype).share_memory_(), 0]
    for k, v in state.items():
        block = blocks[v.dtype]
        n = v.numel()
        view = block[0][block[1] : block[1] + n].view(v.shape)
        view.copy_(v.detach())
        block[1] += n
        out[k] = view
    return out


def measure(hidden: int, layers: int, repeats: int, ray, disk_path: str) -> dict:
    """Publication times through each transport and one learner step, for one model size."""
    model = random_model(vocab=VOCAB, hidden_size=hidden, layers=layers, max_positions=128)
    params = sum(p.numel() for p in model.parameters())
    state = model.state_dict()
    mib = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    learner = Learner(model, LearnerConfig(lr=1e-5, grad_split_every=0), pad_id=0)
    batch = make_batch(1, 8, 16, 48, VOCAB, seed=0)
    variants = {
        "shm": lambda: snapshot(learner.model.state_dict(), share_memory=True),
        "shm-flat": lambda: flat_shared_snapshot(learner.model.state_dict()),
        "disk": lambda: disk_write(learner.model.state_dict(), disk_path),
        "step": lambda: learner.step(batch),
    }
    if ray is not None:
        variants["ray"] = lambda: ray.put({k: v.detach().to("cpu") for k, v in state.items()})
    interleaved(variants, 1)  # warm-up
    times = {k: median(v) for k, v in interleaved(variants, repeats).items()}
    step = times["step"]
    row = {"hidden": hidden, "layers": layers, "params": params, "mib": mib, "step_s": step}
    for t in ("shm", "shm-flat", "ray", "disk"):
        if t in times:
            row[f"{t}_s"] = times[t]
            row[f"{t}_share"] = times[t] / (step + times[t])
    row["tensors"] = len(state)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=quick_default(), help="smoke-test sizes")
    ap.add_argument("--sizes", default=None, help="HIDDENxLAYERS,... (default 128x4,256x4,512x8,1024x12)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5; quick 3)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray object store")
    args = ap.parse_args()
    sizes = args.sizes or ("128x4,256x4,512x4" if args.quick else "128x4,256x4,512x8,1024x12")
    repeats = args.repeats or (3 if args.quick else 5)
    info = print_machine()

    ray = None
    if not args.no_ray:
        try:
            import ray

            ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except Exception as e:  # not installed, or cannot start here
            print(f"ray: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
            ray = None

    print(
        f"{'model':<9} {'params':>11} {'MiB':>7} {'shm ms':>8} {'ray ms':>8} {'disk ms':>8} {'step ms':>9}"
        f" {'flat ms':>8} {'shm share':>9} {'flat share':>10} {'ray share':>9} {'disk share':>10}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes.split(","):
            hidden, layers = (int(x) for x in size.lower().split("x"))
            row = measure(hidden, layers, repeats, ray, os.path.join(tmp, "w.safetensors"))

            def cell(key: str, scale: float = 1000, row: dict = row) -> str:
                return format(row[key] * scale, ".1f") if key in row else "-"

            print(
                f"{size:<9} {row['params']:>11,} {row['mib']:>7.1f} {cell('shm_s'):>8} {cell('ray_s'):>8}"
                f" {cell('disk_s'):>8} {cell('step_s'):>9} {cell('shm-flat_s'):>8} {cell('shm_share', 100):>8}%"
                f" {cell('shm-flat_share', 100):>9}%"
                f" {cell('ray_share', 100):>8}% {cell('disk_share', 100):>9}%"
            )
            rows.append(row)
    if ray is not None:
        ray.shutdown()
    emit("weight_sync", {"machine": info, "quick": args.quick, "vocab": VOCAB, "rows": rows})


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
