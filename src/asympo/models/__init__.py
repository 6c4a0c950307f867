"""The embedded model (a character-level tokenizer and a tiny HF-architecture causal LM) and a real
byte-level BPE tokenizer with a Qwen3 chat template for testing real-model paths offline."""

from asympo.models.bpe import BPEConfig, bpe_model_dir, build_bpe_tokenizer
from asympo.models.tiny import TinyModelConfig, build_tiny_model, count_parameters, save_pretrained
from asympo.models.tokenizer import build_char_tokenizer, load_tokenizer

__all__ = [
    "BPEConfig",
    "TinyModelConfig",
    "bpe_model_dir",
    "build_bpe_tokenizer",
    "build_char_tokenizer",
    "build_tiny_model",
    "count_parameters",
    "load_tokenizer",
    "save_pretrained",
]
