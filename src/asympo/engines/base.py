"""The engine seam: what a rollout worker asks of any sampler, and the records it gets back.

An engine turns prompts into completions with the weights it currently holds, and tags every completion
with the `policy_version` of those weights. It knows nothing of learners or buffers.

Log-prob convention (all engines that return them): `behavior_logp[t]` is
`log_softmax(logits_t / temperature)[token_t]` of the model that sampled token t, with the *untruncated*
distribution, i.e. top-p filtering is not reflected. The learner computes `logp` with the same temperature
(`asympo.logprobs`), so the two are comparable and equal when the weights are equal. Greedy decoding
(`temperature == 0`) records the temperature-1 log-probs, `log_softmax(logits_t)[token_t]`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # torch is only needed for the type of `load_weights`' argument
    import torch

__all__ = [
    "ENGINES",
    "FINISH_REASONS",
    "Completion",
    "Engine",
    "EngineSpec",
    "SamplingParams",
    "check_logprobs_support",
    "engine_class",
    "engine_options",
    "make_engine",
]

FINISH_REASONS = ("stop", "length")


@dataclass
class SamplingParams:
    """How to sample one batch of completions."""

    temperature: float = 1.0
    """Softmax temperature, >= 0. 0 means greedy decoding (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability mass is >= top_p; in (0, 1]."""
    max_new_tokens: int = 256
    """Most tokens generated per completion (the EOS token included), >= 1."""
    return_logprobs: bool = False
    """Return `behavior_logp` (one log-prob per response token, see the module docstring for the convention)."""
    seed: int | None = None
    """Seed of the sampling RNG; the same seed, prompts, weights and batch give the same completions.
    None draws fresh randomness."""
    ignore_eos: bool = False
    """Keep generating after EOS until `max_new_tokens` (benchmarks only; finish_reason is then "length")."""

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float):
            raise TypeError(f"SamplingParams.temperature must be a number, got {self.temperature!r}")
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"SamplingParams.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise TypeError(f"SamplingParams.max_new_tokens must be an int, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(f"SamplingParams.seed must be None or an int >= 0, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled response to one prompt.

    `response_ids` include the EOS token when `finish_reason == "stop"` (the learner trains on it, so the
    policy learns to stop); `text` is the decoded response without special tokens. Engines that cannot
    produce token ids (a text-only server without a local tokenizer) leave both id lists empty.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finish_reason: str
    """"stop" (EOS or a server-side stop) or "length" (max_new_tokens reached)."""
    policy_version: int
    """Version of the weights that generated this response."""
    behavior_logp: list[float] | None = None
    """One log-prob per response token, only when `SamplingParams.return_logprobs` was set."""

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(
                f"Completion.finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}"
            )
        if self.behavior_logp is not None and len(self.behavior_logp) != len(self.response_ids):
            raise ValueError(
                f"Completion.behavior_logp has {len(self.behavior_logp)} entries for "
                f"{len(self.response_ids)} response tokens; it needs one per token"
            )


@runtime_checkable
class Engine(Protocol):
    """What the runtime needs from a sampler.

    `generate` returns `len(prompts) * n` completions, prompt-major: the n samples of prompt 0 first, then
    the n samples of prompt 1, ... Every completion carries the `policy_version` of the weights that made it.
    `load_weights` replaces the weights (a full state dict, names as in the HF model) and sets the version.
    """

    supports_logprobs: bool

    def generate(self, prompts: Sequence[str], sampling: SamplingParams, n: int = 1) -> list[Completion]: ...

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None: ...

    @property
    def policy_version(self) -> int: ...


@dataclass(frozen=True)
class EngineSpec:
    """Where an engine lives and what it needs, known without importing it."""

    module: str
    cls: str
    supports_logprobs: bool
    """Mirrors the class attribute, so callers can check before importing optional dependencies."""
    dependency: str | None = None
    """Top-level module of an optional dependency the engine needs."""
    extra: str | None = None
    """The pip extra of asympo that installs `dependency`."""


ENGINES: dict[str, EngineSpec] = {
    "torch": EngineSpec("asympo.engines.torch", "TorchEngine", supports_logprobs=True),
    "vllm": EngineSpec("asympo.engines.vllm", "VLLMEngine", True, dependency="vllm", extra="vllm"),
    "openai": EngineSpec("asympo.engines.openai", "OpenAIEngine", supports_logprobs=False),
}


def check_generate_args(prompts: Any, n: Any) -> None:
    """The argument checks every engine's `generate` shares (a lone string is a common slip)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")


def check_version(version: Any) -> None:
    """The policy version every engine's `load_weights` takes: an int >= 0."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be an int >= 0, got {version!r}")


def check_logprobs_support(kind: str, require_logprobs: bool) -> None:
    """ValueError when behavior log-probs are required from an engine kind that cannot return them."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine kind {kind!r}; valid kinds: {sorted(ENGINES)}")
    if require_logprobs and not ENGINES[kind].supports_logprobs:
        capable = sorted(k for k, spec in ENGINES.items() if spec.supports_logprobs)
        raise ValueError(
            f"the {kind!r} engine cannot return behavior log-probs, which the chosen objective needs; "
            f"use an objective that needs none (asympo, spo, naive) or an engine that returns them: {capable}"
        )


def engine_class(kind: str) -> type:
    """The engine class for `kind`, after checking that its optional dependency is installed."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine kind {kind!r}; valid kinds: {sorted(ENGINES)}")
    spec = ENGINES[kind]
    if spec.dependency is not None and importlib.util.find_spec(spec.dependency) is None:
        raise ImportError(
            f"the {kind!r} engine needs the optional dependency {spec.dependency!r}, which is not "
            f"installed; install it with `pip install 'asympo[{spec.extra}]'`"
        )
    return getattr(importlib.import_module(spec.module), spec.cls)


def engine_options(kind: str) -> frozenset[str] | None:
    """The keyword arguments engine `kind` accepts from `rollout.engine_kwargs`: its constructor's and, for
    an engine built by `from_pretrained` (torch), that method's. None when it accepts any: vllm hands the
    ones it does not know to `vllm.LLM`. Imports the engine's module, not its optional dependency."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine kind {kind!r}; valid kinds: {sorted(ENGINES)}")
    cls = getattr(importlib.import_module(ENGINES[kind].module), ENGINES[kind].cls)
    init = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in init):
        return None
    # The runtime builds a torch engine from the model path (`from_pretrained`), which loads the model and
    # its tokenizer: those three are not the user's to pass.
    named, runtime = list(init), {"self"}
    if kind == "torch":
        named += inspect.signature(cls.from_pretrained).parameters.values()
        runtime |= {"path", "model", "tokenizer"}
    return frozenset(p.name for p in named if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) - runtime


def make_engine(kind: str, *, require_logprobs: bool = False, **kwargs: Any) -> Engine:
    """Build an engine by name: "torch", "vllm" or "openai".

    `require_logprobs=True` checks, before anything is imported or loaded, that the engine can return
    behavior log-probs (a ValueError otherwise). The remaining keyword arguments go to the engine:
    - torch: `model` (a path or hub id, or an `nn.Module` together with `tokenizer`), `device`, `dtype`, ...
      (see `TorchEngine.from_pretrained`);
    - vllm: `model` (path or hub id) and `vllm.LLM` options (see `VLLMEngine`);
    - openai: `base_url`, `model`, `api_key`, ... (see `OpenAIEngine`).
    """
    check_logprobs_support(kind, require_logprobs)
    cls = engine_class(kind)
    if kind == "torch":
        model = kwargs.pop("model", None)
        if model is None:
            raise ValueError("make_engine('torch') needs model=<path, hub id or nn.Module>")
        if isinstance(model, str | os.PathLike):
            return cls.from_pretrained(model, **kwargs)
        return cls(model, **kwargs)
    return cls(**kwargs)
