"""Log-probs (and entropy) of sampled tokens without materialising the [B, T, V] log-softmax.

Two routes:
- from logits `[B, T, V]` that already exist: log-softmax is taken chunk by chunk of rows, so only
  `[chunk, V]` float32 temporaries are alive at a time;
- from hidden states `[B, T, H]` and the LM head `[V, H]`: the logits themselves are computed chunk by
  chunk under activation checkpointing, so neither the logits nor the log-softmax of the whole batch is
  ever held (the backward pass recomputes each chunk).

`temperature` divides the logits first; the engines record behavior log-probs with the same convention
(log_softmax(logits / temperature)), so the two are comparable.

This module imports nothing else of asympo's.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "causal_lm_logprobs",
    "token_logprobs_from_hidden",
    "token_logprobs_from_logits",
]

DEFAULT_CHUNK = 1024  # rows (token positions) per chunk


def _chunk_stats(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """logp of `tokens` and entropy for one chunk of rows.  # [N, V], [N] -> [N], [N]"""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)  # [N]
    logp = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    if with_entropy:
        p = torch.softmax(z, dim=-1)
        ent = lse - (p * z).sum(-1)
    else:
        ent = logp.new_zeros(())
    return logp, ent


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")


def token_logprobs_from_logits(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(tokens) (and entropy) from logits.  # logits [B, T, V], tokens [B, T] -> [B, T], [B, T]|None"""
    _check_temperature(temperature)
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {list(logits.shape)} and tokens {list(tokens.shape)} disagree")
    lead = tokens.shape
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_tokens = tokens.reshape(-1)
    logps, ents = [], []
    for start in range(0, flat_tokens.numel(), chunk_size):
        sl = slice(start, start + chunk_size)
        lp, ent = _chunk_stats(flat_logits[sl], flat_tokens[sl], temperature, with_entropy)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps).view(lead) if logps else logits.new_zeros(lead, dtype=torch.float32)
    entropy = (torch.cat(ents).view(lead) if ents else torch.zeros_like(logp)) if with_entropy else None
    return logp, entropy


def token_logprobs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(tokens) (and entropy) from hidden states and the LM head, chunk by chunk.

    hidden [B, T, H], weight [V, H], bias [V] | None, tokens [B, T] -> logp [B, T], entropy [B, T] | None.
    """
    _check_temperature(temperature)
    if hidden.shape[:-1] != tokens.shape:
        raise ValueError(f"hidden {list(hidden.shape)} and tokens {list(tokens.shape)} disagree")
    lead = tokens.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_tokens = tokens.reshape(-1)

    def chunk_fn(h: torch.Tensor, tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.nn.functional.linear(h, weight, bias)  # [N, V]
        return _chunk_stats(logits, tok, temperature, with_entropy)

    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logps, ents = [], []
    for start in range(0, flat_tokens.numel(), chunk_size):
        sl = slice(start, start + chunk_size)
        if needs_grad:
            lp, ent = checkpoint(chunk_fn, flat_h[sl], flat_tokens[sl], use_reentrant=False)
        else:
            lp, ent = chunk_fn(flat_h[sl], flat_tokens[sl])
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps).view(lead) if logps else hidden.new_zeros(lead, dtype=torch.float32)
    entropy = (torch.cat(ents).view(lead) if ents else torch.zeros_like(logp)) if with_entropy else None
    return logp, entropy


def causal_lm_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of every next token under a HF causal LM.

    input_ids, attention_mask [B, L] (right-padded) -> logp [B, L-1] where logp[:, t] = log p(x_{t+1} | x_{≤t}),
    and the entropy of the same next-token distributions (or None).

    Uses the decoder's hidden states and the LM head (chunked, checkpointed) when the model exposes them
    plainly (`get_decoder()` and a linear `get_output_embeddings()`, no logit soft-capping); otherwise
    falls back to the model's full logits with the chunked log-softmax.
    """
    targets = input_ids[:, 1:]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    scale = getattr(getattr(model, "config", None), "logits_scaling", None)
    if isinstance(head, torch.nn.Linear) and decoder is not None and not softcap and not scale:
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return token_logprobs_from_hidden(
            hidden[:, :-1],
            head.weight,
            targets,
            bias=head.bias,
            temperature=temperature,
            chunk_size=chunk_size,
            with_entropy=with_entropy,
        )
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return token_logprobs_from_logits(
        logits[:, :-1], targets, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
    )
