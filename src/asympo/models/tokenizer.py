"""A character-level tokenizer the project builds itself (no downloads), in Hugging Face format.

One token per character (newline and the 95 printable ASCII characters) plus the special tokens
`<pad>` (0), `<bos>` (1), `<eos>` (2) and `<unk>` (3). Encoding a text adds `<bos>` in front (so the model
always has a first position to attend to); the answer's end is `<eos>`. Saved with `save_pretrained`, it
loads offline with `AutoTokenizer.from_pretrained(dir)` next to a Llama config.

Caveat (transformers 5.x): `AutoTokenizer` ignores the declared tokenizer class of any *qwen2* checkpoint
and builds a byte-level `Qwen2Tokenizer` from `tokenizer.json`, which silently re-tokenises spaces. Use
`load_tokenizer(dir)`, which honours the declared class, to load a tokenizer for any model directory.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

__all__ = ["CHARSET", "SPECIAL_TOKENS", "build_char_tokenizer", "load_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# string.printable minus the whitespace we do not want as tokens (\t \r \x0b \x0c); newline stays.
CHARSET = "\n" + "".join(chr(c) for c in range(32, 127))
assert set(CHARSET) <= set(string.printable)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer: vocab size 100, `<bos>` prepended, decoding joins characters."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARSET:
        vocab[ch] = len(vocab)
    # BPE without merges splits a text into single characters; with no pre-tokenizer, spaces and
    # newlines are characters like any other.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.add_special_tokens(list(SPECIAL_TOKENS))
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    core.decoder = decoders.Fuse()  # concatenate characters; the default would join them with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=4096,
    )


_GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """Load the tokenizer of a HF model directory or hub id, running remote code only if asked.

    A tokenizer saved as a generic fast tokenizer (ours) is loaded as exactly that; anything else goes
    through `AutoTokenizer` as usual.
    """
    from transformers import AutoTokenizer

    config = Path(path).expanduser() / "tokenizer_config.json"
    if config.is_file():
        declared = json.loads(config.read_text()).get("tokenizer_class")
        if declared in _GENERIC_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(os.fspath(Path(path).expanduser()), **kwargs)
    return AutoTokenizer.from_pretrained(os.fspath(path), trust_remote_code=trust_remote_code, **kwargs)
