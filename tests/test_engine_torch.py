"""TorchEngine against slow references: per-prompt no-cache greedy decoding and a plain forward pass."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from asympo.engines.base import Completion, Engine, SamplingParams, make_engine
from asympo.engines.torch import TorchEngine, sample_next, top_p_filter
from asympo.models.tiny import TinyModelConfig, build_tiny_model, save_pretrained
from asympo.models.tokenizer import build_char_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PROMPTS = ["1+2=", "345+678=", "9-", "abc def ghi jkl"]  # different lengths -> left padding matters


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def tiny(tok, arch="qwen2", seed=0, dtype=torch.float32, init_std=0.5):
    """A random tiny model; a large init std makes its greedy output depend strongly on the input."""
    if arch == "gpt2":  # absolute position embeddings: wrong position_ids change the output
        cfg = GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=128,
            initializer_range=0.5,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg).eval().to(dtype)
    cfg = TinyModelConfig(
        arch=arch,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        init_seed=seed,
        init_std=init_std,
    )
    return build_tiny_model(cfg, tok).to(dtype)


def reference_greedy(model, tok, prompt: str, max_new: int, eos: int) -> list[int]:
    """One prompt, no padding, no cache: the full sequence goes through the model at every step."""
    ids = tok(prompt)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([ids + out]), use_cache=False).logits[0, -1]
            nxt = int(logits.argmax())
            out.append(nxt)
            if nxt == eos:
                break
    return out


def reference_logp(model, prompt_ids, response_ids, temperature) -> torch.Tensor:
    """log_softmax(logits / T)[token] of each response token from one forward pass of the whole sequence."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].double()
    logits = logits[len(prompt_ids) - 1 : -1] / (temperature if temperature > 0 else 1.0)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response_ids).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_greedy_kv_cache_equals_no_cache_reference(tok, arch):
    model = tiny(tok, arch=arch, dtype=torch.float64)  # float64: no argmax near-ties flipping by rounding
    engine = TorchEngine(model, tok)
    sampling = SamplingParams(temperature=0.0, max_new_tokens=12)
    got = engine.generate(PROMPTS, sampling)
    no_cache = TorchEngine(model, tok, use_kv_cache=False).generate(PROMPTS, sampling)
    for prompt, c, nc in zip(PROMPTS, got, no_cache):
        ref = reference_greedy(model, tok, prompt, 12, tok.eos_token_id)
        assert c.response_ids == ref
        assert nc.response_ids == ref
        assert c.prompt_ids == tok(prompt)["input_ids"]
    assert len({tuple(c.response_ids) for c in got}) == len(PROMPTS)  # the check is not vacuous


@pytest.mark.parametrize(
    ("dtype", "init_std", "atol"),
    [(torch.float32, 0.02, 1e-5), (torch.float64, 0.5, 1e-9)],  # realistic weights; sharp logits exactly
)
def test_logprobs_equal_reference_forward(tok, dtype, init_std, atol):
    model = tiny(tok, seed=1, dtype=dtype, init_std=init_std)
    engine = TorchEngine(model, tok)
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)]:
        sampling = SamplingParams(
            temperature=temperature, top_p=top_p, max_new_tokens=10, return_logprobs=True, seed=3
        )
        out = engine.generate(PROMPTS, sampling, n=2)
        for c in out:
            assert c.behavior_logp is not None and len(c.behavior_logp) == len(c.response_ids)
            ref = reference_logp(model, c.prompt_ids, c.response_ids, temperature)
            torch.testing.assert_close(
                torch.tensor(c.behavior_logp, dtype=torch.float64), ref, atol=atol, rtol=0
            )


def test_no_logprobs_unless_asked(tok):
    out = TorchEngine(tiny(tok), tok).generate(PROMPTS[:2], SamplingParams(max_new_tokens=4, seed=0))
    assert all(c.behavior_logp is None for c in out)


def make_eos_model(tok, total_len: int):
    """A real tiny model whose logits are overridden: "x" until the sequence has `total_len` real tokens
    (prompt with <bos> included), then EOS. Prompts of different lengths therefore stop at different steps.
    """
    base = tiny(tok)
    x = tok.convert_tokens_to_ids("x")

    class Forced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = base
            self.config = base.config
            self.generation_config = base.generation_config

        def forward(
            self, input_ids, attention_mask, position_ids, cache=None, use_cache=False, logits_to_keep=0
        ):
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
            )
            logits = torch.full_like(out.logits, -10.0)
            logits[..., x] = 0.0
            seen = attention_mask.sum(-1)  # [B] real tokens so far
            logits[seen >= total_len, -1, tok.eos_token_id] = 10.0
            out.logits = logits
            return out

    return Forced()


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_eos_stops_each_sequence_and_is_kept_in_response(tok, use_kv_cache):
    eos, x = tok.eos_token_id, tok.convert_tokens_to_ids("x")
    engine = TorchEngine(make_eos_model(tok, total_len=6), tok, use_kv_cache=use_kv_cache)
    # "ab" -> [bos a b]: x x x then EOS; "abcd" -> 5 tokens: x then EOS; rows finish at different steps.
    out = engine.generate(["ab", "abcd", "ab"], SamplingParams(temperature=0.0, max_new_tokens=20), n=2)
    for c in out[0:2] + out[4:6]:
        assert c.response_ids == [x, x, x, eos] and c.finish_reason == "stop" and c.text == "xxx"
    for c in out[2:4]:
        assert c.response_ids == [x, eos] and c.finish_reason == "stop" and c.text == "x"
    capped = engine.generate(["ab"], SamplingParams(temperature=0.0, max_new_tokens=2))[0]
    assert capped.response_ids == [x, x] and capped.finish_reason == "length" and capped.text == "xx"
    ignore = engine.generate(["ab"], SamplingParams(temperature=0.0, max_new_tokens=6, ignore_eos=True))[0]
    assert ignore.response_ids[:4] == [x, x, x, eos] and len(ignore.response_ids) == 6
    assert ignore.finish_reason == "length"


def test_n_samples_layout_and_seed_determinism(tok):
    engine = TorchEngine(tiny(tok), tok)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=123)
    out = engine.generate(PROMPTS, sampling, n=3)
    assert len(out) == len(PROMPTS) * 3
    for i, c in enumerate(out):
        assert isinstance(c, Completion)
        assert c.prompt_ids == tok(PROMPTS[i // 3])["input_ids"]  # prompt-major
        assert c.policy_version == 0
    # Samples of one prompt differ (8 tokens over a 100-token vocab at T=1: a collision is ~impossible).
    assert len({tuple(c.response_ids) for c in out[:3]}) == 3
    again = engine.generate(PROMPTS, sampling, n=3)
    assert [c.response_ids for c in again] == [c.response_ids for c in out]
    other = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=8, seed=124), n=3)
    assert [c.response_ids for c in other] != [c.response_ids for c in out]


def test_shared_prefill_matches_per_sample_prefill(tok):
    """Prefilling each prompt once and repeating its cache rows must equal prefilling all n rows."""
    model = tiny(tok, dtype=torch.float64)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=7, return_logprobs=True)
    shared = TorchEngine(model, tok).generate(PROMPTS, sampling, n=2)
    # n=1 over the repeated prompt list draws the same random numbers in the same row order.
    repeated = [p for p in PROMPTS for _ in range(2)]
    separate = TorchEngine(model, tok).generate(repeated, sampling, n=1)
    assert [c.response_ids for c in shared] == [c.response_ids for c in separate]
    for a, b in zip(shared, separate):
        torch.testing.assert_close(
            torch.tensor(a.behavior_logp), torch.tensor(b.behavior_logp), atol=1e-9, rtol=0
        )


def test_max_batch_size_chunks_keep_order(tok):
    model = tiny(tok, dtype=torch.float64)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    whole = TorchEngine(model, tok).generate(PROMPTS, greedy, n=2)
    chunked = TorchEngine(model, tok, max_batch_size=2).generate(PROMPTS, greedy, n=2)
    assert [c.response_ids for c in chunked] == [c.response_ids for c in whole]
    assert [c.prompt_ids for c in chunked] == [c.prompt_ids for c in whole]


def test_top_p_filter_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
    kept = top_p_filter(probs, 0.8)
    assert torch.equal(kept > 0, torch.tensor([[True, True, False, False], [False, False, True, True]]))
    assert torch.equal(
        top_p_filter(probs, 0.81) > 0, torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    )
    assert torch.equal(
        top_p_filter(probs, 0.01) > 0, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    )
    # Sampling never leaves the nucleus.
    logits = probs.log().repeat(500, 1)
    gen = torch.Generator().manual_seed(0)
    tokens, _ = sample_next(logits, SamplingParams(top_p=0.8), gen)
    assert set(tokens[::2].tolist()) == {0, 1} and set(tokens[1::2].tolist()) == {2, 3}


def test_load_weights_strict_and_versioned(tok):
    model_a, model_b = tiny(tok, seed=0), tiny(tok, seed=1)
    engine = TorchEngine(model_a, tok)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    engine.load_weights(model_b.state_dict(), version=5)
    assert engine.policy_version == 5
    out = engine.generate(PROMPTS, greedy)
    assert all(c.policy_version == 5 for c in out)
    ref = TorchEngine(model_b, tok).generate(PROMPTS, greedy)
    assert [c.response_ids for c in out] == [c.response_ids for c in ref]

    # A tied LM head may be given under either name (safetensors files keep only one).
    state = dict(tiny(tok, seed=2).state_dict())
    del state["lm_head.weight"]
    engine.load_weights(state, version=6)
    assert torch.equal(model_a.lm_head.weight, state["model.embed_tokens.weight"])

    before = {k: v.clone() for k, v in model_a.state_dict().items()}
    bad = dict(model_b.state_dict())
    bad.pop("model.norm.weight")
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing: \['model.norm.weight'\].*unexpected: \['extra.weight'\]"):
        engine.load_weights(bad, version=7)
    wrong = dict(model_b.state_dict())
    wrong["model.norm.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"shape.*model.norm.weight: got \(3,\), model has \(32,\)"):
        engine.load_weights(wrong, version=7)
    assert engine.policy_version == 6
    assert all(torch.equal(before[k], v) for k, v in model_a.state_dict().items())
    with pytest.raises(ValueError, match="version"):
        engine.load_weights(model_b.state_dict(), version=-1)


def test_load_weights_waits_for_running_generate(tok):
    """A weight swap never lands in the middle of a batch: its completions all carry the old version."""
    model = tiny(tok)
    engine = TorchEngine(model, tok)
    new_state = tiny(tok, seed=9).state_dict()
    started = threading.Event()
    original = engine._forward

    def slow_forward(*args, **kwargs):
        started.set()
        return original(*args, **kwargs)

    engine._forward = slow_forward
    result: list[Completion] = []
    t = threading.Thread(
        target=lambda: result.extend(
            engine.generate(PROMPTS, SamplingParams(max_new_tokens=30, ignore_eos=True))
        )
    )
    t.start()
    started.wait(5)
    engine.load_weights(new_state, version=1)
    t.join()
    assert all(c.policy_version == 0 for c in result) and engine.policy_version == 1


def test_from_pretrained_and_factory(tok, tmp_path):
    model = tiny(tok, dtype=torch.float64)
    save_pretrained(model, tok, tmp_path / "m")
    engine = make_engine("torch", model=str(tmp_path / "m"), require_logprobs=True)
    assert isinstance(engine, Engine) and isinstance(engine, TorchEngine)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    loaded = engine.generate(PROMPTS, greedy)
    direct = TorchEngine(model.float(), tok).generate(PROMPTS, greedy)
    assert [c.response_ids for c in loaded] == [c.response_ids for c in direct]
    in_memory = make_engine("torch", model=model, tokenizer=tok)
    assert isinstance(in_memory, TorchEngine)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TorchEngine.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        TorchEngine.from_pretrained(tmp_path)


def test_bad_inputs(tok):
    engine = TorchEngine(tiny(tok), tok)
    with pytest.raises(TypeError, match="sequence of strings"):
        engine.generate("1+1=", SamplingParams())
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        engine.generate(["1+1="], SamplingParams(), n=0)
    assert engine.generate([], SamplingParams()) == []


def test_generate_builds_no_graph_and_keeps_training_mode(tok):
    model = tiny(tok).train()
    engine = TorchEngine(model, tok)
    seen = []
    handle = model.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), m.training)))
    engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=3, seed=0))
    handle.remove()
    assert seen and all(grad is False and training is False for grad, training in seen)
    assert model.training  # restored
