"""Completions graded per second by `math_reward`: serial in this process vs a RewardPool of 2 workers.

    python bench/bench_rewards.py [--workers 2] [--rounds 4]

Two workloads from the shipped data. MATH-500: each reference against a `\\boxed{}` answer, so
math-verify/sympy does the work. GSM8K: `#### N` completions, which take the plain-number fast path.
Round r grades answer (i + r) mod n against reference i (round 0: every answer right, later rounds:
mostly wrong), so no completion is graded twice and neither side profits from caches the other lacks;
references repeat across rounds, as they do across a group of samples in training. In each round
serial runs first, then the pool, on the same inputs; the workers are started before timing. Prints
the median over rounds of completions/s for both and of the ratio pool/serial, and the load average,
because on a shared machine other work changes the numbers.
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
        f"{'workload':<18} {'n/round':>7} {'serial /s':>10} {'pool /s':>10} {'pool/serial':>12} {'same':>5}"
    )
    with RewardPool(math_reward, RewardPoolConfig(num_workers=args.workers, timeout_s=10.0)) as pool:
        pool.wait_ready()
        for name in ("math500 (sympy)", "gsm8k (fast path)"):
            serial_rate, pool_rate, ratio, same = [], [], [], True
            for completions, references in rounds(name, args.rounds):
                start = time.perf_counter()
                serial = [math_reward(c, r) for c, r in zip(completions, references)]
                serial_s = time.perf_counter() - start
                start = time.perf_counter()
                pooled = pool.score(completions, references)
                pool_s = time.perf_counter() - start
                serial_rate.append(len(completions) / serial_s)
                pool_rate.append(len(completions) / pool_s)
                ratio.append(serial_s / pool_s)
                same = same and pooled == serial
            print(
                f"{name:<18} {len(completions):>7} {statistics.median(serial_rate):>10.0f}"
                f" {statistics.median(pool_rate):>10.0f} {statistics.median(ratio):>12.2f}"
                f" {'yes' if same else 'NO':>5}"
            )
        print(f"pool counters: {pool.metrics()}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
