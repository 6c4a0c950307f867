"""Log-prob memory at a real vocabulary: `asympo.logprobs` (chunked) against naive log_softmax + gather.

    python bench/bench_logprobs.py                  # vocab 151,936, 8,192 tokens: the naive side needs ~10 GB
    python bench/bench_logprobs.py --quick          # vocab 32,768, 1,024 tokens, chunk 128 (~0.3 GB)
    python bench/bench_logprobs.py --grad           # forward + backward (the learner's case; naive ~3x more)

The work: log p(token) for T response tokens from hidden states [T, H] and an LM head [V, H]. Variants:
- `naive`: `log_softmax(h @ W.T).gather(...)` (what most trainers write);
- `asympo/hidden`: `token_logprobs_from_hidden` (logits chunk by chunk, checkpointed under grad; the
  route `causal_lm_logprobs` takes for a plain LM head);
- `asympo/logits`: the full logits exist (the fallback route), `token_logprobs_from_logits` chunks only
  the log-softmax;
- `liger`: liger-kernel's `LigerFusedLinearCrossEntropyLoss` (reduction="none", the per-token log-probs)
  where it imports and runs (it needs triton and a GPU; on a CPU it is reported as skipped).
Each variant runs in a fresh subprocess, so its peak memory is its own: on CPU the rise of ru_maxrss over
the inputs' footprint (VmHWM after /proc/self/clear_refs resets it; glibc's mmap threshold fixed so
freed blocks leave RSS), on CUDA torch.cuda.max_memory_allocated over the same. Rounds of all variants are
interleaved (`--rounds`); the median time and the max peak are kept. The log-probs' sum is compared to
the naive one's (`max |diff|` of the sums), so a variant that is fast because it is wrong shows.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from benchlib import emit, print_machine, quick_default, resolve_device

VARIANTS = ("naive", "asympo/hidden", "asympo/logits", "liger")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak(device: str) -> int:
    """Start a fresh peak-memory window; returns the bytes in use now (the window's base)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    gc.collect()
    try:  # give freed heap pages back, so the peak below is not hidden by reused ones
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        # Linux >= 4.0: writing 5 resets this process's peak RSS (VmHWM) to its current RSS, so the
        # setup's own transient peaks (the random inputs) do not mask the variant's.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # coarser: a high-water mark


def _peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    try:
        return _status_kib("VmHWM") * 1024
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(args) -> None:
    """One variant, `--inner` times, in this fresh process (peak of the first call, fastest time); prints
    one JSON line."""
    from asympo.logprobs import token_logprobs_from_hidden, token_logprobs_from_logits

    device = args.device
    torch.manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, device=device) * 0.5
    weight = torch.randn(args.vocab, args.hidden, device=device) * 0.02
    tokens = torch.randint(0, args.vocab, (args.tokens,), device=device)
    if args.grad:
        hidden.requires_grad_(True)
        weight.requires_grad_(True)

    if args.child == "liger":
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss(reduction="none")
        except Exception as e:  # ImportError, or triton missing / no GPU driver at import
            print(json.dumps({"skipped": f"{type(e).__name__}: {e}".splitlines()[0][:200]}))
            return

    def run() -> torch.Tensor:
        if args.child == "naive":
            logp = torch.log_softmax(hidden @ weight.T, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
        elif args.child == "asympo/hidden":
            logp, _ = token_logprobs_from_hidden(hidden, weight, tokens, chunk_size=args.chunk_size)
        elif args.child == "asympo/logits":
            logits = hidden @ weight.T
            logp, _ = token_logprobs_from_logits(logits, tokens, chunk_size=args.chunk_size)
        else:
            logp = -liger(weight, hidden, tokens)
        if args.grad:
            logp.sum().backward()
        return logp.detach()

    with torch.set_grad_enabled(args.grad):
        base = _reset_peak(device)
        times, peak = [], None
        try:
            for _ in range(args.inner):
                hidden.grad = weight.grad = None
                t0 = time.perf_counter()
                logp = run()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                # The first call's peak only: later calls reuse (or fragment) the heap the first one left.
                peak = _peak_bytes(device) - base if peak is None else peak
        except Exception as e:  # e.g. liger's triton kernel on a CPU tensor
            why = f"{type(e).__name__}: {e}".splitlines()[0][:160]
            print(
                json.dumps(
                    {"skipped": f"liger-kernel imports but its triton kernel does not run here ({why})"}
                )
            )
            return
    print(json.dumps({"time_s": min(times), "peak_bytes": peak, "logp_sum": float(logp.double().sum())}))


def run_child(args, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--device", args.device]
    for k in ("tokens", "vocab", "hidden", "chunk_size", "inner"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if args.grad:
        cmd.append("--grad")
    env = dict(os.environ)
    # glibc adapts its mmap threshold upwards after a large free, after which freed chunk temporaries stay
    # in (per-thread) heaps and RSS shows the allocator's cache, at random, not the live tensors (seen: 47
    # or 165 MB for the same run). A fixed threshold maps and unmaps every block >= 64 KiB.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    if args.liger_path:
        env["PYTHONPATH"] = args.liger_path + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["(no output)"]
        if res.returncode < 0 or "MemoryError" in res.stderr or "out of memory" in res.stderr.lower():
            return {"skipped": f"killed or out of memory (rc {res.returncode}): {tail[0][:160]}"}
        raise RuntimeError(f"variant {variant} failed (rc {res.returncode}):\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=quick_default(), help="smoke-test sizes")
    ap.add_argument("--device", default="auto", help="auto (cuda when visible) | cpu | cuda")
    ap.add_argument("--tokens", type=int, default=None, help="response tokens T (default 8192; quick 1024)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary V (default 151936; quick 32768)")
    ap.add_argument("--hidden", type=int, default=None, help="hidden size H (default 896; quick 256)")
    ap.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default 1024; quick 128)")
    ap.add_argument("--grad", action="store_true", help="forward + backward (default: forward only)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all variants")
    ap.add_argument("--inner", type=int, default=1, help="calls per subprocess (the fastest is kept)")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    ap.add_argument(
        "--liger-path",
        default=os.environ.get("LIGER_PATH", ""),
        help="extra import path holding liger_kernel (e.g. a `pip install --target` directory)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.device = resolve_device(args.device)
    args.tokens = args.tokens or (1024 if args.quick else 8192)
    args.vocab = args.vocab or (32768 if args.quick else 151936)
    args.hidden = args.hidden or (256 if args.quick else 896)
    args.chunk_size = args.chunk_size or (128 if args.quick else 1024)
    if args.child:
        child(args)
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "naive" not in variants:
        ap.error(f"--variants must include naive and name only {', '.join(VARIANTS)}; got {args.variants!r}")

    info = print_machine()
    naive_gb = 2 * args.tokens * args.vocab * 4 / 2**30
    print(
        f"T={args.tokens} tokens, V={args.vocab}, H={args.hidden}, chunk {args.chunk_size}, "
        f"{'forward+backward' if args.grad else 'forward only'}, device {args.device}; "
        f"[T, V] float32 = {naive_gb / 2:.2f} GiB; {args.rounds} interleaved rounds, fresh process each"
    )
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            if results[v] and "skipped" in results[v][0]:
                continue  # a skipped variant (liger on CPU) stays skipped
            results[v].append(run_child(args, v))
    naive = results["naive"]
    if "skipped" in naive[0]:
        raise SystemExit(
            f"the naive baseline could not run: {naive[0]['skipped']}; try smaller --tokens/--vocab"
        )
    naive_t = statistics.median(x["time_s"] for x in naive)
    naive_peak = max(x["peak_bytes"] for x in naive)
    naive_sum = naive[0]["logp_sum"]
    print(
        f"{'variant':<15} {'peak MiB':>10} {'peak/naive':>11} {'time s':>9} {'time/naive':>11} {'|sum diff|':>11}"
    )
    rows = []
    for v in variants:
        got = results[v]
        if "skipped" in got[0]:
            print(f"{v:<15} skipped: {got[0]['skipped']}")
            rows.append({"variant": v, "skipped": got[0]["skipped"]})
            continue
        t = statistics.median(x["time_s"] for x in got)
        peak = max(x["peak_bytes"] for x in got)
        diff = abs(got[0]["logp_sum"] - naive_sum)
        row = {
            "variant": v,
            "peak_mib": peak / 2**20,
            "peak/naive": peak / naive_peak,
            "time_s": t,
            "time/naive": t / naive_t,
            "sum_abs_diff": diff,
        }
        rows.append(row)
        print(
            f"{v:<15} {row['peak_mib']:>10.0f} {row['peak/naive']:>11.3f} {t:>9.3f} {row['time/naive']:>11.2f}"
            f" {diff:>11.2e}"
        )
    emit(
        "logprobs",
        {
            "machine": info,
            "device": args.device,
            "quick": args.quick,
            "tokens": args.tokens,
            "vocab": args.vocab,
            "hidden": args.hidden,
            "chunk_size": args.chunk_size,
            "grad": args.grad,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
