"""The run configuration: one dataclass per component, composed into `TrainConfig`.

Every field has a docstring (shown by `asympo train --help-config`) and is validated in `__post_init__`.
A run is configured by a preset (`asympo/presets.py`) or a JSON file, plus `--set section.field=value`
overrides; the resolved config is written to `DIR/config.json`, which `--config` reads back.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import itertools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from asympo.engines.base import ENGINES as ENGINE_SPECS
from asympo.learner import LearnerConfig
from asympo.runtime.buffer import BufferConfig

BACKENDS = ("local", "ray")
MODES = ("async", "sync")
ENGINES = tuple(ENGINE_SPECS)  # the engine registry is the one list of names (engines import lazily)


@dataclass
class ModelConfig:
    """The policy to train."""

    path: str = "embedded"
    """`embedded`: the project's tiny model, warmed up by SFT on the arithmetic task (on the reasoning task
    when task.name=reasoning; cached); else a local HF model directory or a hub id (e.g. Qwen/Qwen3-0.6B;
    needs the weights available locally)."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16 for the rollout engine's weights; the learner keeps fp32 master weights
    (see learner.precision)."""
    device: str = "cpu"
    """Device of the learner (cpu, cuda, cuda:1, ...)."""
    trust_remote_code: bool = False
    """Run the Python code a hub model ships (HF `trust_remote_code`). Only for models whose code you
    have read: it executes with your permissions. Off by default."""
    lora: dict = field(default_factory=dict)
    """LoRA adapter (needs `asympo[lora]`), e.g. {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules":
    ["q_proj", "v_proj"]}; only the adapter is trained and checkpointed. Empty = full fine-tuning."""

    def __post_init__(self):
        if self.lora:
            from asympo.lora import LoraSettings

            LoraSettings.from_dict(self.lora)  # raises ValueError naming the bad key or value
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
    chat_template_kwargs: dict = field(default_factory=dict)
    """Extra arguments of the tokenizer's chat template with template=chat, e.g. {"enable_thinking": false}."""
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
        for name in ("name", "train_split", "eval_split", "reward"):
            if not getattr(self, name):
                raise ValueError(f"task.{name} must not be empty")
        if not isinstance(self.chat_template_kwargs, dict):
            raise ValueError(
                f"task.chat_template_kwargs must be a mapping, got {self.chat_template_kwargs!r}"
            )
        if self.chat_template_kwargs and self.template != "chat":
            raise ValueError("task.chat_template_kwargs is only used with task.template=chat")
        from asympo.data.arithmetic import ArithmeticConfig
        from asympo.data.reasoning import ReasoningConfig

        for key, cls in (("arithmetic", ArithmeticConfig), ("reasoning", ReasoningConfig)):
            given = getattr(self, key)
            built = _build(cls, given, f"task.{key}.")  # unknown keys and wrong types, named
            # Kept as the checked values (1e3 → 1000), JSON-shaped so that config.json reads back equal.
            setattr(self, key, json.loads(json.dumps({k: getattr(built, k) for k in given})))

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
    reward_batch_timeout_s: float | None = 60.0
    """Seconds grading one batch may take in all (with reward_workers >= 1; training and held-out eval).
    Responses still ungraded then score 0.0 as timeouts: hundreds of adversarial completions that each
    run to reward_timeout_s would otherwise hold a step for minutes. null: no batch deadline."""
    threads: int = 1
    """Torch threads per rollout worker process."""
    max_prompts_per_call: int = 16
    """Most prompts a worker batches into one generate call."""
    serve: bool = False
    """engine=openai only: start `asympo serve` on a free loopback port for this run and stop it at the end
    (else engine_kwargs.base_url names your own server)."""
    weight_sync: str = "asympo"
    """engine=openai only: how weights reach the server. asympo (push to `asympo serve`) | disk (write
    <out>/weights/v<N>/ and call weight_notifier) | none (frozen server; cannot train). See docs/engines.md."""
    weight_notifier: str | None = None
    """weight_sync=disk only: sglang (/update_weights_from_disk) | vllm (/collective_rpc reload_weights,
    needs VLLM_SERVER_DEV_MODE=1) | model-path (requests name the weight directory in `model`)."""
    max_restarts: int = 3
    """How often each rollout worker (process or Ray actor) is restarted after dying (its prompts are
    re-queued); one more death stops the run with the reason. 0 = never restart."""

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"rollout.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine_kwargs:  # a typo would otherwise surface as a TypeError in a rollout worker
            from asympo.engines.base import engine_options

            options = engine_options(self.engine)
            unknown = sorted(set(self.engine_kwargs) - options) if options is not None else []
            if unknown:
                close = difflib.get_close_matches(unknown[0], options, n=1, cutoff=0.6)
                raise ValueError(
                    f"rollout.engine_kwargs: unknown key(s) {', '.join(unknown)} for the {self.engine} engine"
                    + (f" (did you mean {close[0]}?)" if close else "")
                    + f"; valid: {', '.join(sorted(options))}"
                )
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
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ValueError(f"rollout.max_restarts must be an int >= 0, got {self.max_restarts!r}")
        if self.group_size < 2:
            raise ValueError("rollout.group_size must be >= 2: group-relative advantages need two responses")
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"rollout.temperature must be > 0 for RL sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if self.reward_workers < 0:
            raise ValueError(f"rollout.reward_workers must be >= 0 (0 = inline), got {self.reward_workers}")
        if not 0 < self.reward_timeout_s < math.inf:
            raise ValueError(
                f"rollout.reward_timeout_s must be a finite number > 0, got {self.reward_timeout_s}"
            )
        if self.reward_batch_timeout_s is not None and not 0 < self.reward_batch_timeout_s < math.inf:
            raise ValueError(
                "rollout.reward_batch_timeout_s must be a finite number > 0 or null (no batch deadline), "
                f"got {self.reward_batch_timeout_s}"
            )

    def check_server(self) -> None:
        """The server and weight-sync fields (`TrainConfig` calls it after the engine/objective check)."""
        from asympo.engines.weight_sync import NOTIFIERS, WEIGHT_SYNCS

        if self.weight_sync not in WEIGHT_SYNCS:
            raise ValueError(
                f"rollout.weight_sync must be one of {', '.join(WEIGHT_SYNCS)}, got {self.weight_sync!r}"
            )
        if self.weight_notifier is not None and self.weight_notifier not in NOTIFIERS:
            raise ValueError(
                f"rollout.weight_notifier must be one of {', '.join(NOTIFIERS)}, got {self.weight_notifier!r}"
            )
        if self.engine != "openai":
            if self.serve:
                raise ValueError(
                    "rollout.serve=true starts an OpenAI-compatible server; set rollout.engine=openai"
                )
            return
        if self.weight_sync == "none":
            raise ValueError(
                "rollout.weight_sync=none leaves the server's weights frozen, so training could not change what "
                "it samples; use asympo (asympo serve) or disk with a weight_notifier"
            )
        if self.weight_sync == "disk" and self.weight_notifier is None:
            raise ValueError(
                f"rollout.weight_sync=disk needs rollout.weight_notifier, one of {', '.join(NOTIFIERS)}"
            )
        if self.serve and "base_url" in self.engine_kwargs:
            raise ValueError(
                "rollout.serve=true starts its own server; drop engine_kwargs.base_url (or set serve=false)"
            )
        if not self.serve and "base_url" not in self.engine_kwargs:
            raise ValueError(
                "rollout.engine=openai needs a server: --set rollout.serve=true (start asympo serve) or "
                "engine_kwargs.base_url (e.g. http://127.0.0.1:8000/v1)"
            )
        if self.num_workers != 1:
            raise ValueError(
                "rollout.engine=openai drives one server from one worker (rollout.num_workers=1); raise "
                "engine_kwargs.concurrency for more requests in flight"
            )


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
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"eval.temperature must be >= 0 (0 = greedy), got {self.temperature}")


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
        for key in ("num_cpus", "num_gpus", "memory"):  # what Ray would refuse only as it places an actor
            value = self.worker_resources.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"ray.worker_resources.{key} must be a number >= 0, got {value!r}")
        extra = self.worker_resources.get("resources", {})
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            for k, v in extra.items()
        ):
            raise ValueError(
                f"ray.worker_resources.resources must map resource names to amounts, got {extra!r}"
            )


@dataclass
class LoggingConfig:
    """Where metrics go besides metrics.jsonl / eval.jsonl (always written; `asympo report` reads them)."""

    backends: list[str] = field(default_factory=lambda: ["jsonl"])
    """Any of jsonl, tensorboard (<out>/tensorboard/), wandb (<out>/wandb/; WANDB_MODE=offline works),
    trackio; each but jsonl is an optional extra: pip install 'asympo[tensorboard]' (or wandb, trackio)."""
    project: str = "asympo"
    """Project name for wandb and trackio."""
    run_name: str | None = None
    """Run name for wandb and trackio (None: the name of the run directory)."""

    def __post_init__(self):
        from asympo.loggers import LOGGING_BACKENDS

        unknown = [b for b in self.backends if b not in LOGGING_BACKENDS]
        if unknown:
            raise ValueError(
                f"logging.backends: unknown backend(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(LOGGING_BACKENDS)}"
            )
        if len(set(self.backends)) != len(self.backends):
            raise ValueError(f"logging.backends lists a backend twice: {self.backends}")
        if not self.project:
            raise ValueError("logging.project must not be empty")


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
    """Checkpoints kept on disk (the newest; 0 = keep all)."""
    report: bool = True
    """Write report.html and plots at the end."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sft: dict = field(default_factory=dict)
    """Overrides of the embedded model's SFT warm-up (asympo.sft.SFTConfig); used with model.path=embedded."""

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if not self.out:
            raise ValueError("out must name a run directory, got an empty string")
        for name in ("checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learner.needs_behavior_logp and self.rollout.engine == "openai":
            raise ValueError(
                f"objective {self.learner.objective!r} needs behavior log-probs, which the openai engine does not "
                "return; use rollout.engine=torch or vllm, or an objective that needs none (asympo, spo, naive)"
            )
        self.rollout.check_server()
        if self.sft:  # only then: asympo.sft imports transformers
            from asympo.sft import SFTConfig

            unknown = sorted(set(self.sft) - {f.name for f in dataclasses.fields(SFTConfig)})
            if unknown:
                raise ValueError(
                    f"unknown config key(s) {', '.join('sft.' + k for k in unknown)}; valid keys in sft: "
                    + ", ".join(f.name for f in dataclasses.fields(SFTConfig))
                )
            try:
                SFTConfig(**self.sft_settings())  # raises ValueError naming a bad value
            except TypeError as e:  # a key of sft.task its task does not have
                raise ValueError(f"sft: {e}") from e
        if self.learner.temperature != self.rollout.temperature:
            raise ValueError(
                f"learner.temperature ({self.learner.temperature}) must equal rollout.temperature "
                f"({self.rollout.temperature}) so the learner scores responses under the sampling distribution"
            )

    def sft_settings(self) -> dict:
        """The fields of the embedded model's `asympo.sft.SFTConfig`: `sft` over the task settings. The
        warm-up learns the task RL then trains on: reasoning for task.name=reasoning, else arithmetic."""
        if self.task.name == "reasoning":
            task = {**self.task.reasoning, **self.sft.get("task", {})}
            return {"task_name": "reasoning", **self.sft, "task": task}
        return {**self.sft, "task": {**self.task.arithmetic, **self.sft.get("task", {})}}

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _build(cls, d, "")


def _build(cls, d: dict, prefix: str):
    """`cls(**d)` with every value checked against the field's type hint first.

    Generic over the dataclass's hints (int, float, bool, str, X | None, dict, list, tuple, Literal and
    nested dataclasses), so a field added later is covered without code here: a wrong type is a
    ValueError naming the key and the expected type, never a TypeError from inside `__post_init__`.
    """
    if not isinstance(d, dict):
        raise ValueError(
            f"config section {prefix.rstrip('.') or 'root'} must be a mapping, got {type(d).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        keys = ", ".join(prefix + k + _suggestion(prefix, k, list(fields)) for k in unknown)
        raise ValueError(
            f"unknown config key(s) {keys}; "
            f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}"
        )
    kwargs = {name: check_type(value, hints[name], prefix + name) for name, value in d.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"config section {prefix.rstrip('.') or 'root'}: {e}") from e


def _suggestion(prefix: str, key: str, siblings: list[str]) -> str:
    """` (did you mean learner.lr?)` for a mistyped key, searched in its section and then everywhere."""
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    # A field given in the wrong section (`lr` at the top level) is found by its last component.
    everywhere = [k for k, _, _ in describe()]
    by_name = {k.rsplit(".", 1)[-1]: k for k in reversed(everywhere)}
    close = difflib.get_close_matches(key, list(by_name), n=1, cutoff=0.8)
    return f" (did you mean {by_name[close[0]]}?)" if close else ""


def _short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def type_description(hint) -> str:
    """How an error message names the type `hint` accepts: `a number (float)`, `an integer (int) or null`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [type_description(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    simple = {
        bool: "true or false (bool)",
        int: "an integer (int)",
        float: "a number (float)",
        str: "a string (str)",
        dict: "a mapping (dict)",
    }
    if hint in simple:
        return simple[hint]
    if origin is dict:
        return f"a mapping (dict) of {type_description(args[1])}" if args else "a mapping (dict)"
    if hint is list or origin is list:
        return f"a list of {type_description(args[0])}" if args else "a list"
    if hint is tuple or origin is tuple:
        if not args or args[-1] is Ellipsis:
            return f"a list of {type_description(args[0])}" if args else "a list"
        names = ", ".join(getattr(a, "__name__", str(a)) for a in args)
        return f"a list of {len(args)} values ({names})"
    return getattr(hint, "__name__", str(hint))


class _WrongType(Exception):
    pass


def check_type(value, hint, key: str):
    """`value` converted to the field type `hint` (int → float, list → tuple, dict → nested dataclass);
    ValueError `key must be <type>, got <value>` when it is not of that type."""
    try:
        return _convert(value, hint, key)
    except _WrongType:
        raise ValueError(f"{key} must be {type_description(hint)}, got {_short_repr(value)}") from None


def _convert(value, hint, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except _WrongType:
                pass
        raise _WrongType
    if origin is typing.Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise _WrongType
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _WrongType
        return _build(hint, value, key + ".")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType
    if hint is int:
        # bool is an int subclass, but `steps: true` is a mistake; 1e3 from JSON is an integer all the same.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _WrongType
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _WrongType
    if hint is str:
        if isinstance(value, str):
            return value
        raise _WrongType
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise _WrongType
        if len(args) == 2:
            return {
                check_type(k, args[0], f"{key} key"): check_type(v, args[1], f"{key}[{k!r}]")
                for k, v in value.items()
            }
        return value
    if hint is list or origin is list:
        if not isinstance(value, list | tuple):
            raise _WrongType
        return [check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if hint is tuple or origin is tuple:
        if not isinstance(value, list | tuple):
            raise _WrongType
        if not args:
            return tuple(value)
        if args[-1] is Ellipsis:
            return tuple(check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _WrongType
        return tuple(check_type(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _WrongType
    return value  # a hint this checker does not know (e.g. a Protocol): `__post_init__` validates it


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
        value = parse_value(raw)
        if not isinstance(value, str) and value is not None and _is_text_field(parts):
            value = raw  # `--set out=2024` names a directory, not the number 2024
        node[parts[-1]] = value
    return d


def _is_text_field(parts: list[str]) -> bool:
    """Whether the TrainConfig field at `parts` is typed `str` (or `str | None`)."""
    cls = TrainConfig
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        hint = hints[part]
        if i < len(parts) - 1:
            cls = hint
            continue
        return hint is str or (
            typing.get_origin(hint) in (typing.Union, types.UnionType)
            and set(typing.get_args(hint)) == {str, type(None)}
        )
    return False


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
