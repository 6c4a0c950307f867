"""Completions graded per second by `math_reward`: serial in this process vs a RewardPool of 2 workers.

    python bench/bench_rewards.py [--workers 2] [--rounds 3]

Two workloads, both from the shipped data: MATH-500 (each answer in \\boxed{} against its own reference
and against the next problem's, so math-verify/sympy does the work) and GSM8K (`#### N` completions,
right and wrong, which take the plain-number fast path). Workers are started before timing. Serial and
pool alternate for `--rounds` rounds; the first round only warms caches (sympy's, math-verify's) on both
sides and the median of the others is printed: completions/s for both and the ratio pool/serial. The
load average is printed too, because on a shared machine other work changes the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from asympo.data import load_problems
from asympo.rewards.math import math_reward, warm_up
from asympo.rewards.pool import RewardPool, RewardPoolConfig


def workloads() -> dict[str, tuple[list[str], list[str]]]:
    math500 = [p.reference for p in load_problems("math500")]
    shifted = math500[1:] + math500[:1]
    gsm8k = [p.reference for p in load_problems("gsm8k", "test")]
    return {
        "math500 (sympy)": (
            [f"So the answer is \\boxed{{{a}}}." for a in math500 + shifted],
            math500 + math500,
        ),
        "gsm8k (fast path)": (
            [f"Adding up... \n#### {a}" for a in gsm8k] + [f"#### {int(a) + 1}" for a in gsm8k],
            gsm8k + gsm8k,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating serial/pool rounds; the first is warm-up"
    )
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (the first round is warm-up)")

    warm_up()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}, pool workers: {args.workers}")
    print(f"{'workload':<20} {'n':>6} {'serial /s':>11} {'pool /s':>11} {'pool/serial':>12} {'same':>5}")
    with RewardPool(math_reward, RewardPoolConfig(num_workers=args.workers, timeout_s=10.0)) as pool:
        pool.wait_ready()
        for name, (completions, references) in workloads().items():
            n = len(completions)
            serial_s, pool_s, same = [], [], True
            for _ in range(args.rounds):
                start = time.perf_counter()
                serial = [math_reward(c, r) for c, r in zip(completions, references)]
                serial_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                pooled = pool.score(completions, references)
                pool_s.append(time.perf_counter() - start)
                same = same and pooled == serial
            serial_t, pool_t = statistics.median(serial_s[1:]), statistics.median(pool_s[1:])
            print(
                f"{name:<20} {n:>6} {n / serial_t:>11.0f} {n / pool_t:>11.0f} {serial_t / pool_t:>12.2f}"
                f" {'yes' if same else 'NO':>5}"
            )
        print(f"pool counters: {pool.metrics()}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
