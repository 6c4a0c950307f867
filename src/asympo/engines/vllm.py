"""vLLM as an engine (optional extra `asympo[vllm]`, GPU): fast sampling, behavior log-probs, live weights.

- Sampling maps to `vllm.SamplingParams(n, temperature, top_p, max_tokens, seed, logprobs=0)`. Each prompt
  gets its own seed (`seed + i * n`; vLLM gives the n children `+ j`), so no two samples share a stream.
- Log-probs: the engine asks vLLM for `logprobs_mode="processed_logprobs"`, i.e. log_softmax of the logits
  after temperature — the engine convention (see `asympo.engines.base`). vLLM's processed log-probs also
  reflect top-p renormalisation, which the convention excludes, so `return_logprobs` with `top_p < 1` is
  refused. vLLM's default mode (`raw_logprobs`, before temperature) would only agree at temperature 1.
- Weights: `load_weights` sends the state dict to every vLLM worker through `LLM.collective_rpc` and a
  worker extension (`VLLMWorkerExtension`, installed with `worker_extension_cls`), whose method calls the
  model's own `load_weights` (which knows vLLM's fused/sharded layouts); then the prefix cache is reset so
  no KV computed with old weights is reused, and the version is bumped. This is the mechanism vLLM's RLHF
  examples, TRL, verl and prime-rl build on; tensors travel by pickling/IPC, fine for the models this runs
  on one node (for very large models, use a NCCL-based sync).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from asympo.engines.base import Completion, SamplingParams, check_generate_args, check_version

__all__ = ["VLLMEngine", "VLLMWorkerExtension", "completions_from_outputs", "vllm_sampling_kwargs"]

EXTENSION = "asympo.engines.vllm.VLLMWorkerExtension"
INSTALL_HINT = "the vllm engine needs vLLM (GPU): install it with `pip install 'asympo[vllm]'`"


class VLLMWorkerExtension:
    """Methods mixed into every vLLM worker (`worker_extension_cls`); runs inside the worker process."""

    def asympo_load_weights(self, weights: list[tuple[str, Any]]) -> int:
        """Load HF-named full tensors into this worker's model (it shards and fuses them itself)."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        loaded = model.load_weights(weights=iter(weights))
        return len(loaded) if loaded is not None else len(weights)


def vllm_sampling_kwargs(sampling: SamplingParams, n: int, prompt_index: int) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one prompt."""
    if sampling.return_logprobs and sampling.top_p < 1.0:
        raise ValueError(
            "vLLM's log-probs include top-p renormalisation, which the engine convention excludes; "
            "use top_p=1.0 with return_logprobs=True"
        )
    kwargs: dict[str, Any] = {
        "n": n,
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "max_tokens": sampling.max_new_tokens,
        "ignore_eos": sampling.ignore_eos,
    }
    if sampling.seed is not None:
        kwargs["seed"] = sampling.seed + prompt_index * n
    if sampling.return_logprobs:
        kwargs["logprobs"] = 0  # only the sampled token's log-prob
    return kwargs


def _logprob_value(entry: Any) -> float:
    return float(getattr(entry, "logprob", entry))


def completions_from_outputs(
    outputs: Sequence[Any], n: int, version: int, return_logprobs: bool
) -> list[Completion]:
    """Map vLLM `RequestOutput`s (one per prompt, each with n `CompletionOutput`s) to Completions.

    vLLM's `token_ids` include the EOS token when generation stopped on it, as our convention wants.
    """
    out: list[Completion] = []
    for request in outputs:
        samples = sorted(request.outputs, key=lambda o: o.index)
        if len(samples) != n:
            raise RuntimeError(f"vLLM returned {len(samples)} samples for a prompt, expected n={n}")
        for sample in samples:
            ids = [int(t) for t in sample.token_ids]
            if sample.finish_reason is None:
                raise RuntimeError("vLLM returned an unfinished sample (finish_reason None)")
            logp = None
            if return_logprobs:
                if sample.logprobs is None or len(sample.logprobs) != len(ids):
                    raise RuntimeError("vLLM returned no log-prob for some sampled tokens")
                logp = [_logprob_value(step[tok]) for step, tok in zip(sample.logprobs, ids)]
            out.append(
                Completion(
                    prompt_ids=[int(t) for t in request.prompt_token_ids],
                    response_ids=ids,
                    text=sample.text,
                    # vLLM: "length" on max_tokens; "stop" on EOS or a stop string; "abort" never in offline use.
                    finish_reason="length" if sample.finish_reason == "length" else "stop",
                    policy_version=version,
                    behavior_logp=logp,
                )
            )
    return out


class VLLMEngine:
    """Sampler backed by an in-process `vllm.LLM`.

    `model` is a HF model directory or hub id; remaining keyword arguments go to `vllm.LLM` (e.g.
    `gpu_memory_utilization`, `tensor_parallel_size`, `max_model_len`, `enforce_eager`). Remote code is
    never trusted. `llm` takes an already-built `vllm.LLM` instead (it must have been created with
    `worker_extension_cls=EXTENSION` and `logprobs_mode="processed_logprobs"`);
    `sampling_params_cls` replaces `vllm.SamplingParams` (tests).
    """

    supports_logprobs = True

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        policy_version: int = 0,
        llm: Any = None,
        sampling_params_cls: Callable[..., Any] | None = None,
        **llm_kwargs: Any,
    ) -> None:
        if llm is None or sampling_params_cls is None:
            try:
                import vllm
            except ImportError as e:
                raise ImportError(INSTALL_HINT) from e
        if llm is None:
            if not model:
                raise ValueError("VLLMEngine needs model=<HF directory or hub id>")
            if llm_kwargs.pop("trust_remote_code", False):
                raise ValueError("trust_remote_code is not allowed (safe defaults)")
            llm_kwargs.setdefault("worker_extension_cls", EXTENSION)
            llm_kwargs.setdefault("logprobs_mode", "processed_logprobs")
            llm = vllm.LLM(
                model=str(model),
                dtype=dtype,
                seed=seed,
                gpu_memory_utilization=gpu_memory_utilization,
                trust_remote_code=False,
                **llm_kwargs,
            )
        self.llm = llm
        self._sampling_params_cls = sampling_params_cls or vllm.SamplingParams
        self._version = int(policy_version)
        self._lock = threading.Lock()

    @property
    def policy_version(self) -> int:
        return self._version

    def generate(self, prompts: Sequence[str], sampling: SamplingParams, n: int = 1) -> list[Completion]:
        check_generate_args(prompts, n)
        params = [
            self._sampling_params_cls(**vllm_sampling_kwargs(sampling, n, i)) for i in range(len(prompts))
        ]
        if not prompts:
            return []
        with self._lock:
            version = self._version
            outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return completions_from_outputs(outputs, n, version, sampling.return_logprobs)

    def load_weights(self, state: Mapping[str, Any], version: int) -> None:
        """Push a full HF-named state dict into every worker, reset the prefix cache, set the version."""
        check_version(version)
        weights = [(name, tensor.detach()) for name, tensor in state.items()]
        with self._lock:
            self.llm.collective_rpc("asympo_load_weights", args=(weights,))
            self.llm.reset_prefix_cache()
            self._version = version
