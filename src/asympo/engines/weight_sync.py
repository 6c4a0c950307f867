"""Weight sync to an inference server: how the learner's weights reach a server the openai engine samples
from, and how the engine learns which version the server serves.

One protocol, `ServerWeightSync`, chosen by name (`rollout.weight_sync`):
- `asympo` (`AsympoPush`): `POST {root}/asympo/weights` to `asympo serve`, the body the state dict as
  safetensors bytes; the server answers the version it now serves.
- `disk` (`DiskSync`): write `<weights_dir>/v<N>/` atomically (model.safetensors + the model's config and
  tokenizer files, so any server can load the directory), then tell the server through a notifier:
  - `sglang`: `POST {root}/update_weights_from_disk {"model_path", "weight_version", "flush_cache"}`
    (SGLang's `UpdateWeightFromDiskReqInput`; it answers `{"success", "message", ...}`, 400 on failure);
  - `vllm`: `POST {root}/collective_rpc {"method": "reload_weights", "kwargs": {"weights_path"}}` then
    `POST {root}/reset_prefix_cache` (both exist only with `VLLM_SERVER_DEV_MODE=1`);
  - `model-path`: no call; later requests name the directory in their `model` field (servers that load
    a model directory on demand, `asympo serve --weights-root` among them).
  Older versions are deleted once the server serves the new one (the engine sends no request while it
  syncs, so no in-flight request still names them).
- `none` (`FrozenServer`): the server's weights never change (evaluation); refuses to sync.

`push(state, version)` returns only once the server confirms it serves `version` and raises otherwise,
so the engine records a version only when it is true. Stdlib HTTP only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "NOTIFIERS",
    "WEIGHT_SYNCS",
    "AsympoPush",
    "DiskSync",
    "FrozenServer",
    "ServerWeightSync",
    "WeightSyncError",
    "make_weight_sync",
    "safetensors_bytes",
]

WEIGHT_SYNCS = ("asympo", "disk", "none")
NOTIFIERS = ("sglang", "vllm", "model-path")
VERSION_HEADER = "X-Asympo-Weight-Version"
# Files a server needs beside the weights to load a model directory (whichever the model has).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


class WeightSyncError(RuntimeError):
    """The server did not confirm that it serves the pushed weights (one line, names server and fix)."""


class ServerWeightSync(Protocol):
    """Make a server serve a state dict; return the version it confirms serving."""

    name: str

    def push(self, state: Mapping[str, Any], version: int) -> int: ...

    def request_model(self, version: int) -> str | None:
        """The `model` field requests for `version` must carry, or None for the engine's default."""
        ...


def safetensors_bytes(state: Mapping[str, Any]) -> bytes:
    """A state dict as safetensors bytes (contiguous CPU copies; tied tensors are stored once each)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()})


def _post_json(url: str, body: dict | bytes, *, api_key: str | None, timeout_s: float, headers=None):
    """POST and return (status, parsed JSON or None, raw text); never raises on an HTTP error status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/octet-stream" if isinstance(body, bytes) else "application/json"}
    h.update(headers or {})
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=h, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise WeightSyncError(f"weight sync: cannot reach {url}: {reason}") from None
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        parsed = None
    return status, parsed, text[:300]


def server_root(base_url: str) -> str:
    """`http://host:port` of an OpenAI base URL (`.../v1`): the weight routes live at the server's root."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


@dataclass
class AsympoPush:
    """Push the state dict to `asympo serve` (`POST /asympo/weights`, safetensors body)."""

    root: str
    api_key: str | None = None
    timeout_s: float = 600.0
    name: str = "asympo"

    def push(self, state: Mapping[str, Any], version: int) -> int:
        url = f"{self.root}/asympo/weights"
        status, parsed, text = _post_json(
            url,
            safetensors_bytes(state),
            api_key=self.api_key,
            timeout_s=self.timeout_s,
            headers={VERSION_HEADER: str(version)},
        )
        if status == 404:
            raise WeightSyncError(
                f"weight sync asympo: {url} does not exist (HTTP 404), so the server is not `asympo serve`; "
                "for vLLM/SGLang use rollout.weight_sync=disk with rollout.weight_notifier=vllm|sglang"
            )
        if status != 200 or not isinstance(parsed, dict) or parsed.get("version") != version:
            raise WeightSyncError(
                f"weight sync asympo: {url} did not confirm version {version} (HTTP {status}: {text})"
            )
        return version

    def request_model(self, version: int) -> str | None:
        return None


@dataclass
class FrozenServer:
    """A server whose weights never change (`rollout.weight_sync=none`): evaluation only."""

    name: str = "none"

    def push(self, state: Mapping[str, Any], version: int) -> int:
        raise WeightSyncError(
            "rollout.weight_sync=none: the server's weights are frozen, so training cannot reach them; "
            "use weight_sync=asympo (asympo serve) or weight_sync=disk with a notifier"
        )

    def request_model(self, version: int) -> str | None:
        return None


class DiskSync:
    """Write `<weights_dir>/v<N>/` atomically, tell the server (`notifier`), prune older versions."""

    def __init__(
        self,
        weights_dir: str | os.PathLike,
        model_dir: str | os.PathLike | None,
        notifier: str,
        root: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
    ):
        if notifier not in NOTIFIERS:
            raise ValueError(f"rollout.weight_notifier must be one of {NOTIFIERS}, got {notifier!r}")
        self.weights_dir = Path(weights_dir).resolve()
        self.model_dir = Path(model_dir) if model_dir else None
        self.notifier = notifier
        self.root = root
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.name = f"disk+{notifier}"
        self.last_write_s = 0.0

    def path(self, version: int) -> Path:
        return self.weights_dir / f"v{version}"

    def write(self, state: Mapping[str, Any], version: int) -> Path:
        """The directory of `version`, written through a temporary sibling and one rename (atomic)."""
        final = self.path(version)
        if final.exists():  # a re-push of the same version (a restarted worker): already complete
            return final
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=self.weights_dir))
        try:
            (tmp / "model.safetensors").write_bytes(safetensors_bytes(state))
            if self.model_dir is not None and self.model_dir.is_dir():
                for name in MODEL_FILES:
                    if (self.model_dir / name).is_file():
                        shutil.copyfile(self.model_dir / name, tmp / name)
            (tmp / "asympo_version.json").write_text(json.dumps({"version": version}))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def push(self, state: Mapping[str, Any], version: int) -> int:
        t0 = time.monotonic()
        path = self.write(state, version)
        self.last_write_s = time.monotonic() - t0
        if self.notifier == "sglang":
            self._call(
                "/update_weights_from_disk",
                {"model_path": str(path), "weight_version": str(version), "flush_cache": True},
                ok=lambda p: isinstance(p, dict) and p.get("success") is True,
            )
        elif self.notifier == "vllm":
            self._call(
                "/collective_rpc",
                {"method": "reload_weights", "kwargs": {"weights_path": str(path)}},
                ok=lambda p: True,
            )
            self._call("/reset_prefix_cache", {}, ok=lambda p: True)
        # model-path: the next request names `path`, and the server reports the version it loaded.
        self.prune(keep=version)
        return version

    def _call(self, route: str, body: dict, ok) -> None:
        url = self.root + route
        status, parsed, text = _post_json(url, body, api_key=self.api_key, timeout_s=self.timeout_s)
        if status == 404:
            hint = (
                " (start vLLM with VLLM_SERVER_DEV_MODE=1 so it exposes /collective_rpc)"
                if self.notifier == "vllm"
                else ""
            )
            raise WeightSyncError(f"weight sync {self.name}: {url} does not exist (HTTP 404){hint}")
        if status != 200 or not ok(parsed):
            raise WeightSyncError(
                f"weight sync {self.name}: {url} refused the reload (HTTP {status}: {text})"
            )

    def prune(self, keep: int) -> None:
        """Delete every version directory but `keep` (called when no request can still name them)."""
        if not self.weights_dir.is_dir():
            return
        for d in self.weights_dir.iterdir():
            if d.is_dir() and d.name.startswith("v") and d.name[1:].isdigit() and int(d.name[1:]) != keep:
                shutil.rmtree(d, ignore_errors=True)

    def request_model(self, version: int) -> str | None:
        if self.notifier != "model-path":
            return None
        # Before the first push (the initial weights, which the server loaded at start) there is no
        # directory to name: the server's own model is that version.
        path = self.path(version)
        return str(path) if path.is_dir() else None


def make_weight_sync(
    name: str,
    *,
    base_url: str,
    api_key: str | None = None,
    notifier: str | None = None,
    weights_dir: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
    timeout_s: float = 600.0,
) -> ServerWeightSync:
    """The weight sync called `name` (see the module doc) for the server at `base_url`."""
    root = server_root(base_url)
    if name == "asympo":
        return AsympoPush(root, api_key=api_key, timeout_s=timeout_s)
    if name == "none":
        return FrozenServer()
    if name == "disk":
        if weights_dir is None:
            raise ValueError("weight_sync=disk needs weights_dir (train sets it to <out>/weights)")
        if notifier is None:
            raise ValueError(f"weight_sync=disk needs a notifier, one of {NOTIFIERS}")
        return DiskSync(weights_dir, model_dir, notifier, root, api_key=api_key, timeout_s=timeout_s)
    raise ValueError(f"rollout.weight_sync must be one of {WEIGHT_SYNCS}, got {name!r}")
