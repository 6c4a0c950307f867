"""What the bench scripts share: the machine line, interleaved timing, random models, the JSON line.

Every script prints a human table and, last, one line `{"bench": NAME, ...}` that tools can parse.
Ratios are always taken against a baseline measured in the same process, with the variants interleaved
(A B A B ...) and the median kept, so that load from other processes hits both sides alike.
`BENCH_QUICK=1` in the environment (or `--quick`) asks each script for its smoke-test sizes.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch


def quick_default() -> bool:
    """True when the environment asks for the quick (smoke-test) sizes."""
    return os.environ.get("BENCH_QUICK", "0") not in ("", "0", "false", "no")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where and when the numbers were taken (the load average says how contaminated they may be)."""
    info = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "load1": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_machine(info: dict | None = None) -> dict:
    info = info or machine()
    gpu = f", gpu {info['gpu']}" if "gpu" in info else ""
    print(
        f"machine: {info['nproc']} cpus ({info['cpu']}){gpu}, torch {info['torch']} "
        f"({info['torch_threads']} threads), load {info['load1']}, {info['date_utc']} UTC"
    )
    return info


def resolve_device(device: str) -> str:
    """`auto` -> cuda when a GPU is visible, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    variants: dict[str, Callable[[], object]], repeats: int, device: str = "cpu"
) -> dict[str, list[float]]:
    """Wall seconds of each variant, `repeats` rounds of A, B, ... in turn (order rotated every round so
    neither side always runs first)."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync_device(device)
            t0 = time.perf_counter()
            variants[name]()
            sync_device(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def random_model(
    *,
    vocab: int,
    hidden_size: int = 128,
    layers: int = 4,
    max_positions: int = 2048,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """A randomly initialised model of the embedded (Llama) architecture at any size and vocabulary."""
    from transformers import AutoModelForCausalLM

    from asympo.models.tiny import TinyModelConfig

    heads = max(2, hidden_size // 64)
    shape = replace(
        TinyModelConfig(),
        hidden_size=hidden_size,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2) if heads % 2 == 0 else heads,
        intermediate_size=max(64, int(hidden_size * 8 / 3) // 64 * 64),
        max_position_embeddings=max_positions,
    )
    cfg = shape.hf_config(vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.to(device)


def emit(name: str, result: dict) -> None:
    """The machine-readable last line."""
    print(json.dumps({"bench": name, **result}, default=float))
