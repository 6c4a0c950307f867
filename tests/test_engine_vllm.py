"""VLLMEngine: what can be checked without vLLM (output mapping, sampling params, errors, weight push),
and a real GPU test when vLLM and CUDA are present."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from asympo.engines.base import ENGINES, SamplingParams, make_engine
from asympo.engines.vllm import (
    EXTENSION,
    VLLMEngine,
    VLLMWorkerExtension,
    completions_from_outputs,
    vllm_sampling_kwargs,
)


def fake_output(prompt_ids, samples):
    """A vLLM RequestOutput stand-in; samples: (index, token_ids, text, finish_reason, logps|None)."""
    outs = []
    for index, ids, text, finish, logps in samples:
        logprobs = None
        if logps is not None:  # vLLM: one {token_id: Logprob} dict per position, sampled token included
            logprobs = [
                {t: SimpleNamespace(logprob=lp, rank=1), t + 1: SimpleNamespace(logprob=-9.0)}
                for t, lp in zip(ids, logps)
            ]
        outs.append(
            SimpleNamespace(index=index, token_ids=ids, text=text, finish_reason=finish, logprobs=logprobs)
        )
    return SimpleNamespace(prompt_token_ids=prompt_ids, outputs=outs)


def test_output_mapping_order_finish_and_logprobs():
    outputs = [
        fake_output(
            [1, 5],
            [(1, [7, 2], "b", "stop", [-0.5, -0.25]), (0, [6, 6, 6], "aaa", "length", [-1.0, -2.0, -3.0])],
        ),
        fake_output([1, 9, 9], [(0, [2], "", "stop", [-0.125]), (1, [8], "c", "stop", [-4.0])]),
    ]
    got = completions_from_outputs(outputs, n=2, version=3, return_logprobs=True)
    assert [c.response_ids for c in got] == [[6, 6, 6], [7, 2], [2], [8]]  # prompt-major, samples by index
    assert [c.text for c in got] == ["aaa", "b", "", "c"]
    assert [c.finish_reason for c in got] == ["length", "stop", "stop", "stop"]
    assert [c.prompt_ids for c in got] == [[1, 5], [1, 5], [1, 9, 9], [1, 9, 9]]
    assert got[0].behavior_logp == [-1.0, -2.0, -3.0] and got[1].behavior_logp == [-0.5, -0.25]
    assert all(c.policy_version == 3 for c in got)
    no_logp = completions_from_outputs(outputs, n=2, version=3, return_logprobs=False)
    assert all(c.behavior_logp is None for c in no_logp)


def test_output_mapping_errors():
    with pytest.raises(RuntimeError, match="1 samples for a prompt, expected n=2"):
        completions_from_outputs([fake_output([1], [(0, [2], "", "stop", None)])], 2, 0, False)
    with pytest.raises(RuntimeError, match="no log-prob"):
        completions_from_outputs([fake_output([1], [(0, [2], "", "stop", None)])], 1, 0, True)
    with pytest.raises(RuntimeError, match="unfinished"):
        completions_from_outputs([fake_output([1], [(0, [2], "", None, None)])], 1, 0, False)


def test_sampling_kwargs():
    sp = SamplingParams(temperature=0.7, top_p=1.0, max_new_tokens=9, seed=5, return_logprobs=True)
    assert vllm_sampling_kwargs(sp, n=4, prompt_index=2) == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 1.0,
        "max_tokens": 9,
        "ignore_eos": False,
        "seed": 5 + 2 * 4,
        "logprobs": 0,
    }
    plain = vllm_sampling_kwargs(SamplingParams(top_p=0.9), n=1, prompt_index=0)
    assert "seed" not in plain and "logprobs" not in plain and plain["top_p"] == 0.9
    with pytest.raises(ValueError, match=r"top_p=1\.0"):
        vllm_sampling_kwargs(SamplingParams(top_p=0.9, return_logprobs=True), n=1, prompt_index=0)


class FakeLLM:
    """Records calls; generate answers with fixed outputs."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(("generate", prompts, params))
        return [
            fake_output([1], [(j, [3 + j], f"{p}{j}", "stop", [-0.5]) for j in range(p_n.n)])
            for p, p_n in zip(prompts, params)
        ]

    def collective_rpc(self, method, args=()):
        self.calls.append(("rpc", method, args))
        return [len(args[0])]

    def reset_prefix_cache(self):
        self.calls.append(("reset",))


def test_engine_with_injected_llm_generates_and_pushes_weights():
    llm = FakeLLM()
    engine = VLLMEngine(llm=llm, sampling_params_cls=SimpleNamespace)
    out = engine.generate(["a", "b"], SamplingParams(seed=1, return_logprobs=True), n=2)
    assert [c.text for c in out] == ["a0", "a1", "b0", "b1"] and all(c.policy_version == 0 for c in out)
    _, prompts, params = llm.calls[0]
    assert prompts == ["a", "b"] and [p.seed for p in params] == [1, 3] and params[0].logprobs == 0

    state = {"model.embed_tokens.weight": torch.ones(2, 2, requires_grad=True)}
    engine.load_weights(state, version=4)
    kind, method, args = llm.calls[1]
    assert (kind, method) == ("rpc", "asympo_load_weights")
    (weights,) = args
    assert [n for n, _ in weights] == ["model.embed_tokens.weight"] and not weights[0][1].requires_grad
    assert llm.calls[2] == ("reset",)  # no KV computed with old weights survives
    assert engine.policy_version == 4
    assert engine.generate(["a"], SamplingParams())[0].policy_version == 4
    with pytest.raises(ValueError, match="version"):
        engine.load_weights(state, version=-1)


def test_worker_extension_calls_model_load_weights():
    received = []

    class Model:
        def load_weights(self, weights):
            items = list(weights)
            received.extend(items)
            return {name for name, _ in items}

    worker = VLLMWorkerExtension()
    worker.model_runner = SimpleNamespace(model=Model())
    t = torch.zeros(3)
    assert worker.asympo_load_weights([("a", t), ("b", t)]) == 2
    assert [n for n, _ in received] == ["a", "b"]
    assert EXTENSION == f"{VLLMWorkerExtension.__module__}.{VLLMWorkerExtension.__qualname__}"


def test_missing_vllm_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'asympo\[vllm\]'"):
        VLLMEngine("some/model")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match=r"optional dependency 'vllm'.*pip install 'asympo\[vllm\]'"):
        make_engine("vllm", model="some/model")
    assert ENGINES["vllm"].supports_logprobs is VLLMEngine.supports_logprobs


def test_unknown_engine_kind():
    with pytest.raises(ValueError, match=r"unknown engine kind 'jax'.*\['openai', 'torch', 'vllm'\]"):
        make_engine("jax")


@pytest.mark.slow
def test_real_vllm_matches_torch_engine(tmp_path):
    """Greedy outputs and log-probs of vLLM equal the torch engine's; load_weights takes effect."""
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    from asympo.engines.torch import TorchEngine
    from asympo.models.tiny import TinyModelConfig, build_tiny_model, save_pretrained
    from asympo.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = TinyModelConfig(
        hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, init_std=0.5
    )
    save_pretrained(build_tiny_model(cfg, tok), tok, tmp_path / "m")
    engine = VLLMEngine(str(tmp_path / "m"), dtype="float32", gpu_memory_utilization=0.2, enforce_eager=True)
    reference = TorchEngine.from_pretrained(tmp_path / "m", device="cuda")
    prompts = ["12+34=", "7+8=", "hello"]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8, return_logprobs=True)
    got, ref = engine.generate(prompts, greedy), reference.generate(prompts, greedy)
    assert [c.response_ids for c in got] == [c.response_ids for c in ref]
    for a, b in zip(got, ref):
        torch.testing.assert_close(
            torch.tensor(a.behavior_logp), torch.tensor(b.behavior_logp), atol=2e-3, rtol=0
        )
    sampled = engine.generate(
        prompts, SamplingParams(temperature=0.8, max_new_tokens=8, return_logprobs=True, seed=0), n=2
    )
    for c in sampled:  # the convention: log_softmax(logits / T), checked against a plain forward pass
        ids = torch.tensor([c.prompt_ids + c.response_ids], device="cuda")
        with torch.no_grad():
            logits = reference.model(input_ids=ids).logits[0, len(c.prompt_ids) - 1 : -1].float() / 0.8
        lp = torch.log_softmax(logits, -1).gather(-1, ids[0, len(c.prompt_ids) :, None]).squeeze(-1).cpu()
        torch.testing.assert_close(torch.tensor(c.behavior_logp), lp, atol=2e-3, rtol=0)
    new = build_tiny_model(TinyModelConfig(**{**cfg.__dict__, "init_seed": 7}), tok)
    engine.load_weights(new.state_dict(), version=1)
    reference.load_weights(new.state_dict(), version=1)
    got, ref = engine.generate(prompts, greedy), reference.generate(prompts, greedy)
    assert [c.response_ids for c in got] == [c.response_ids for c in ref]
    assert all(c.policy_version == 1 for c in got)
