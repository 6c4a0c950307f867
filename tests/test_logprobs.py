"""Chunked log-probs equal the naive full log-softmax (values and gradients) within 1e-5."""

from __future__ import annotations

import pytest
import torch

from asympo.logprobs import causal_lm_logprobs, token_logprobs_from_hidden, token_logprobs_from_logits
from tests.models import tiny_qwen2


def naive(logits, tokens, temperature=1.0):
    lsm = torch.log_softmax(logits.float() / temperature, -1)
    logp = lsm.gather(-1, tokens[..., None]).squeeze(-1)
    ent = -(lsm.exp() * lsm).sum(-1)
    return logp, ent


@pytest.mark.parametrize("chunk", [1, 5, 64, 10_000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_from_logits_matches_naive(chunk, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 50, generator=g) * 4
    tokens = torch.randint(0, 50, (3, 11), generator=g)
    logp, ent = token_logprobs_from_logits(
        logits, tokens, temperature=temperature, chunk_size=chunk, with_entropy=True
    )
    ref_logp, ref_ent = naive(logits, tokens, temperature)
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [4, 33])
def test_from_hidden_matches_naive_values_and_grads(chunk):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 9, 16, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, requires_grad=True)
    bias = torch.randn(40, generator=g, requires_grad=True)
    tokens = torch.randint(0, 40, (2, 9), generator=g)
    coef = torch.randn(2, 9, generator=g)

    logp, ent = token_logprobs_from_hidden(
        hidden, weight, tokens, bias=bias, chunk_size=chunk, with_entropy=True
    )
    ((logp * coef).sum() + ent.sum()).backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    ref_logp, ref_ent = naive(torch.nn.functional.linear(hidden, weight, bias), tokens)
    ((ref_logp * coef).sum() + ref_ent.sum()).backward()
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
    for got, t in zip(grads, (hidden, weight, bias)):
        torch.testing.assert_close(got, t.grad, rtol=1e-5, atol=1e-5)


def test_no_entropy_returns_none_and_shape_errors():
    logits = torch.randn(2, 3, 7)
    tokens = torch.zeros(2, 3, dtype=torch.long)
    logp, ent = token_logprobs_from_logits(logits, tokens)
    assert ent is None and logp.shape == (2, 3)
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs_from_logits(logits, tokens[:, :2])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs_from_logits(logits, tokens, temperature=0.0)


@pytest.mark.parametrize("tie", [False, True])
def test_causal_lm_logprobs_matches_full_logits(tie):
    model = tiny_qwen2(tie=tie).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 61, (3, 10), generator=g)
    attn = torch.ones(3, 10, dtype=torch.long)
    attn[1, 7:] = 0  # right padding
    logp, ent = causal_lm_logprobs(model, ids, attn, chunk_size=7, with_entropy=True, temperature=0.9)
    logits = model(input_ids=ids, attention_mask=attn).logits
    ref_logp, ref_ent = naive(logits[:, :-1], ids[:, 1:], 0.9)
    valid = attn[:, 1:].bool()
    torch.testing.assert_close(logp[valid], ref_logp[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(ent[valid], ref_ent[valid], rtol=0, atol=1e-5)
    # gradients flow to the parameters through the checkpointed chunks
    logp[valid].sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
