"""Shared fixtures: tiny offline models built by the tests themselves (no hub access)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny Llama with the project's character tokenizer, saved in HF format."""
    from asympo.models.tiny import TinyModelConfig, build_tiny_model, save_pretrained
    from asympo.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    path = tmp_path_factory.mktemp("tiny_model")
    save_pretrained(build_tiny_model(cfg, tok), tok, path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: 1 intra-op thread is fastest, and far faster on a shared 2-core machine.
    Use per module: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
