"""A real byte-level BPE tokenizer with a Qwen3-like chat template, trained offline on the shipped GSM8K text.

Real checkpoints (Qwen3, Llama 3) use byte-level BPE, several stop tokens and a chat template; the
character tokenizer of the embedded demo exercises none of that. This module builds a small tokenizer
that does, so the CPU tests cover the same code paths a real model takes:

- byte-level BPE (`tokenizers`), trained on the questions and answers of `asympo/data/gsm8k/train.jsonl`
  (vocabulary 1,024 by default; any text round-trips because every byte is in the alphabet);
- the special tokens of Qwen3: `<|endoftext|>` (padding, a stop token), `<|im_start|>`, `<|im_end|>`
  (end of a turn, the tokenizer's EOS), and the added tokens `<think>` / `</think>`;
- a chat template in Qwen3's format with its thinking switch: `apply_chat_template(...,
  add_generation_prompt=True, enable_thinking=False)` opens the assistant turn with an empty
  `<think>\\n\\n</think>\\n\\n` block, as Qwen3's own template does;
- `bpe_model_dir` saves a tiny random Qwen3 or Llama next to it with a `generation_config` naming both
  stop tokens (`eos_token_id=[<|im_end|>, <|endoftext|>]`).

The tokenizer is cached on disk under `${ASYMPO_CACHE:-~/.cache/asympo}/bpe/<hash>/`, keyed by a hash of
the training text, the vocabulary size and `BPE_VERSION`; building it takes about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

__all__ = [
    "BPE_VERSION",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "THINK_TOKENS",
    "BPEConfig",
    "bpe_model_dir",
    "build_bpe_tokenizer",
]

BPE_VERSION = 1
"""Bump when the code changes what a config produces, so old cache entries are not reused."""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")

# Qwen3's template, minus tools: turns in ChatML, an opened assistant turn on add_generation_prompt, and an
# empty thinking block when the caller passes enable_thinking=False (Qwen3's "non-thinking mode").
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

_GSM8K = Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl"


@dataclass
class BPEConfig:
    """What the tokenizer is trained on and how big it is."""

    vocab_size: int = 1024
    """Vocabulary size including the 256 byte tokens and the special tokens."""
    max_lines: int = 2000
    """GSM8K training lines (question + answer) the merges are learned from; fewer builds faster."""
    corpus: str = ""
    """A text file (one JSON object with question/answer per line) to train on; empty = shipped GSM8K."""

    def __post_init__(self) -> None:
        floor = 256 + len(SPECIAL_TOKENS) + len(THINK_TOKENS)
        if (
            isinstance(self.vocab_size, bool)
            or not isinstance(self.vocab_size, int)
            or self.vocab_size <= floor
        ):
            raise ValueError(
                f"BPEConfig.vocab_size must be an int > {floor} (bytes + specials), got {self.vocab_size!r}"
            )
        if not isinstance(self.max_lines, int) or self.max_lines < 1:
            raise ValueError(f"BPEConfig.max_lines must be an int >= 1, got {self.max_lines!r}")
        if self.corpus and not Path(self.corpus).is_file():
            raise FileNotFoundError(f"BPEConfig.corpus {self.corpus!r} does not exist")

    def corpus_path(self) -> Path:
        return Path(self.corpus) if self.corpus else _GSM8K


def _texts(cfg: BPEConfig) -> list[str]:
    texts = []
    with open(cfg.corpus_path()) as f:
        for i, line in enumerate(f):
            if i >= cfg.max_lines:
                break
            rec = json.loads(line)
            texts.append(f"{rec['question']}\n{rec['answer']}")
    return texts


def _cache_key(cfg: BPEConfig, texts: list[str]) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps({"version": BPE_VERSION, "vocab_size": cfg.vocab_size, "template": CHAT_TEMPLATE}).encode()
    )
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _train(cfg: BPEConfig, texts: list[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    # Byte-level with Qwen/GPT-2's regex split: spaces attach to the following word, digits split apart.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size - len(THINK_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=32768,
    )
    # Qwen3 marks <think>/</think> as added but not special: they survive skip_special_tokens in decoding.
    tok.add_tokens(list(THINK_TOKENS), special_tokens=False)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_bpe_tokenizer(
    cfg: BPEConfig | None = None, cache_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer for `cfg`, trained now or loaded from the cache (see module docstring)."""
    from asympo.sft import cache_root

    cfg = cfg or BPEConfig()
    texts = _texts(cfg)
    final = cache_root(cache_dir) / "bpe" / _cache_key(cfg, texts)
    if (final / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(os.fspath(final))
    tok = _train(cfg, texts)
    # Written to a temporary directory and renamed, so a concurrent or interrupted build is never read half-way.
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def bpe_model_dir(
    path: str | os.PathLike,
    arch: str = "qwen3",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 512,
    init_seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **model_kwargs: Any,
) -> Path:
    """Save a tiny random `arch` model ("qwen3", "llama" or "qwen2") with the BPE tokenizer at `path`.

    The saved `generation_config` stops at `<|im_end|>` and `<|endoftext|>`, as Qwen3's does. Further
    keyword arguments are `TinyModelConfig` fields.
    """
    from asympo.models.tiny import TinyModelConfig, build_tiny_model, save_pretrained

    tok = tokenizer if tokenizer is not None else build_bpe_tokenizer()
    cfg = TinyModelConfig(
        arch=arch,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=model_kwargs.pop("num_heads", 4),
        num_kv_heads=model_kwargs.pop("num_kv_heads", 2),
        intermediate_size=model_kwargs.pop("intermediate_size", 2 * hidden_size),
        max_position_embeddings=max_position_embeddings,
        init_seed=init_seed,
        **model_kwargs,
    )
    model = build_tiny_model(cfg, tok)
    stops = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.eos_token_id = stops
    model.config.eos_token_id = stops
    return save_pretrained(model, tok, path)
