"""The one rule for a model argument (`model.path`, `asympo eval --model`, `TorchEngine.from_pretrained`):
a local Hugging Face model directory, or a hub id.

- A path that exists must be a directory with a `config.json` (what `from_pretrained` loads), or a LoRA
  adapter directory with an `adapter_config.json` (loaded merged into its base model, `asympo.lora`).
- A path that does not exist is taken as a hub id when it looks like one: `name` (`gpt2`) or `org/name`
  (`Qwen/Qwen3-0.6B`). Anything else (`./x`, `/x`, `~/x`, `a/b/c`, a Windows path) is a missing local
  directory: the error says so before any download or training starts.

`"embedded"` (the built-in tiny model) is not a path: `asympo.train.resolve_model_path` builds it first.
Imports nothing of asympo's, so engines, the CLI and training can all use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
"""`name` or `org/name`, the two forms the Hugging Face hub accepts."""


def check_model_path(path: str | os.PathLike, what: str = "model path") -> str:
    """`path` as `from_pretrained` should get it: an expanded local directory, or the hub id unchanged.

    Raises FileNotFoundError naming `what` (e.g. "model.path", "--model") and the fix: a local path that
    exists without a config.json, or one that does not exist and is not a hub id.
    """
    text = os.fspath(path)
    local = Path(text).expanduser()
    if local.exists():
        if not (local / "config.json").is_file() and not (local / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{what} {text!r} is not a Hugging Face model directory (it has no config.json) nor a LoRA "
                "adapter (adapter_config.json); give the directory that save_pretrained wrote, or a hub id "
                "such as gpt2 or Qwen/Qwen3-0.6B"
            )
        return str(local)
    if text.startswith((".", "/", "~")) or "\\" in text or not HUB_ID.match(text):
        raise FileNotFoundError(
            f"{what} {text!r} does not exist (and is not a hub id such as gpt2 or Qwen/Qwen3-0.6B)"
        )
    return text
