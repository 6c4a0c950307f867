"""The one rule for a model argument (`model.path`, `asympo eval --model`, `TorchEngine.from_pretrained`):
a local Hugging Face model directory, or a hub id.

- A path that exists must be a directory with a `config.json` (what `from_pretrained` loads), or a LoRA
  adapter directory with an `adapter_config.json` (loaded merged into its base model, `asympo.lora`).
- A path that does not exist is taken as a hub id when it looks like one: `name` (`gpt2`) or `org/name`
  (`Qwen/Qwen3-0.6B`). Anything else (`./x`, `/x`, `~/x`, `a/b/c`, a Windows path) is a missing local
  directory: the error says so before any download or training starts.

Before any work, the commands also ask `check_model_source`: a hub id must be in the local Hugging Face
cache or the hub must be reachable, so an offline machine gets one line instead of a traceback after
transformers' retries.

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


OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


def check_hub_model(repo_id: str, what: str = "model path") -> None:
    """For a hub id (what `check_model_path` returned for a path that does not exist): return when its
    config.json is in the local Hugging Face cache or the hub's host answers; else a FileNotFoundError
    naming `what` and the fixes, at once, instead of transformers' traceback after about 50 s of retries.
    Downloads nothing; a model that needs a token or does not exist is still transformers' to report."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants, try_to_load_from_cache

    for name in ("config.json", "adapter_config.json"):
        if isinstance(try_to_load_from_cache(repo_id, name), str):
            return
    fix = (
        f"download it once with a network (`hf download {repo_id}`) into this machine's Hugging Face cache "
        "(HF_HOME), or give a local model directory"
    )
    offline = any(
        os.environ.get(v, "").upper() in OFFLINE_VALUES for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if offline or getattr(constants, "HF_HUB_OFFLINE", False):
        raise FileNotFoundError(
            f"{what} {repo_id!r} is not in the local Hugging Face cache and offline mode is on: {fix}"
        )
    endpoint = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
    except OSError as e:
        raise FileNotFoundError(
            f"{what} {repo_id!r} is not in the local Hugging Face cache and {endpoint.hostname} cannot be "
            f"reached ({e}): {fix}"
        ) from e


def check_model_source(path: str | os.PathLike, what: str = "model path") -> str:
    """`check_model_path`, and for a hub id `check_hub_model` too: the commands' check of a model argument
    before any work. (Engines keep to `check_model_path`, which never touches the network.)"""
    checked = check_model_path(path, what)
    if not Path(checked).exists():
        check_hub_model(checked, what)
    return checked
