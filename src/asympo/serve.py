"""`asympo serve`: the torch engine behind an OpenAI-compatible HTTP API, with weight updates.

Routes: `GET /health`, `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`, and for
weight sync `POST /asympo/weights` (safetensors body, `X-Asympo-Weight-Version` header) and SGLang's
`POST /update_weights_from_disk` (`{"model_path", "weight_version"}`). Every completion response carries
the `X-Asympo-Weight-Version` header: the version of the weights that generated it (the openai engine
tags its samples with it). With `--weights-root DIR` a request's `model` may name a weight directory
under DIR (`model-path` notifier), which is loaded on demand.

Safe defaults: bound to 127.0.0.1; request bodies, `n`, `max_tokens` and prompts per request are capped
(a 4xx naming the limit); an optional bearer token guards every route but `/health`; paths are only
loaded from under `--weights-root`; weights are read as safetensors (no pickle).

`ServerProcess` starts `asympo serve` as a child process on a free loopback port and stops it again
(`rollout.serve=true`); `openai_engine_kwargs` wires a training run to it.
"""
# No `from __future__ import annotations`: FastAPI reads the routes' annotations (`Request`) at runtime.

import atexit
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asympo.engines.weight_sync import VERSION_HEADER

__all__ = ["ServeConfig", "ServerProcess", "build_app", "openai_engine_kwargs", "run"]


@dataclass
class ServeConfig:
    """What `asympo serve` serves, where, and its limits."""

    model: str
    """HF model directory (or hub id available locally) to serve."""
    host: str = "127.0.0.1"
    """Interface to bind. Loopback by default: anyone who can reach the port can replace the weights."""
    port: int = 8000
    """TCP port (0 picks a free one)."""
    device: str = "cpu"
    """Torch device of the model (cpu, cuda, cuda:1, ...)."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    served_name: str = "asympo"
    """The model name clients send in `model` and `/v1/models` lists."""
    api_key: str | None = None
    """If set, every route but /health needs `Authorization: Bearer <api_key>`."""
    max_body_bytes: int = 1 << 20
    """Largest completion request body, bytes."""
    max_weights_bytes: int = 16 << 30
    """Largest body of POST /asympo/weights, bytes."""
    max_n: int = 64
    """Largest `n` (samples per prompt)."""
    max_tokens: int = 4096
    """Largest `max_tokens`."""
    max_prompts: int = 256
    """Most prompts in one /v1/completions request."""
    max_batch_size: int | None = None
    """Rows decoded together by the torch engine (None: all of a request)."""
    weights_root: str | None = None
    """Directory under which `model` fields and /update_weights_from_disk may name weight directories
    (None: neither is allowed)."""
    parent_pid: int | None = None
    """Exit when this process is gone (set by `ServerProcess`, so a killed trainer leaves no server)."""

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"serve dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"serve port must be an int in [0, 65535], got {self.port!r}")
        for name in ("max_body_bytes", "max_weights_bytes", "max_n", "max_tokens", "max_prompts"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"serve {name} must be an int >= 1, got {v!r}")
        if not self.served_name:
            raise ValueError("serve served_name must be a non-empty string")
        if self.weights_root is not None and not Path(self.weights_root).is_dir():
            raise FileNotFoundError(f"serve --weights-root {self.weights_root} is not a directory")


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _load_safetensors_dir(path: Path) -> tuple[dict, int | None]:
    """The state dict of a weight directory (all *.safetensors) and its asympo_version.json version."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise _HTTPError(400, f"{path} holds no *.safetensors file")
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    version = None
    vf = path / "asympo_version.json"
    if vf.is_file():
        version = json.loads(vf.read_text()).get("version")
    return state, version


class _Server:
    """The engine plus the bookkeeping the routes share."""

    def __init__(self, cfg: ServeConfig, engine=None):
        self.cfg = cfg
        if engine is None:
            from asympo.engines.torch import TorchEngine

            engine = TorchEngine.from_pretrained(
                cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch_size=cfg.max_batch_size
            )
        self.engine = engine
        self.loaded_dir: Path | None = None  # the weight directory last loaded by path
        self.load_lock = threading.Lock()
        self.root = Path(cfg.weights_root).resolve() if cfg.weights_root else None

    def under_root(self, path: str) -> Path:
        if self.root is None or not os.path.isabs(path):
            raise _HTTPError(
                404,
                f"model {path!r} not found; this server serves {self.cfg.served_name!r} "
                "(or, with --weights-root DIR, an absolute path to a weight directory under DIR)",
                "model_not_found",
            )
        p = Path(path).resolve()
        if p != self.root and self.root not in p.parents:
            raise _HTTPError(403, f"{path} is outside --weights-root {self.root}", "forbidden")
        if not p.is_dir():
            raise _HTTPError(404, f"weight directory {path} does not exist", "model_not_found")
        return p

    def load_dir(self, path: Path, version: int | None) -> int:
        state, file_version = _load_safetensors_dir(path)
        v = version if version is not None else file_version
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise _HTTPError(400, f"no weight version for {path}: give weight_version or asympo_version.json")
        try:
            self.engine.load_weights(state, v)  # strict; the old weights stay on a mismatch
        except ValueError as e:
            raise _HTTPError(400, f"weights in {path} do not fit the served model: {e}") from None
        self.loaded_dir = path
        return v

    def load_dir_locked(self, path: Path, version: int | None) -> int:
        with self.load_lock:
            return self.load_dir(path, version)

    def ensure_model(self, model: Any) -> None:
        if model is None or model == self.cfg.served_name:
            return
        if not isinstance(model, str):
            raise _HTTPError(400, "'model' must be a string")
        path = self.under_root(model)
        with self.load_lock:
            if path != self.loaded_dir:
                self.load_dir(path, None)


def _int_field(body: dict, name: str, default: int | None, lo: int, hi: int, limit_flag: str) -> int | None:
    v = body.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _HTTPError(400, f"'{name}' must be an integer, got {v!r}")
    if v < lo:
        raise _HTTPError(400, f"'{name}' must be >= {lo}, got {v}")
    if v > hi:
        raise _HTTPError(400, f"'{name}'={v} is above this server's limit {hi} ({limit_flag})")
    return v


def build_app(cfg: ServeConfig, engine=None):
    """The FastAPI app of `asympo serve` (an engine may be given, e.g. a tiny one in tests)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.concurrency import run_in_threadpool
        from fastapi.responses import JSONResponse
    except ImportError as e:
        raise ImportError("asympo serve needs FastAPI and uvicorn: pip install 'asympo[serve]'") from e

    from asympo.engines.base import SamplingParams

    server = _Server(cfg, engine)
    app = FastAPI(title="asympo serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    def error(e: _HTTPError) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": e.message, "type": "invalid_request_error", "code": e.code}},
            status_code=e.status,
            headers={VERSION_HEADER: str(server.engine.policy_version)},
        )

    def check_auth(request: Request) -> None:
        if cfg.api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not secrets.compare_digest(got.encode(), f"Bearer {cfg.api_key}".encode()):
            raise _HTTPError(
                401, "missing or wrong bearer token (Authorization: Bearer <api_key>)", "unauthorized"
            )

    async def read_body(request: Request, limit: int, flag: str) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _HTTPError(
                413, f"request body of {declared} bytes is above this server's limit {limit} ({flag})"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _HTTPError(413, f"request body is above this server's limit {limit} bytes ({flag})")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(request: Request) -> dict:
        raw = await read_body(request, cfg.max_body_bytes, "--max-body-bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _HTTPError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise _HTTPError(400, "request body must be a JSON object")
        return body

    def sampling_from(body: dict) -> tuple[SamplingParams, int]:
        n = _int_field(body, "n", 1, 1, cfg.max_n, "--max-n")
        max_tokens = _int_field(
            body, "max_tokens", min(16, cfg.max_tokens), 1, cfg.max_tokens, "--max-tokens"
        )
        seed = _int_field(body, "seed", None, 0, 2**63 - 1, "seed")
        temperature, top_p = body.get("temperature", 1.0), body.get("top_p", 1.0)
        try:
            sampling = SamplingParams(
                temperature=float(temperature),
                top_p=float(top_p),
                max_new_tokens=max_tokens,
                seed=seed,
                ignore_eos=bool(body.get("ignore_eos", False)),
            )
        except (TypeError, ValueError) as e:
            raise _HTTPError(400, str(e)) from None
        return sampling, n

    async def complete(prompts: list[str], body: dict, chat: bool) -> JSONResponse:
        sampling, n = sampling_from(body)
        await run_in_threadpool(server.ensure_model, body.get("model"))
        try:
            out = await run_in_threadpool(server.engine.generate, prompts, sampling, n)
        except (TypeError, ValueError) as e:
            raise _HTTPError(400, str(e)) from None
        version = out[0].policy_version
        want_ids = bool(body.get("return_token_ids", False))
        choices = []
        for i, c in enumerate(out):
            choice: dict[str, Any] = {"index": i, "finish_reason": c.finish_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": c.text}
            else:
                choice["text"] = c.text
            if want_ids:
                choice["token_ids"] = list(c.response_ids)
                choice["prompt_token_ids"] = list(c.prompt_ids)
            choices.append(choice)
        n_prompt = sum(len(out[j * n].prompt_ids) for j in range(len(prompts)))
        n_completion = sum(len(c.response_ids) for c in out)
        payload = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(8)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or cfg.served_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_completion,
                "total_tokens": n_prompt + n_completion,
            },
            "weight_version": version,
        }
        return JSONResponse(payload, headers={VERSION_HEADER: str(version)})

    def handle(fn):
        async def wrapped(request: Request):
            try:
                return await fn(request)
            except _HTTPError as e:
                return error(e)

        wrapped.__name__ = fn.__name__
        return wrapped

    @app.get("/health")
    async def health():
        v = server.engine.policy_version
        return JSONResponse(
            {"status": "ok", "model": cfg.served_name, "weight_version": v}, headers={VERSION_HEADER: str(v)}
        )

    @app.get("/v1/models")
    @handle
    async def models(request: Request):
        check_auth(request)
        return JSONResponse(
            {"object": "list", "data": [{"id": cfg.served_name, "object": "model", "owned_by": "asympo"}]}
        )

    @app.post("/v1/completions")
    @handle
    async def completions(request: Request):
        check_auth(request)
        body = await read_json(request)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise _HTTPError(400, "'prompt' must be a string or a non-empty list of strings")
        if len(prompts) > cfg.max_prompts:
            raise _HTTPError(
                400, f"{len(prompts)} prompts is above this server's limit {cfg.max_prompts} (--max-prompts)"
            )
        return await complete(prompts, body, chat=False)

    @app.post("/v1/chat/completions")
    @handle
    async def chat_completions(request: Request):
        check_auth(request)
        body = await read_json(request)
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
        ):
            raise _HTTPError(400, "'messages' must be a non-empty list of {role, content} objects")
        tok = server.engine.tokenizer
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # a tokenizer without a chat template (the embedded model): the contents, one per line
            prompt = "\n".join(m["content"] for m in messages)
        return await complete([prompt], body, chat=True)

    @app.post("/asympo/weights")
    @handle
    async def push_weights(request: Request):
        check_auth(request)
        raw_version = request.headers.get(VERSION_HEADER.lower(), "")
        if not raw_version.isdigit():
            raise _HTTPError(400, f"header {VERSION_HEADER} must be the weight version (an int >= 0)")
        raw = await read_body(request, cfg.max_weights_bytes, "--max-weights-bytes")
        from safetensors.torch import load as st_load

        try:
            state = st_load(raw)
        except Exception as e:  # safetensors raises its own error types for a corrupt body
            raise _HTTPError(400, f"body is not a safetensors state dict: {e}") from None
        try:
            await run_in_threadpool(server.engine.load_weights, state, int(raw_version))
        except ValueError as e:
            raise _HTTPError(400, str(e)) from None
        return JSONResponse({"version": int(raw_version)}, headers={VERSION_HEADER: raw_version})

    @app.post("/update_weights_from_disk")
    @handle
    async def update_weights_from_disk(request: Request):
        # SGLang's route and payload, so the `disk` sync's sglang notifier works against this server too.
        check_auth(request)
        body = await read_json(request)
        if not isinstance(body.get("model_path"), str):
            raise _HTTPError(400, "'model_path' (a string) is required")
        wv = body.get("weight_version")
        version = int(wv) if isinstance(wv, str) and wv.isdigit() else wv if isinstance(wv, int) else None
        path = server.under_root(body["model_path"])
        try:
            v = await run_in_threadpool(server.load_dir_locked, path, version)
        except _HTTPError as e:
            return JSONResponse({"success": False, "message": e.message, "num_paused_requests": 0}, 400)
        return JSONResponse(
            {"success": True, "message": f"loaded {path} as version {v}", "num_paused_requests": 0},
            headers={VERSION_HEADER: str(v)},
        )

    return app


def _watch_parent(pid: int) -> None:
    """Stop this server when the process that started it is gone (it died without closing us)."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        except PermissionError:
            pass


def run(cfg: ServeConfig) -> None:
    """Serve until interrupted (uvicorn, one process)."""
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError("asympo serve needs FastAPI and uvicorn: pip install 'asympo[serve]'") from e
    app = build_app(cfg)
    if cfg.parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(cfg.parent_pid,), daemon=True).start()
    print(
        f"asympo serve: {cfg.model} as {cfg.served_name!r} on http://{cfg.host}:{cfg.port}/v1 "
        f"(weight version {app.state.server.engine.policy_version})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------- child


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`asympo serve` as a child process on a free loopback port: `with ServerProcess(...) as url:`.

    `start()` returns the base URL (`http://127.0.0.1:PORT/v1`) once /health answers; `close()` stops the
    server (SIGTERM, then SIGKILL) and is also called at interpreter exit; the child exits by itself when
    this process dies. The child's output goes to `log_path`, whose tail is quoted when it fails to start.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        api_key: str | None = None,
        weights_root: str | None = None,
        log_path: str | os.PathLike | None = None,
        startup_timeout_s: float = 300.0,
        threads: int | None = None,
    ):
        self.model, self.device, self.dtype = model, device, dtype
        self.api_key, self.weights_root = api_key, weights_root
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.threads = threads
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    def start(self) -> str:
        require_serve_extra()  # a one-line error here, not a child that dies with a traceback in serve.log
        port = free_port()
        cmd = [sys.executable, "-m", "asympo", "serve", "--model", self.model, "--port", str(port)]
        cmd += ["--device", self.device, "--dtype", self.dtype, "--parent-pid", str(os.getpid())]
        if self.weights_root:
            cmd += ["--weights-root", str(self.weights_root)]
        env = dict(os.environ)
        if self.api_key:
            env["ASYMPO_SERVE_API_KEY"] = self.api_key  # not on the command line, where `ps` shows it
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        atexit.register(self.close)
        root = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"asympo serve exited with code {self.proc.returncode} before answering /health"
                    + self._log_tail()
                )
            try:
                with urllib.request.urlopen(root + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(
                    f"asympo serve did not answer {root}/health within {self.startup_timeout_s:.0f}s"
                    + self._log_tail()
                )
            time.sleep(0.2)
        self.url = root + "/v1"
        return self.url

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
            return f"; last lines of {self.log_path}:\n" + "\n".join(lines)
        return ""

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def openai_engine_kwargs(cfg, model_path: str, out: Path) -> tuple[dict, ServerProcess | None]:
    """The openai engine's kwargs for a training run (`cfg.rollout`), starting `asympo serve` when
    `rollout.serve` is set (the caller closes the returned `ServerProcess`)."""
    r = cfg.rollout
    kwargs = {"weight_sync": r.weight_sync, **r.engine_kwargs}
    if r.weight_sync == "disk":
        kwargs.setdefault("weight_notifier", r.weight_notifier)
        kwargs.setdefault("weights_dir", str(out / "weights"))
    server = None
    if r.serve:
        (out / "weights").mkdir(parents=True, exist_ok=True)
        server = ServerProcess(
            model_path,
            device=cfg.model.device,
            dtype=cfg.model.dtype,
            api_key=r.engine_kwargs.get("api_key"),
            weights_root=str(out / "weights"),
            log_path=out / "serve.log",
            threads=r.threads,
        )
        kwargs["base_url"] = server.start()
    return kwargs, server


def add_serve_parser(sub) -> None:
    """The `asympo serve` subcommand (added to the CLI's subparsers)."""
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible API with weight updates (needs asympo[serve])",
        description=__doc__.split("\n\n")[0],
        epilog="Set ASYMPO_SERVE_API_KEY to require `Authorization: Bearer <key>` on every route but /health "
        "(read from the environment: a key on the command line is visible to every local user).",
    )
    d = ServeConfig(model="")
    p.add_argument("--model", required=True, help="HF model directory to serve ('embedded': the demo model)")
    p.add_argument("--host", default=d.host, help="interface to bind (default loopback only)")
    p.add_argument(
        "--port", type=int, default=d.port, help=f"TCP port (0 picks a free one; default {d.port})"
    )
    p.add_argument("--device", default=d.device, help="torch device of the model: cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--dtype", default=d.dtype, choices=("float32", "bfloat16", "float16"), help="weights' dtype"
    )
    p.add_argument("--served-name", default=d.served_name, help="model name clients send")
    limits = {  # a request over one of these is refused with 400/413, naming the flag
        "--max-body-bytes": (d.max_body_bytes, "largest completion request body, bytes"),
        "--max-weights-bytes": (d.max_weights_bytes, "largest body of POST /asympo/weights, bytes"),
        "--max-n": (d.max_n, "largest n (samples per prompt)"),
        "--max-tokens": (d.max_tokens, "largest max_tokens"),
        "--max-prompts": (d.max_prompts, "most prompts in one /v1/completions request"),
    }
    for flag, (default, what) in limits.items():
        p.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    p.add_argument(
        "--max-batch-size", type=int, default=None, help="rows decoded together (default: all of a request)"
    )
    p.add_argument("--weights-root", default=None, help="allow loading weight directories under this path")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse_suppress())
    p.set_defaults(func=_cmd_serve)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


def require_serve_extra() -> None:
    """Raise ImportError naming the extra when FastAPI or uvicorn is missing: checked first, so that the
    user learns it before a model is loaded (or the embedded one warmed up)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"asympo serve needs FastAPI and uvicorn ({e}): pip install 'asympo[serve]'") from e


def _cmd_serve(args) -> int:
    require_serve_extra()
    model = args.model
    if model == "embedded":
        from asympo.config import TrainConfig
        from asympo.train import resolve_model_path

        model = resolve_model_path(TrainConfig(), progress=True)
    else:
        from asympo.modelpath import check_model_source

        model = check_model_source(model, "--model")
    cfg = ServeConfig(
        model=model,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        served_name=args.served_name,
        # From the environment only: a token on the command line is visible to every local user.
        api_key=os.environ.get("ASYMPO_SERVE_API_KEY") or None,
        max_body_bytes=args.max_body_bytes,
        max_weights_bytes=args.max_weights_bytes,
        max_n=args.max_n,
        max_tokens=args.max_tokens,
        max_prompts=args.max_prompts,
        max_batch_size=args.max_batch_size,
        weights_root=args.weights_root,
        parent_pid=args.parent_pid,
    )
    run(cfg)
    return 0
