"""Completions graded per second by `math_reward`: serial in this process vs a RewardPool of 2 workers.

    python bench/bench_rewards.py [--workers 2] [--rounds 4]

Two workloads from the shipped data. MATH-500: each reference against a `\\boxed{}` answer, so
math-verify/sympy does the work. GSM8K: `#### N` completions, which take the plain-number fast path.
Round r grades answer (i + r) mod n against reference i (round 0: every answer right, later rounds:
mostly wrong), so no completion is graded twice and neither side profits from caches the other lacks;
references repeat across rounds, as they do across a group of samples in training. In each round
serial runs first, then the pool, on the same inputs; the workers are started before timing. Prints
the median over rounds of completions/s for both and of the ratio pool/serial, and the load average,
because on a shared machine other work changes the numbers. The CPU milliseconds per completion
(serial: this process; pool: the workers and this process, from /proc) do not depend on that load:
their ratio says what the pool's processes and pipes cost, and on an idle machine with 2 free cores the
pool's speed-up approaches 2 x serial_cpu / pool_cpu.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from asympo.data import load_problems
from asympo.rewards.math import math_reward, warm_up
from asympo.rewards.pool import RewardPool, RewardPoolConfig


def rounds(name: str, count: int) -> list[tuple[list[str], list[str]]]:
    """`count` (completions, references) batches of workload `name`, no completion repeated."""
    if name == "math500 (sympy)":
        refs = [p.reference for p in load_problems("math500")]
        form = "So the answer is \\boxed{{{}}}."
    else:
        refs = [p.reference for p in load_problems("gsm8k", "test")]
        form = "Adding up the parts...\n#### {}"
    n = len(refs)
    return [([form.format(refs[(i + r) % n]) for i in range(n)], refs) for r in range(count)]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    warm_up()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}, pool workers: {args.workers}")
    print(
        f"{'workload':<18} {'n/round':>7} {'serial /s':>10} {'pool /s':>10} {'pool/serial':>12}"
        f" {'serial cpu ms':>14} {'pool cpu ms':>12} {'same':>5}"
    )
    med = statistics.median
    with RewardPool(math_reward, RewardPoolConfig(num_workers=args.workers, timeout_s=10.0)) as pool:
        pool.wait_ready()
        for name in ("math500 (sympy)", "gsm8k (fast path)"):
            serial_rate, pool_rate, ratio, serial_cpu, pool_cpu, same = [], [], [], [], [], True
            for completions, references in rounds(name, args.rounds):
                n = len(completions)
                cpu0, start = time.process_time(), time.perf_counter()
                serial = [math_reward(c, r) for c, r in zip(completions, references)]
                serial_s, serial_cpu_s = time.perf_counter() - start, time.process_time() - cpu0
                pids = pool.worker_pids()
                workers0 = sum(_cpu_s(p) for p in pids)
                cpu0, start = time.process_time(), time.perf_counter()
                pooled = pool.score(completions, references)
                pool_s = time.perf_counter() - start
                pool_cpu_s = time.process_time() - cpu0 + sum(_cpu_s(p) for p in pids) - workers0
                serial_rate.append(n / serial_s)
                pool_rate.append(n / pool_s)
                ratio.append(serial_s / pool_s)
                serial_cpu.append(1000 * serial_cpu_s / n)
                pool_cpu.append(1000 * pool_cpu_s / n)
                same = same and pooled == serial
            print(
                f"{name:<18} {n:>7} {med(serial_rate):>10.0f} {med(pool_rate):>10.0f} {med(ratio):>12.2f}"
                f" {med(serial_cpu):>14.3f} {med(pool_cpu):>12.3f} {'yes' if same else 'NO':>5}"
            )
        print(f"pool counters: {pool.metrics()}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
