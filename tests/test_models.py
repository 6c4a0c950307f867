"""The character tokenizer and the tiny HF models: build, save, load offline, identical behaviour."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from asympo.models import (
    TinyModelConfig,
    build_char_tokenizer,
    build_tiny_model,
    count_parameters,
    load_tokenizer,
    save_pretrained,
)
from asympo.models.tokenizer import CHARSET, SPECIAL_TOKENS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TEXTS = ["12+34=46", "  leading and trailing  ", "multi\nline\n\n", "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./", ""]


def test_char_tokenizer_round_trip_and_specials():
    tok = build_char_tokenizer()
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARSET) == 100
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1  # one token per character
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert tok.decode([tok.convert_tokens_to_ids("7"), tok.eos_token_id], skip_special_tokens=True) == "7"
    assert tok("é")["input_ids"] == [tok.bos_token_id, tok.unk_token_id]  # outside the charset
    assert len(set(tok(CHARSET, add_special_tokens=False)["input_ids"])) == len(CHARSET)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_save_and_load_offline_gives_the_same_model_and_tokenizer(tmp_path, arch, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = build_char_tokenizer()
    cfg = TinyModelConfig(
        arch=arch, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64
    )
    model = build_tiny_model(cfg, tok)
    path = save_pretrained(model, tok, tmp_path / arch)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert loaded.config.model_type == arch
    assert loaded.generation_config.eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok("12+34=")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    loaded_tok = load_tokenizer(path)
    for text in TEXTS:
        assert loaded_tok(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded_tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    if arch == "llama":  # the default arch also loads with plain AutoTokenizer
        auto = AutoTokenizer.from_pretrained(path)
        assert all(auto(t)["input_ids"] == tok(t)["input_ids"] for t in TEXTS)


def test_default_model_size_and_determinism():
    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(), tok)
    n = count_parameters(model)
    assert 300_000 < n < 10_000_000, n  # "a few hundred thousand to a few million"
    again = build_tiny_model(TinyModelConfig(), tok)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = build_tiny_model(TinyModelConfig(init_seed=1), tok)
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)
    state = torch.random.get_rng_state()
    build_tiny_model(TinyModelConfig(), tok)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"arch": "gpt2"}, "arch"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": 30, "num_heads": 4}, "divisible"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"init_std": 0.0}, "init_std"),
        ({"max_position_embeddings": 4}, "max_position_embeddings"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TinyModelConfig(**kwargs)
