"""The run configuration: one dataclass per component, composed into `TrainConfig`.

Every field has a docstring (shown by `asympo train --help-config`) and is validated in `__post_init__`.
A run is configured by a preset (`asympo/presets.py`) or a JSON file, plus `--set section.field=value`
overrides; the resolved config is written to `DIR/config.json`, which `--config` reads back.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from asympo.learner import LearnerConfig
from asympo.runtime.buffer import BufferConfig

BACKENDS = ("local", "ray")
MODES = ("async", "sync")
ENGINES = ("torch", "vllm", "openai")


@dataclass
class ModelConfig:
    """The policy to train."""

    path: str = "embedded"
    """`embedded`: the project's tiny model, warmed up by SFT on the arithmetic task (on the reasoning task
    when task.name=reasoning; cached); else a local HF model directory or a hub id (e.g. Qwen/Qwen3-0.6B;
    needs the weights available locally)."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16 for the learner's weights."""
    device: str = "cpu"
    """Device of the learner (cpu, cuda, cuda:1, ...)."""

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if not self.path:
            raise ValueError("model.path must not be empty (use 'embedded' for the built-in tiny model)")


@dataclass
class TaskConfig:
    """What the policy is trained and evaluated on."""

    name: str = "arithmetic"
    """arithmetic | reasoning (procedural word problems, built in) | gsm8k | math500 | a local .jsonl/.parquet
    file | hf:<dataset>."""
    train_split: str = "train"
    """Split trained on."""
    eval_split: str = "test"
    """Held-out split for evaluation."""
    template: str = "plain"
    """Prompt template for text datasets: plain | chat (the tokenizer's chat template)."""
    reward: str = "auto"
    """Reward function: auto (arithmetic for the arithmetic task, else math) | arithmetic | math | pkg.mod:fn."""
    fields: dict = field(default_factory=dict)
    """Field mapping for local or hub datasets, e.g. {"prompt": "question", "reference": "answer"}."""
    arithmetic: dict = field(default_factory=dict)
    """Overrides of the arithmetic task's settings (asympo.data.arithmetic.ArithmeticConfig)."""
    reasoning: dict = field(default_factory=dict)
    """Overrides of the reasoning task's settings (asympo.data.reasoning.ReasoningConfig)."""

    def __post_init__(self):
        if self.template not in ("plain", "chat"):
            raise ValueError(f"task.template must be plain or chat, got {self.template!r}")

    @property
    def reward_name(self) -> str:
        if self.reward != "auto":
            return self.reward
        return "arithmetic" if self.name == "arithmetic" else "math"


@dataclass
class RolloutConfig:
    """How responses are generated."""

    engine: str = "torch"
    """torch (any HF causal LM, CPU or GPU) | vllm (GPU, optional extra) | openai (any OpenAI-compatible server)."""
    num_workers: int = 1
    """Rollout worker processes (async mode)."""
    prompts_per_step: int = 16
    """Prompts (groups) per optimiser step."""
    group_size: int = 8
    """Responses sampled per prompt (G)."""
    temperature: float = 1.0
    """Sampling temperature (the learner uses the same one for its log-probs)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 16
    """Longest response, in tokens."""
    engine_kwargs: dict = field(default_factory=dict)
    """Extra engine arguments (e.g. {"base_url": "http://127.0.0.1:8000/v1"} for openai)."""
    reward_workers: int = 0
    """Processes that grade responses (0 = grade inline; use >= 1 for math-verify so a grader can't hang the run)."""
    reward_timeout_s: float = 5.0
    """Per-response grading timeout (with reward_workers >= 1)."""
    threads: int = 1
    """Torch threads per rollout worker process."""
    max_prompts_per_call: int = 16
    """Most prompts a worker batches into one generate call."""

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"rollout.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        for name in (
            "num_workers",
            "prompts_per_step",
            "group_size",
            "max_new_tokens",
            "threads",
            "max_prompts_per_call",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"rollout.{name} must be an int >= 1, got {v!r}")
        if self.group_size < 2:
            raise ValueError("rollout.group_size must be >= 2: group-relative advantages need two responses")
        if not self.temperature > 0:
            raise ValueError(f"rollout.temperature must be > 0 for RL sampling, got {self.temperature}")


@dataclass
class EvalConfig:
    """Held-out evaluation during and after training (pass@1 with the training reward)."""

    every: int = 25
    """Evaluate every this many steps (0 = only before and after training)."""
    limit: int = 200
    """Held-out problems used (0 = all)."""
    n: int = 4
    """Samples per problem (pass@1 is their mean accuracy; pass@n is also reported)."""
    temperature: float = 1.0
    """Sampling temperature for evaluation (0 = greedy)."""

    def __post_init__(self):
        for name in ("every", "limit"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"eval.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"eval.n must be an int >= 1, got {self.n!r}")


@dataclass
class RayConfig:
    """Where the Ray backend (backend=ray) runs its rollout actors; see docs/ray.md."""

    address: str | None = None
    """None: start a private local cluster on this machine (loopback only); "auto": the cluster this node
    joined with `ray start`; or "HOST:PORT" / "ray://HOST:10001"."""
    worker_resources: dict = field(default_factory=dict)
    """Ray resources per rollout actor, merged over the defaults ({"num_cpus": rollout.threads}, plus
    {"num_gpus": 1} for a CUDA or vLLM engine); keys: num_cpus, num_gpus, memory, resources, accelerator_type."""

    def __post_init__(self):
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise ValueError(f"ray.address must be None or a non-empty string, got {self.address!r}")
        keys = ("num_cpus", "num_gpus", "memory", "resources", "accelerator_type")
        if not isinstance(self.worker_resources, dict) or set(self.worker_resources) - set(keys):
            raise ValueError(
                f"ray.worker_resources must be a dict with keys among {', '.join(keys)}, "
                f"got {self.worker_resources!r}"
            )


@dataclass
class TrainConfig:
    """A whole training run."""

    out: str = "runs/demo"
    """Run directory: metrics.jsonl, eval.jsonl, config.json, checkpoints/, report.html."""
    steps: int = 100
    """Optimiser steps."""
    seed: int = 0
    """Seed of the data order, sampling and initialisation."""
    backend: str = "local"
    """local (threads/processes on this machine) | ray (rollout workers as Ray actors; see docs/ray.md)."""
    mode: str = "async"
    """async: rollout workers generate while the learner trains; sync: generate, then train (in one process)."""
    checkpoint_every: int = 50
    """Save a checkpoint every this many steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest)."""
    report: bool = True
    """Write report.html and plots at the end."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sft: dict = field(default_factory=dict)
    """Overrides of the embedded model's SFT warm-up (asympo.sft.SFTConfig); used with model.path=embedded."""

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.learner.needs_behavior_logp and self.rollout.engine == "openai":
            raise ValueError(
                f"objective {self.learner.objective!r} needs behavior log-probs, which the openai engine does not "
                "return; use rollout.engine=torch or vllm, or an objective that needs none (asympo, spo, naive)"
            )
        if self.learner.temperature != self.rollout.temperature:
            raise ValueError(
                f"learner.temperature ({self.learner.temperature}) must equal rollout.temperature "
                f"({self.rollout.temperature}) so the learner scores responses under the sampling distribution"
            )

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _build(cls, d, "")


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ValueError(
            f"config section {prefix.rstrip('.') or 'root'} must be a mapping, got {type(d).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        elif hint is tuple[float, float] or typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"config section {prefix.rstrip('.') or 'root'}: {e}") from e


def parse_value(text: str):
    """`--set` values: JSON or a Python literal when they parse as one, else the plain string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return text


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply `section.field=value` overrides to a config dict (nested keys with dots)."""
    d = json.loads(json.dumps(d))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.field=value")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ValueError(f"override {item!r}: {p!r} is not a config section")
            node = node[p]
        node[parts[-1]] = parse_value(raw)
    return d


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from e


def describe(cls=TrainConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, docstring) for every field, for `--help-config`."""
    docs = _field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out += describe(hint, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((prefix + f.name, repr(default), docs.get(f.name, "")))
    return out


def _field_docs(cls) -> dict[str, str]:
    """Field docstrings (the string literal right after each field) from the class source."""
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for a, b in itertools.pairwise(body):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name):
            if (
                isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs
