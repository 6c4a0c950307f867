"""reasoning-gym (optional extra `asympo[reasoning-gym]`): any of its procedural datasets as a task.

`reasoning_gym_problems("basic_arithmetic", size=500, seed=0)` returns `Problem`s whose reference is a
JSON document holding the dataset's name, config and seed, the entry's index, and the entry itself.
`reasoning_gym_reward` (also `get_reward("reasoning_gym")`) takes the completion's last
`<answer>...</answer>` (else its last `\\boxed{}`) and returns 1.0 only when the dataset's own
`score_answer` gives 1.0 (several give partial credit; that is 0.0 here, and so is an answer its
scorer raises on).

Which entry `score_answer` sees: JSON turns tuples into lists, and a few scorers (arc_agi, rearc) then
fail the oracle answer, so the reward regenerates the entry from (config, seed, index), which gives the
exact objects the dataset made. A few datasets (list_functions) do not regenerate the same question
for an index out of order; when the regenerated question differs, the stored entry is used.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from asympo.data.problem import Problem
from asympo.data.templates import Template, check_template, render_prompt
from asympo.rewards.math import extract_boxed

ANSWER_INSTRUCTION = (
    "Think step by step, then give your final answer between <answer> and </answer> tags, "
    "with only the answer inside them."
)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError("reasoning-gym is not installed: pip install 'asympo[reasoning-gym]'") from e
    return reasoning_gym


def dataset_names() -> list[str]:
    """Every dataset name reasoning-gym registers."""
    _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


@lru_cache(maxsize=64)
def _dataset(name: str, seed: int, size: int, config_json: str):
    return _reasoning_gym().create_dataset(name, seed=seed, size=size, **json.loads(config_json))


def reasoning_gym_problems(
    name: str,
    size: int = 500,
    seed: int = 0,
    *,
    template: Template = "plain",
    tokenizer: Any = None,
    config: dict[str, Any] | None = None,
) -> list[Problem]:
    """`size` problems of reasoning-gym dataset `name` (deterministic by `seed`), prompts via `template`.

    `config` holds the dataset's own options (e.g. {"min_terms": 2, "max_terms": 4}); it must be JSON
    data because it travels inside each reference. Train and held-out sets: use different seeds.
    """
    rg = _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise ValueError(f"unknown reasoning-gym dataset {name!r}; valid names: {sorted(DATASETS)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    check_template(template, tokenizer)
    config = dict(config or {})
    try:
        json.dumps(config)
    except TypeError as e:
        raise ValueError(f"config must be JSON data (it is stored in each reference): {e}") from None
    dataset = rg.create_dataset(name, seed=seed, size=size, **config)
    problems = []
    for index in range(size):
        entry = dataset[index]
        try:
            reference = json.dumps(
                {
                    "dataset": name,
                    "seed": seed,
                    "size": size,
                    "config": config,
                    "index": index,
                    "entry": entry,
                }
            )
        except TypeError as e:
            raise ValueError(
                f"reasoning-gym {name}[{index}] is not JSON data, so it cannot be a reference: {e}"
            ) from None
        problems.append(
            Problem(
                id=f"reasoning_gym/{name}/{seed}/{index}",
                prompt=render_prompt(entry["question"], template, tokenizer, instruction=ANSWER_INSTRUCTION),
                reference=reference,
                meta={
                    "question": entry["question"],
                    "answer": entry["answer"],
                    "metadata": entry["metadata"],
                },
            )
        )
    return problems


def extract_tagged_answer(completion: str) -> str | None:
    """The last `<answer>...</answer>` (stripped), else the last `\\boxed{}`, else None."""
    last = None
    for last in _ANSWER_TAG.finditer(completion):  # noqa: B007 - only the last match is wanted
        pass
    if last is not None:
        return last.group(1).strip()
    return extract_boxed(completion)


@lru_cache(maxsize=4096)
def _regenerated(name: str, seed: int, size: int, config_json: str, index: int) -> dict[str, Any]:
    return _dataset(name, seed, size, config_json)[index]


def reasoning_gym_reward(completion: str, reference: str) -> float:
    """1.0 when reasoning-gym's own `score_answer` gives the completion's answer a full 1.0, else 0.0."""
    try:
        ref = json.loads(reference)
        key = (ref["dataset"], int(ref["seed"]), int(ref["size"]), json.dumps(ref["config"], sort_keys=True))
        index = int(ref["index"])
        stored = ref["entry"]
        question = stored["question"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a reasoning-gym reference (see reasoning_gym_problems): {e!r}") from None
    answer = extract_tagged_answer(completion)
    if answer is None:
        return 0.0
    regenerated = _regenerated(*key, index)
    entry = regenerated if regenerated["question"] == question else stored
    try:
        score = _dataset(*key).score_answer(answer, entry)
    except Exception:
        # Some scorers raise on a malformed answer (int("abc")): that is a wrong answer, not a grader fault.
        return 0.0
    return 1.0 if score >= 1.0 else 0.0
