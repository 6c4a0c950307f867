"""pass@1 and unbiased pass@k of any engine on any problem set, graded by the training reward code."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from asympo.data.problem import Problem
from asympo.engines.base import Engine, SamplingParams

if TYPE_CHECKING:
    from asympo.config import TaskConfig

__all__ = ["default_ks", "evaluate", "load_task", "pass_at_k"]


def load_task(task: TaskConfig, split: str, tokenizer=None) -> list[Problem]:
    """The problems of `task`'s `split`: the one loader `asympo train` and `asympo eval` share, so a
    model is evaluated on exactly the prompts (template, fields, arithmetic ranges) it was trained on.
    `tokenizer` renders the `chat` template of text datasets; the arithmetic task needs none."""
    if task.name == "arithmetic":
        from asympo.data.arithmetic import ArithmeticConfig, arithmetic_problems

        return arithmetic_problems(ArithmeticConfig(**task.arithmetic), split)
    if task.name == "reasoning":
        from asympo.data.reasoning import ReasoningConfig, reasoning_problems

        return reasoning_problems(ReasoningConfig(**task.reasoning), split)
    from asympo.data import load_problems
    from asympo.data.templates import chat_template_with

    fields = task.fields or None
    kwargs = getattr(task, "chat_template_kwargs", None)
    template = chat_template_with(tokenizer, kwargs) if kwargs else task.template
    return load_problems(task.name, split, fields=fields, template=template, tokenizer=tokenizer)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples with c correct
    (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # Product form avoids huge binomials: C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i).
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [k for k in (2**i for i in range(n.bit_length())) if k <= n]
    return sorted(set(ks) | {n})


def evaluate(
    engine: Engine,
    problems: Sequence[Problem],
    reward_fn: Callable[[str, str], float],
    n: int = 1,
    sampling: SamplingParams | None = None,
    batch_size: int = 64,
    ks: Sequence[int] | None = None,
    threshold: float = 1.0,
    scorer: Callable[[list[str], list[str]], list[float]] | None = None,
) -> dict:
    """Sample n completions per problem and grade them with `reward_fn(completion, reference)`.

    A sample counts as correct when its reward is >= `threshold`. Returns
    `{"pass@1", "pass@k" for k in ks, "reward/mean", "n_problems", "n", "finish/length"}` where pass@1 is
    the mean correctness over all samples and pass@k the mean over problems of the unbiased estimator.
    `sampling` defaults to temperature 1.0 with the engine defaults otherwise; `batch_size` is in
    problems per `generate` call. `scorer(completions, references) -> rewards`, if given, grades each batch
    at once instead of `reward_fn` one by one (e.g. `RewardPool.score`, which enforces timeouts).
    """
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ks = default_ks(n) if ks is None else sorted(set(ks))
    if any(not 1 <= k <= n for k in ks):
        raise ValueError(f"every k must be in 1..n={n}, got {list(ks)}")
    sampling = sampling or SamplingParams(temperature=1.0)

    rewards: list[list[float]] = []
    truncated = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        completions = engine.generate([p.prompt for p in chunk], sampling, n=n)
        if len(completions) != len(chunk) * n:
            raise RuntimeError(
                f"engine returned {len(completions)} completions for {len(chunk)} prompts x n={n}"
            )
        references = [p.reference for p in chunk for _ in range(n)]
        texts = [c.text for c in completions]
        if scorer is not None:
            flat = [float(r) for r in scorer(texts, references)]
        else:
            flat = [float(reward_fn(t, ref)) for t, ref in zip(texts, references)]
        rewards += [flat[i * n : (i + 1) * n] for i in range(len(chunk))]
        truncated += sum(c.finish_reason == "length" for c in completions)

    correct = [sum(r >= threshold for r in group) for group in rewards]
    total = len(problems) * n
    result = {
        "pass@1": sum(correct) / total,
        "reward/mean": sum(sum(group) for group in rewards) / total,
        "n_problems": len(problems),
        "n": n,
        "finish/length": truncated / total,
    }
    for k in ks:
        if k > 1:
            result[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in correct) / len(problems)
    return result
