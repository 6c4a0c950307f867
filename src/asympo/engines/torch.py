"""Batched sampling for any Hugging Face causal LM, with our own decoding loop over a KV cache.

The loop is the textbook one: left-pad the prompts of a batch, prefill them once (each distinct prompt
once; its cache rows are then repeated for the n samples), then decode one token per step, feeding only
the new token with `attention_mask` covering everything seen so far and explicit `position_ids` (so left
padding does not shift positions). Rows that hit any stop token (the tokenizer's EOS and every id in the
model's `generation_config.eos_token_id`, e.g. Qwen3's `<|im_end|>` and `<|endoftext|>`) are dropped from
the batch and the cache. This is the CPU default engine and the reference the others are compared with.

Context length: a prompt that does not leave room for one new token within the model's
`max_position_embeddings` is an error naming its length (shorten or filter the prompts); a prompt that
fits but leaves less room than `max_new_tokens` gets a response cut at the context end
(`finish_reason="length"`, counted by the learner in `batch/truncated`).

A LoRA model (peft) is sampled with its adapter active; a LoRA checkpoint directory (adapter files, no
config.json) is loaded by `from_pretrained` as its base model with the adapter merged in.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from asympo.engines.base import Completion, SamplingParams, check_generate_args, check_version
from asympo.modelpath import check_model_path

__all__ = ["TorchEngine", "sample_next", "top_p_filter"]


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the nucleus (smallest set with mass >= top_p).  # [B, V] -> [B, V]

    The most likely token is always kept. Not renormalised (torch.multinomial does not need it).
    """
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of strictly more likely tokens
    sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def sample_next(
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next token of every row and its behavior log-prob.  # [B, V] -> tokens [B], logp [B]

    logp follows the engine convention: log_softmax(logits / T) of the untruncated distribution
    (T = 1 for greedy decoding).
    """
    if logits.dtype != torch.float64:  # half-precision logits are upcast; float64 models keep their precision
        logits = logits.float()
    if sampling.greedy:
        tokens = logits.argmax(dim=-1)
        logprobs = torch.log_softmax(logits, dim=-1)
    else:
        logprobs = torch.log_softmax(logits / sampling.temperature, dim=-1)
        probs = top_p_filter(logprobs.exp(), sampling.top_p)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
    names |= {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
    return names[dtype]


class TorchEngine:
    """Sampler for a HF `AutoModelForCausalLM` (+ its tokenizer), on CPU or one GPU.

    `max_batch_size` caps the rows decoded together (prompts x n); larger requests run in chunks.
    `use_kv_cache=False` recomputes the whole prefix at every step (slow; for tests and benchmarks).
    Thread-safe: `load_weights` waits for a running `generate`, so every completion is produced by exactly
    the weights its `policy_version` names.
    """

    supports_logprobs = True

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_batch_size: int | None = None,
        use_kv_cache: bool = True,
        policy_version: int = 0,
    ) -> None:
        if tokenizer is None:
            raise ValueError("TorchEngine needs the model's tokenizer (tokenizer=...)")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be None or >= 1, got {max_batch_size}")
        if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
            # The inner HF model carries the injected adapter layers and keeps the HF forward signature
            # (the cache and logits_to_keep arguments), which the peft wrapper hides.
            model = model.get_base_model()
        self.model = model
        self.tokenizer = tokenizer
        self.max_context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_batch_size = max_batch_size
        self.use_kv_cache = use_kv_cache
        self._version = int(policy_version)
        self._lock = threading.Lock()
        self.device = next(model.parameters()).device
        self.eos_ids = self._find_eos_ids()
        if not self.eos_ids:
            raise ValueError("neither the tokenizer nor the model's generation config names an EOS token")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed `past_key_values` to `cache`; accept both.
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in params

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = "float32",
        tokenizer_path: str | os.PathLike | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> TorchEngine:
        """Load model and tokenizer saved in HF format (a local directory or a hub id), running a hub
        model's own code only if trust_remote_code is set. Extra keyword arguments go to `__init__`."""
        from transformers import AutoModelForCausalLM

        from asympo.lora import is_adapter_dir, load_merged
        from asympo.models.tokenizer import load_tokenizer

        path = check_model_path(path)
        tokenizer = load_tokenizer(
            tokenizer_path if tokenizer_path else path, trust_remote_code=trust_remote_code
        )
        if is_adapter_dir(path):
            model = load_merged(path, dtype=_resolve_dtype(dtype))
        else:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=_resolve_dtype(dtype), trust_remote_code=trust_remote_code
            )
        return cls(model.to(device), tokenizer, **kwargs)

    def _find_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_cfg = getattr(self.model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
        return ids

    # ------------------------------------------------------------------ Engine protocol
    @property
    def policy_version(self) -> int:
        return self._version

    @torch.no_grad()
    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Copy a full state dict into the model (strict) and set the policy version.

        Tied weights (e.g. `lm_head.weight` tied to the embeddings) may be given under either name.
        Raises ValueError naming missing, unexpected and wrongly shaped entries; the weights are left
        unchanged when it does.
        """
        check_version(version)
        own = self.model.state_dict()
        unexpected = sorted(set(state) - set(own))
        # Names that share storage are one tensor; one of them being present is enough.
        aliases: dict[int, list[str]] = {}
        for name, t in own.items():
            aliases.setdefault(t.data_ptr(), []).append(name)
        missing = sorted(
            name for names in aliases.values() if not any(n in state for n in names) for name in names
        )
        wrong_shape = sorted(
            f"{k}: got {tuple(state[k].shape)}, model has {tuple(own[k].shape)}"
            for k in set(state) & set(own)
            if tuple(state[k].shape) != tuple(own[k].shape)
        )
        if unexpected or missing or wrong_shape:
            parts = []
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape)):
                if items:
                    more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                    parts.append(f"{label}: {items[:5]}{more}")
            raise ValueError("state dict does not match the engine's model; " + "; ".join(parts))
        with self._lock:
            for name, tensor in state.items():
                own[name].copy_(tensor)
            self._version = version

    def generate(self, prompts: Sequence[str], sampling: SamplingParams, n: int = 1) -> list[Completion]:
        """Sample n completions per prompt; prompt-major order (the n samples of prompt 0 first)."""
        check_generate_args(prompts, n)
        encoded = [self._encode(p) for p in prompts]
        with self._lock, torch.no_grad():
            version = self._version
            generator = self._make_generator(sampling.seed)
            # Chunks hold whole prompts (all n samples of a prompt share one prefill).
            per_chunk = len(encoded) if self.max_batch_size is None else self.max_batch_size // n
            per_chunk = max(1, per_chunk)
            was_training = self.model.training
            self.model.eval()  # no dropout while sampling; the caller's mode is restored below
            try:
                out: list[Completion] = []
                for start in range(0, len(encoded), per_chunk):
                    chunk = encoded[start : start + per_chunk]
                    out.extend(self._generate_chunk(chunk, sampling, n, generator, version))
            finally:
                self.model.train(was_training)
        return out

    # ------------------------------------------------------------------ internals
    def _encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise TypeError(f"every prompt must be a str, got {type(prompt).__name__}")
        ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if not ids:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens; the model needs at least one")
        if self.max_context is not None and len(ids) >= self.max_context:
            head = prompt[:60] + ("..." if len(prompt) > 60 else "")
            raise ValueError(
                f"prompt {head!r} is {len(ids)} tokens, which leaves no room for a response in the model's "
                f"context of {self.max_context} (max_position_embeddings); filter or shorten long prompts, "
                "or use a model with a longer context"
            )
        return ids

    def _make_generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    def _forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        """Logits of the last position.  # [B, L] -> [B, V]"""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        if self._has_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs).logits[:, -1, :]

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # transformers 4.x takes no config
            return DynamicCache()

    def _generate_chunk(
        self,
        prompts_ids: list[list[int]],
        sampling: SamplingParams,
        n: int,
        generator: torch.Generator,
        version: int,
    ) -> list[Completion]:
        P, L = len(prompts_ids), max(len(p) for p in prompts_ids)
        ids = torch.full((P, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((P, L), dtype=torch.long)
        for i, p in enumerate(prompts_ids):  # left padding: every prompt ends at column L-1
            ids[i, L - len(p) :] = torch.tensor(p)
            mask[i, L - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [P, L]

        cache = self._new_cache() if self.use_kv_cache else None
        if cache is not None and n > 1 and hasattr(cache, "batch_repeat_interleave"):
            # Prefill each distinct prompt once, then give its n samples a copy of its cache rows.
            logits = self._forward(ids, mask, positions, cache)
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            ids, mask, positions = (t.repeat_interleave(n, dim=0) for t in (ids, mask, positions))
        else:
            ids, mask, positions = (t.repeat_interleave(n, dim=0) for t in (ids, mask, positions))
            logits = self._forward(ids, mask, positions, cache)

        B = P * n
        # Responses stop at the context end (finish_reason "length"); _encode refused prompts that fill it.
        max_new = sampling.max_new_tokens
        if self.max_context is not None:
            max_new = max(1, min(max_new, self.max_context - L))
        rows = torch.arange(B, device=self.device)  # which original row each live row is
        next_pos = positions[:, -1] + 1  # [B]
        tokens = torch.full((B, max_new), self.pad_id, dtype=torch.long, device=self.device)
        logps = torch.zeros((B, max_new), dtype=torch.float64, device=self.device)
        lengths = torch.full((B,), max_new, dtype=torch.long, device=self.device)
        stopped = torch.zeros((B,), dtype=torch.bool, device=self.device)
        eos = torch.tensor(sorted(self.eos_ids), device=self.device)

        for step in range(max_new):
            tok, lp = sample_next(logits, sampling, generator)  # [b], [b]
            tokens[rows, step] = tok
            logps[rows, step] = lp.double()
            if sampling.ignore_eos:
                done = torch.zeros_like(tok, dtype=torch.bool)
            else:
                done = torch.isin(tok, eos)
                lengths[rows[done]] = step + 1
                stopped[rows[done]] = True
            if step + 1 == max_new or bool(done.all()):
                break
            live = (~done).nonzero().squeeze(-1)
            if len(live) < len(rows):  # drop finished rows from the batch and the cache
                rows, tok, mask, ids, next_pos = rows[live], tok[live], mask[live], ids[live], next_pos[live]
                if cache is not None:
                    cache.batch_select_indices(live)
            mask = torch.cat([mask, torch.ones_like(tok).unsqueeze(-1)], dim=-1)
            if cache is not None:
                logits = self._forward(tok.unsqueeze(-1), mask, next_pos.unsqueeze(-1), cache)
            else:
                ids = torch.cat([ids, tok.unsqueeze(-1)], dim=-1)
                full_pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self._forward(ids, mask, full_pos, None)
            next_pos = next_pos + 1

        tokens, logps, lengths, stopped = tokens.cpu(), logps.cpu(), lengths.tolist(), stopped.tolist()
        completions = []
        for r in range(B):
            response = tokens[r, : lengths[r]].tolist()
            text_ids = response[:-1] if stopped[r] else response
            completions.append(
                Completion(
                    prompt_ids=list(prompts_ids[r // n]),
                    response_ids=response,
                    text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                    finish_reason="stop" if stopped[r] else "length",
                    policy_version=version,
                    behavior_logp=logps[r, : lengths[r]].tolist() if sampling.return_logprobs else None,
                )
            )
        return completions
