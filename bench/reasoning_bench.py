"""Measurements of the second scale (docs/results.md "Second scale"): one study cell's cost, and the lengths
of correct and wrong responses of the SFT'd reasoning model.

    # one cell of the `reasoning` study preset (objective asympo, d = 4, seed 0): wall and CPU time
    python bench/reasoning_bench.py cell [--preset async] [--random-model]
    # held-out pass@1 at T = 1 and the length distribution of correct vs wrong samples
    python bench/reasoning_bench.py lengths [--model DIR] [--n 4]

`--random-model` runs the cell from a randomly initialised model of the same shape instead of the SFT
warm-up (for timing before the warm-up exists): its responses all run to `max_new_tokens`, so the time is an
upper bound on a real cell's. Both print CPU seconds next to wall seconds, because on a shared machine the
wall time mostly measures the other jobs.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

_STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def _cpu_s() -> float:
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _warmup_config():
    from asympo.config import TrainConfig
    from asympo.presets import preset_dict
    from asympo.sft import SFTConfig

    cfg = TrainConfig.from_dict(preset_dict("reasoning"))
    return cfg, SFTConfig(task_name="reasoning", **{**cfg.sft, "task": cfg.task.reasoning})


def cell(args: argparse.Namespace) -> None:
    import dataclasses

    from asympo.study import STUDY_PRESETS, run_study

    base = STUDY_PRESETS[args.preset]
    overrides = [*base.overrides, *([f"steps={args.steps}"] if args.steps else [])]
    if args.random_model:
        from asympo.models.tiny import SIZES, TinyModelConfig, build_tiny_model, save_pretrained
        from asympo.models.tokenizer import build_char_tokenizer

        model_dir = Path(tempfile.mkdtemp(prefix="reasoning-random-"))
        tok = build_char_tokenizer()
        save_pretrained(build_tiny_model(TinyModelConfig(**SIZES["reasoning"]), tok), tok, model_dir)
        overrides.append(f"model.path={json.dumps(str(model_dir))}")
    spec = next(o for o in base.objectives if o.label == args.objective)
    study = dataclasses.replace(
        base, objectives=[spec], staleness=[args.staleness], seeds=[0], overrides=overrides
    )
    out = Path(args.out or tempfile.mkdtemp(prefix="reasoning-cell-"))
    wall0, cpu0 = time.monotonic(), _cpu_s()
    # parallel=2 gives the cell one torch thread, as in a study run with the default --parallel 2 (two
    # threads on a loaded 2-core machine spin and lose most of their time).
    run_study(study, out, parallel=2, progress=False, report=False)
    wall, cpu = time.monotonic() - wall0, _cpu_s() - cpu0
    (cell_dir,) = (out / "cells").iterdir()
    recs = [json.loads(x) for x in (cell_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((cell_dir / "summary.json").read_text())
    tokens = [r["batch/response_tokens"] / r["batch/responses"] for r in recs]
    print(f"cell {cell_dir.name} ({args.preset} preset, {len(recs)} steps), machine load {_load()}")
    print(f"  wall {wall:.0f} s (train() itself {summary['wall_s']:.0f} s), CPU {cpu:.0f} s (all processes)")
    print(
        f"  per step: train {statistics.mean(r['time/train'] for r in recs):.1f} s, generate "
        f"{statistics.mean(r['time/generate'] for r in recs):.1f} s, wait "
        f"{statistics.mean(r['time/wait'] for r in recs):.1f} s; mean response {statistics.mean(tokens):.0f} tokens"
    )
    evals = [json.loads(x) for x in (cell_dir / "eval.jsonl").read_text().splitlines()]
    print(
        f"  held-out pass@1 {summary['pass1_before']} -> {summary['pass1_after']}; each evaluation "
        f"{statistics.mean(e['time'] for e in evals):.0f} s wall"
    )


def lengths(args: argparse.Namespace) -> None:
    from asympo.data.reasoning import ReasoningConfig, reasoning_problems
    from asympo.engines.base import SamplingParams
    from asympo.engines.torch import TorchEngine
    from asympo.rewards.math import math_reward
    from asympo.sft import sft_cache_path

    cfg, sft = _warmup_config()
    model = Path(args.model) if args.model else sft_cache_path(sft)
    if not (model / "config.json").exists():
        sys.exit(
            f"no model at {model}; make the reasoning warm-up first: python -m asympo.sft --task reasoning "
            "(or pass --model DIR)"
        )
    if (model / "sft.json").exists():
        stats = json.loads((model / "sft.json").read_text())["stats"]
        print(
            f"warm-up: {stats['parameters']:,} parameters, {stats['steps']} steps in {stats['seconds']:.0f} s, "
            f"kept step {stats['chosen_step']} (validation pass@1 {stats['val_pass1']})"
        )
    task = {**cfg.task.reasoning, **json.loads(args.task)}
    problems = reasoning_problems(ReasoningConfig(**task), "test")[: args.limit]
    engine = TorchEngine.from_pretrained(model)
    sampling = SamplingParams(temperature=args.temperature, max_new_tokens=cfg.rollout.max_new_tokens, seed=0)
    correct, wrong, spreads = [], [], []
    by_template: dict[str, list[float]] = {}
    lines = {"Check: ": 0, "So the answer is ": 0}
    steps, wrong_steps = (
        collections.Counter(),
        collections.Counter(),
    )  # `a op b = c` written, and wrong, by op
    flat = []
    for start in range(0, len(problems), 32):
        flat += engine.generate([p.prompt for p in problems[start : start + 32]], sampling, n=args.n)
    for i, p in enumerate(problems):
        outs = flat[i * args.n : (i + 1) * args.n]
        group = [len(o.text) for o in outs]
        spreads.append(statistics.pstdev(group))
        for o in outs:
            reward = math_reward(o.text, p.reference)
            (correct if reward == 1.0 else wrong).append(len(o.text))
            by_template.setdefault(p.meta["template"], []).append(reward)
            for start in lines:
                lines[start] += start in o.text
            for m in _STEP.finditer(o.text):
                a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
                steps[op] += 1
                wrong_steps[op] += {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op] != c
    total = len(correct) + len(wrong)
    print(
        f"held-out {len(problems)} problems x {args.n} samples at T={args.temperature:g}: "
        f"pass@1 {len(correct) / total:.3f}"
    )
    for name, xs in (("correct", correct), ("wrong", wrong)):
        if xs:
            q = statistics.quantiles(xs, n=10) if len(xs) > 1 else xs * 9
            print(
                f"  {name:7s} n={len(xs):4d} chars: mean {statistics.mean(xs):5.1f}  min {min(xs)}  "
                f"p10 {q[0]:.0f}  median {statistics.median(xs):.0f}  p90 {q[-1]:.0f}  max {max(xs)}"
            )
            print("           " + _histogram(xs))
    print(f"  within-group length std: mean {statistics.mean(spreads):.1f} chars")
    print(
        "  pass@1 by template: " + ", ".join(f"{t} {statistics.mean(r):.2f}" for t, r in by_template.items())
    )
    print(
        "  wrong steps: "
        + ", ".join(f"{op} {wrong_steps[op]}/{n} = {wrong_steps[op] / n:.2f}" for op, n in steps.items())
    )
    print("  samples with a line " + ", ".join(f"{k.strip()!r}: {v / total:.2f}" for k, v in lines.items()))


def rewards(args: argparse.Namespace) -> None:
    """Mean training reward of the first and the last 10 steps of each metrics.jsonl (the lr-check table)."""
    for path in args.metrics:
        r = [json.loads(line)["reward/mean"] for line in Path(path).read_text().splitlines()]
        print(
            f"{path}: {len(r)} steps, reward {statistics.mean(r[:10]):.2f} -> {statistics.mean(r[-10:]):.2f}"
        )


def _histogram(xs: list[int], width: int = 20, top: int = 200) -> str:
    """Counts per 20-character bin, 0..top."""
    bins = [0] * (top // width + 1)
    for x in xs:
        bins[min(x // width, len(bins) - 1)] += 1
    return "  ".join(f"{i * width}-:{c}" for i, c in enumerate(bins) if c)


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cell", help="time one study cell")
    p.add_argument("--preset", default="reasoning", choices=["reasoning", "async", "aggregation"])
    p.add_argument("--objective", default="asympo", help="an objective label of the preset")
    p.add_argument("--staleness", type=int, default=4)
    p.add_argument(
        "--random-model", action="store_true", help="a random model of the same shape (upper bound)"
    )
    p.add_argument("--steps", type=int, help="override the cell's steps (default: the preset's)")
    p.add_argument("--out", help="study directory (default: a temporary one)")
    p.set_defaults(func=cell)
    p = sub.add_parser("lengths", help="lengths of correct and wrong samples of the SFT'd model")
    p.add_argument("--model", help="model directory (default: the cached reasoning warm-up)")
    p.add_argument("--n", type=int, default=4, help="samples per problem")
    p.add_argument("--limit", type=int, default=200, help="held-out problems")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    p.add_argument(
        "--task",
        default="{}",
        help='JSON overrides of the preset\'s task.reasoning, e.g. \'{"n_train": 20000, "max_number": null, '
        "\"extras\": []}' for the first attempt's task",
    )
    p.set_defaults(func=lengths)
    p = sub.add_parser("rewards", help="training reward of the first and last 10 steps of cells")
    p.add_argument("metrics", nargs="+", help="metrics.jsonl files (e.g. docs/results/reasoning-lr/*.jsonl)")
    p.set_defaults(func=rewards)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
