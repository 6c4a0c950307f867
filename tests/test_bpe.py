"""Real-model paths on CPU: a byte-level BPE tokenizer with a Qwen3 chat template, tiny random Qwen3 and
Llama models, several stop tokens, padding on either side, prompts longer than the context, and a few
steps of `asympo train` on GSM8K with the chat template."""

from __future__ import annotations

import json

import pytest
import torch

from asympo.engines.base import SamplingParams
from asympo.engines.torch import TorchEngine
from asympo.learner import collate
from asympo.logprobs import causal_lm_logprobs
from asympo.models.bpe import BPEConfig, bpe_model_dir, build_bpe_tokenizer
from asympo.models.tiny import TinyModelConfig, build_tiny_model
from asympo.runtime.records import Sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GSM8K_TEXT = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"
PROMPTS = [
    "What is 2+2?",
    "Weng earns $12 an hour for babysitting. How much did she earn in 50 minutes?",
    "Hi",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_bpe_tokenizer(cache_dir=tmp_path_factory.mktemp("cache"))


def tiny(tok, arch, seed=0, max_pos=512):
    cfg = TinyModelConfig(
        arch=arch,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_pos,
        init_seed=seed,
        init_std=0.5,  # outputs depend strongly on the input, so padding mistakes show
    )
    return build_tiny_model(cfg, tok)


def chat(tok, question, **kwargs):
    return tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True, **kwargs
    )


# ---------------------------------------------------------------------------------------------- tokenizer


def test_bpe_tokenizer_is_byte_level_and_round_trips(tok):
    assert len(tok) == 1024
    ids = tok(GSM8K_TEXT)["input_ids"]
    assert len(ids) < 0.6 * len(
        GSM8K_TEXT
    )  # merges learned from GSM8K compress its text (digits stay single)
    assert tok.decode(ids) == GSM8K_TEXT
    for text in ("naïve café ∑ 日本 🙂", "  two  spaces\n\ttab", ""):  # bytes never seen in training
        assert tok.decode(tok(text)["input_ids"]) == text
        assert tok.unk_token_id is None  # byte-level: no unknown token exists
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<|endoftext|>", "<|im_end|>", None)
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        assert tok(special)["input_ids"] == [tok.convert_tokens_to_ids(special)]  # one token each
    think = tok("<think>x</think>")["input_ids"]
    assert tok.decode(think, skip_special_tokens=True) == "<think>x</think>"  # not special, as in Qwen3
    assert tok.decode(tok("<|im_start|>a<|im_end|>")["input_ids"], skip_special_tokens=True) == "a"


def test_bpe_tokenizer_is_cached_by_content(tmp_path):
    first = build_bpe_tokenizer(BPEConfig(vocab_size=400, max_lines=50), cache_dir=tmp_path)
    entries = list((tmp_path / "bpe").iterdir())
    assert len(entries) == 1 and (entries[0] / "tokenizer.json").is_file()
    again = build_bpe_tokenizer(BPEConfig(vocab_size=400, max_lines=50), cache_dir=tmp_path)
    assert again(GSM8K_TEXT)["input_ids"] == first(GSM8K_TEXT)["input_ids"]
    assert again.chat_template == first.chat_template
    build_bpe_tokenizer(BPEConfig(vocab_size=400, max_lines=60), cache_dir=tmp_path)  # other text: new entry
    assert len(list((tmp_path / "bpe").iterdir())) == 2
    with pytest.raises(ValueError, match="vocab_size must be an int > 261"):
        BPEConfig(vocab_size=100)


def test_chat_template_thinking_switch(tok):
    on = chat(tok, "What is 2+2?")
    off = chat(tok, "What is 2+2?", enable_thinking=False)
    assert on == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"


def test_task_chat_template_kwargs_reach_the_template(tok):
    from asympo.config import TaskConfig
    from asympo.data import load_problems
    from asympo.data.templates import chat_template_with, render_prompt

    assert render_prompt("Q?", "chat", tok, chat_template_kwargs={"enable_thinking": False}).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    problems = load_problems(
        "gsm8k", "test", template=chat_template_with(tok, {"enable_thinking": False}), tokenizer=tok
    )
    assert problems[0].prompt.startswith("<|im_start|>user\n") and problems[0].prompt.endswith("</think>\n\n")
    assert chat_template_with(tok, {}) == "chat"
    with pytest.raises(ValueError, match="only used with task.template=chat"):
        TaskConfig(name="gsm8k", chat_template_kwargs={"enable_thinking": False})
    with pytest.raises(ValueError, match="must be a mapping"):
        TaskConfig(name="gsm8k", template="chat", chat_template_kwargs="enable_thinking=false")


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_model_dir_loads_offline_with_its_stop_tokens(tmp_path, tok, arch, monkeypatch):
    from transformers import AutoModelForCausalLM

    from asympo.models import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = bpe_model_dir(tmp_path / arch, arch, hidden_size=32, tokenizer=tok)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch
    stops = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    assert model.generation_config.eos_token_id == stops
    loaded = load_tokenizer(path)
    prompt = chat(tok, PROMPTS[1], enable_thinking=False)
    assert loaded(prompt)["input_ids"] == tok(prompt)["input_ids"]
    assert loaded.chat_template == tok.chat_template
    engine = TorchEngine.from_pretrained(path)
    assert engine.eos_ids == set(stops)


# ---------------------------------------------------------------------------------------------- engine


def test_engine_stops_at_any_generation_config_eos(tok):
    model = tiny(tok, "qwen3")
    engine = TorchEngine(model, tok)
    prompt = chat(tok, PROMPTS[0])
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)
    free = engine.generate([prompt], greedy)[0].response_ids
    # A stop token that greedy decoding reaches at step k (and not before) must end the response there.
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    model.generation_config.eos_token_id = [tok.eos_token_id, free[k]]
    engine = TorchEngine(model, tok)
    out = engine.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=12))[0]
    assert out.response_ids == free[: k + 1] and out.finish_reason == "stop"
    assert out.text == tok.decode(free[:k], skip_special_tokens=True)  # the stop token is not in the text


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_never_changes_engine_or_learner(tok, arch, side):
    """The engine left-pads and the learner's collate right-pads by themselves; whatever side the
    tokenizer is set to, a prompt batched with longer ones decodes and scores exactly as alone."""
    model = tiny(tok, arch).eval()
    tok.padding_side = side
    try:
        engine = TorchEngine(model, tok)
        prompts = [chat(tok, q, enable_thinking=False) for q in PROMPTS]
        greedy = SamplingParams(temperature=0.0, max_new_tokens=6, return_logprobs=True, ignore_eos=True)
        batched = engine.generate(prompts, greedy)
        alone = [engine.generate([p], greedy)[0] for p in prompts]
    finally:
        tok.padding_side = "left"
    assert [c.response_ids for c in batched] == [c.response_ids for c in alone]
    samples = [Sample(c.prompt_ids, c.response_ids, c.text, 0.0, c.finish_reason, 0) for c in batched]
    ids, attn, resp_mask, _ = collate(samples, pad_id=tok.pad_token_id)
    with torch.no_grad():
        logp, _ = causal_lm_logprobs(model, ids, attn)  # [B, L-1]
    for i, c in enumerate(batched):
        got = logp[i][resp_mask[i].bool()].double()
        torch.testing.assert_close(got, torch.tensor(c.behavior_logp, dtype=torch.float64), atol=1e-4, rtol=0)


def test_prompt_longer_than_context_is_a_clear_error_and_long_responses_are_cut(tok):
    model = tiny(tok, "qwen3", max_pos=32)
    engine = TorchEngine(model, tok)
    long_prompt = " ".join(["clips"] * 40)
    with pytest.raises(
        ValueError, match=r"is \d+ tokens, which leaves no room for a response in the model's context of 32"
    ):
        engine.generate([long_prompt], SamplingParams(max_new_tokens=4))
    prompt = "Natalia sold clips."  # a handful of tokens: the response may use the rest of the 32
    n_prompt = len(tok(prompt)["input_ids"])
    out = engine.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=100, ignore_eos=True))[0]
    assert len(out.response_ids) == 32 - n_prompt and out.finish_reason == "length"


# ---------------------------------------------------------------------------------------------- train


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_asympo_train_runs_on_gsm8k_with_the_chat_template(tmp_path, tok, arch):
    from asympo.cli import main

    model_dir = bpe_model_dir(tmp_path / "model", arch, hidden_size=32, tokenizer=tok)
    out = tmp_path / "run"
    sets = [
        f"model.path={model_dir}",
        "task.name=gsm8k",
        "task.template=chat",
        'task.chat_template_kwargs={"enable_thinking": false}',
        "model.dtype=float32",
        "model.device=cpu",
        "mode=sync",
        "rollout.reward_workers=0",
        "rollout.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=8",
        "eval.limit=2",
        "eval.n=1",
        "eval.every=0",
        "checkpoint_every=0",
        "report=false",
    ]
    args = ["train", "--preset", "gsm8k", "--out", str(out), "--steps", "2"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1]
    assert all(r["batch/response_tokens"] > 0 for r in recs)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert (out / "checkpoints" / "step_00000002" / "model.safetensors").is_file()
