"""`asympo serve` (FastAPI app on a real loopback port) and the weight syncs that reach it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from asympo.engines.base import SamplingParams
from asympo.engines.openai import OpenAIEngine
from asympo.engines.torch import TorchEngine
from asympo.engines.weight_sync import VERSION_HEADER, WeightSyncError
from asympo.serve import ServeConfig, build_app, free_port

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=4, seed=0)


class LiveServer:
    """build_app() served by uvicorn in a thread of this process (so tests can reach its engine)."""

    def __init__(self, cfg: ServeConfig):
        import uvicorn

        self.app = build_app(cfg)
        self.engine: TorchEngine = self.app.state.server.engine
        self.uv = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=cfg.port, log_level="error"))
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.thread.start()
        self.root = f"http://127.0.0.1:{cfg.port}"
        for _ in range(200):  # wait until it listens (uvicorn sets `started`)
            if self.uv.started:
                break
            time.sleep(0.05)
        assert self.uv.started, "uvicorn did not start"

    def close(self):
        self.uv.should_exit = True
        self.thread.join(timeout=10)


def call(url: str, body=None, *, raw: bytes | None = None, headers=None, method=None):
    """(status, parsed JSON, headers) of one request; HTTP errors are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), e.headers


@pytest.fixture
def live(tiny_model_dir, tmp_path):
    (tmp_path / "weights").mkdir()
    cfg = ServeConfig(
        model=str(tiny_model_dir),
        port=free_port(),
        max_body_bytes=4096,
        max_n=4,
        max_tokens=8,
        weights_root=str(tmp_path / "weights"),
    )
    s = LiveServer(cfg)
    yield s
    s.close()


def perturbed(engine: TorchEngine, seed: int) -> dict[str, torch.Tensor]:
    """New weights, one tensor per storage (tied embeddings appear once, as `named_parameters` gives them)."""
    g = torch.Generator().manual_seed(seed)
    named = dict(engine.model.named_parameters())
    return {k: v.detach() + 0.01 * torch.randn(v.shape, generator=g) for k, v in named.items()}


def assert_serves(engine: TorchEngine, state: dict[str, torch.Tensor]) -> None:
    own = engine.model.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0)


def test_completions_report_ids_and_version(live):
    status, body, headers = call(live.root + "/health")
    assert status == 200 and body["weight_version"] == 0 and headers[VERSION_HEADER] == "0"
    status, body, _ = call(live.root + "/v1/models")
    assert body["data"][0]["id"] == "asympo"
    req = {"model": "asympo", "prompt": ["1+2=", "3+4="], "n": 3, "max_tokens": 4, "return_token_ids": True}
    status, body, headers = call(live.root + "/v1/completions", req)
    assert status == 200 and len(body["choices"]) == 6 and headers[VERSION_HEADER] == "0"
    for c in body["choices"]:
        assert (
            1 <= len(c["token_ids"]) <= 4
            and c["prompt_token_ids"]
            and c["finish_reason"] in ("stop", "length")
        )
    status, body, _ = call(
        live.root + "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "1+2="}], "max_tokens": 2},
    )
    assert status == 200 and isinstance(body["choices"][0]["message"]["content"], str)


@pytest.mark.parametrize(
    ("request_kwargs", "status", "needle"),
    [
        ({"raw": b'{"prompt": "1+', "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        ({"body": {"prompt": "x" * 5000}}, 413, "--max-body-bytes"),
        ({"body": {"prompt": "1+2=", "n": 5}}, 400, "--max-n"),
        ({"body": {"prompt": "1+2=", "max_tokens": 9}}, 400, "--max-tokens"),
        ({"body": {"prompt": "1+2=", "model": "gpt-4"}}, 404, "serves 'asympo'"),
        ({"body": {"prompt": "1+2=", "model": "/etc"}}, 403, "outside --weights-root"),
        ({"body": {"prompt": 3}}, 400, "'prompt' must be"),
        ({"body": {"prompt": "1+2=", "n": "2"}}, 400, "'n' must be an integer"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem_and_the_server_keeps_serving(
    live, request_kwargs, status, needle
):
    got, body, _ = call(live.root + "/v1/completions", **request_kwargs)
    assert got == status and needle in body["error"]["message"]
    ok, body, _ = call(live.root + "/v1/completions", {"prompt": "1+2=", "max_tokens": 2})
    assert ok == 200 and len(body["choices"]) == 1


def test_bearer_token(tiny_model_dir):
    s = LiveServer(ServeConfig(model=str(tiny_model_dir), port=free_port(), api_key="s3cret"))
    try:
        assert call(s.root + "/health")[0] == 200  # health is open (for readiness probes)
        status, body, _ = call(s.root + "/v1/completions", {"prompt": "1+2="})
        assert status == 401 and "bearer" in body["error"]["message"]
        engine = OpenAIEngine(s.root + "/v1", api_key="s3cret", weight_sync="asympo")
        assert len(engine.generate(["1+2="], SAMPLING, n=2)) == 2
    finally:
        s.close()


def test_asympo_push_reaches_the_server_and_samples_carry_its_version(live, tiny_model_dir):
    from asympo.models.tokenizer import load_tokenizer

    engine = OpenAIEngine(live.root + "/v1", weight_sync="asympo", tokenizer=load_tokenizer(tiny_model_dir))
    state = perturbed(live.engine, seed=1)
    engine.load_weights(state, 3)
    assert engine.policy_version == 3 and call(live.root + "/health")[1]["weight_version"] == 3
    assert_serves(live.engine, state)
    out = engine.generate(["1+2=", "3+4="], SAMPLING, n=2)
    assert [c.policy_version for c in out] == [3] * 4
    assert all(c.prompt_ids and c.response_ids for c in out)  # the server's ids


def test_a_failed_reload_mislabels_no_sample(live, monkeypatch):
    """The reload dies mid-way (the server's load raises after the request arrived): the engine keeps the
    version the server serves, and every later sample carries the server's version, not the one pushed."""
    engine = OpenAIEngine(live.root + "/v1", weight_sync="asympo", max_retries=0)
    engine.load_weights(perturbed(live.engine, 1), 1)

    def dies(state, version):
        raise RuntimeError("killed mid-reload")

    monkeypatch.setattr(live.engine, "load_weights", dies)
    with pytest.raises(WeightSyncError, match="did not confirm version 2"):
        engine.load_weights(perturbed(live.engine, 2), 2)
    assert engine.policy_version == 1 and call(live.root + "/health")[1]["weight_version"] == 1
    assert {c.policy_version for c in engine.generate(["1+2="], SAMPLING, n=3)} == {1}
    # A state that does not fit (a missing tensor) is refused before any weight changes.
    monkeypatch.undo()
    before = {k: v.clone() for k, v in live.engine.model.named_parameters()}
    bad = dict(perturbed(live.engine, 3))
    bad.pop(next(iter(bad)))
    with pytest.raises(WeightSyncError, match="HTTP 400"):
        engine.load_weights(bad, 3)
    assert_serves(live.engine, before)
    assert {c.policy_version for c in engine.generate(["1+2="], SAMPLING, n=2)} == {1}


@pytest.mark.parametrize("notifier", ["sglang", "model-path"])
def test_disk_sync_writes_versions_atomically_and_prunes(live, tiny_model_dir, tmp_path, notifier):
    engine = OpenAIEngine(
        live.root + "/v1",
        weight_sync="disk",
        weight_notifier=notifier,
        weights_dir=tmp_path / "weights",
        model_dir=tiny_model_dir,
    )
    for v in (1, 2):
        state = perturbed(live.engine, v)
        engine.load_weights(state, v)
        d = tmp_path / "weights" / f"v{v}"
        assert {"model.safetensors", "config.json", "tokenizer.json", "asympo_version.json"} <= {
            p.name for p in d.iterdir()
        }
        out = engine.generate(["1+2="], SAMPLING, n=2)
        # model-path: the request named the directory, and the server loaded it on demand
        assert [c.policy_version for c in out] == [v, v]
        assert_serves(live.engine, state)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["v2"]  # v1 pruned, no temp dirs left
