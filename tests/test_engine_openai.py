"""OpenAIEngine against a fake OpenAI-compatible server on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from asympo.engines.base import Engine, SamplingParams, make_engine
from asympo.engines.openai import OpenAIEngine, OpenAIEngineError
from asympo.models.tokenizer import build_char_tokenizer


class FakeServer:
    """Answers /v1/completions and /v1/chat/completions; can fail, stall or misbehave on demand."""

    def __init__(self):
        self.requests: list[tuple[str, dict, dict]] = []
        self.fail_next: list[int] = []  # HTTP status codes to answer with before succeeding
        self.delay_s = 0.0
        self.wrong_n = False
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((self.path, dict(self.headers), body))
                    status = server.fail_next.pop(0) if server.fail_next else 200
                if server.delay_s:
                    time.sleep(server.delay_s)
                if status != 200:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b'{"error": "overloaded"}')
                    return
                prompt = body["messages"][0]["content"] if "messages" in body else body["prompt"]
                n = body["n"] + (1 if server.wrong_n else 0)
                choices = []
                for i in reversed(range(n)):  # out of order: the engine must sort by index
                    text = f"{prompt}|{i}"
                    finish = "length" if i == 1 else "stop"
                    choice = {"index": i, "finish_reason": finish}
                    if "messages" in body:
                        choice["message"] = {"role": "assistant", "content": text}
                    else:
                        choice["text"] = text
                    choices.append(choice)
                payload = json.dumps({"id": "x", "object": "text_completion", "choices": choices}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def test_request_shape_and_n_layout(server):
    engine = OpenAIEngine(server.url + "/v1", "tiny", api_key="k3y", backoff_s=0.01)
    assert isinstance(engine, Engine)
    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=5, seed=11)
    out = engine.generate(["a", "b", "c"], sampling, n=3)
    assert [c.text for c in out] == [f"{p}|{i}" for p in "abc" for i in range(3)]  # prompt-major, by index
    assert [c.finish_reason for c in out[:3]] == ["stop", "length", "stop"]
    assert all(c.behavior_logp is None and c.prompt_ids == [] and c.response_ids == [] for c in out)
    assert all(c.policy_version == 0 for c in out)
    assert len(server.requests) == 3
    by_prompt = {body["prompt"]: (path, headers, body) for path, headers, body in server.requests}
    path, headers, body = by_prompt["b"]
    assert path == "/v1/completions"
    assert headers["Authorization"] == "Bearer k3y"
    assert body == {
        "model": "tiny",
        "prompt": "b",
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 5,
        "seed": 11 + 1 * 3,  # distinct per prompt
    }


def test_chat_endpoint_and_root_url(server):
    engine = OpenAIEngine(server.url, "tiny", chat=True)  # no /v1 given: appended
    out = engine.generate(["hi"], SamplingParams(max_new_tokens=4), n=2)
    assert [c.text for c in out] == ["hi|0", "hi|1"]
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and body["messages"] == [{"role": "user", "content": "hi"}]
    assert "Authorization" not in headers and "seed" not in body


def test_local_tokenizer_gives_ids(server):
    tok = build_char_tokenizer()
    out = OpenAIEngine(server.url, "tiny", tokenizer=tok).generate(["12+3="], SamplingParams(), n=2)
    assert out[0].prompt_ids == tok("12+3=")["input_ids"]
    assert out[0].response_ids == tok("12+3=|0", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert out[1].response_ids == tok("12+3=|1", add_special_tokens=False)["input_ids"]  # truncated: no EOS


def test_retries_5xx_then_succeeds(server):
    server.fail_next = [503, 500]
    engine = OpenAIEngine(server.url, "tiny", max_retries=2, backoff_s=0.01, concurrency=1)
    out = engine.generate(["x"], SamplingParams(), n=1)
    assert out[0].text == "x|0" and len(server.requests) == 3


def test_gives_up_after_max_retries_with_clear_error(server):
    server.fail_next = [502] * 10
    engine = OpenAIEngine(server.url, "tiny", max_retries=2, backoff_s=0.01)
    with pytest.raises(OpenAIEngineError, match=r"failed after 3 attempts; last error: HTTP 502"):
        engine.generate(["x"], SamplingParams())
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(server):
    server.fail_next = [400]
    engine = OpenAIEngine(server.url, "tiny", max_retries=3, backoff_s=0.01)
    with pytest.raises(OpenAIEngineError, match=r"HTTP 400: .*overloaded"):
        engine.generate(["x"], SamplingParams())
    assert len(server.requests) == 1


def test_timeout_is_retried_then_reported(server):
    server.delay_s = 0.5
    engine = OpenAIEngine(server.url, "tiny", timeout_s=0.1, max_retries=1, backoff_s=0.01)
    start = time.monotonic()
    with pytest.raises(
        OpenAIEngineError, match=r"failed after 2 attempts; .*no response within timeout_s=0.1s"
    ):
        engine.generate(["x"], SamplingParams())
    assert time.monotonic() - start < 2.0
    assert len(server.requests) == 2


def test_unreachable_server():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIEngine(f"http://127.0.0.1:{port}", "tiny", max_retries=0)
    with pytest.raises(OpenAIEngineError, match="cannot reach the server"):
        engine.generate(["x"], SamplingParams())


def test_wrong_number_of_choices(server):
    server.wrong_n = True
    with pytest.raises(OpenAIEngineError, match="returned 3 choices for n=2"):
        OpenAIEngine(server.url, "tiny").generate(["x"], SamplingParams(), n=2)


def test_concurrency_runs_requests_in_parallel(server):
    server.delay_s = 0.3
    engine = OpenAIEngine(server.url, "tiny", concurrency=4)
    start = time.monotonic()
    engine.generate(["a", "b", "c", "d"], SamplingParams())
    assert time.monotonic() - start < 0.3 * 3  # serial would take 1.2 s


def test_load_weights_records_version_and_calls_hook(server):
    calls = []
    engine = OpenAIEngine(server.url, "tiny", on_load_weights=lambda state, v: calls.append((dict(state), v)))
    engine.load_weights({"w": 1}, version=4)
    assert calls == [({"w": 1}, 4)] and engine.policy_version == 4
    assert engine.generate(["x"], SamplingParams())[0].policy_version == 4
    with pytest.raises(ValueError, match="version"):
        engine.load_weights({}, version=-2)


def test_logprobs_refused_before_any_request(server):
    engine = OpenAIEngine(server.url, "tiny")
    with pytest.raises(ValueError, match="no behavior log-probs"):
        engine.generate(["x"], SamplingParams(return_logprobs=True))
    assert server.requests == []
    with pytest.raises(ValueError, match=r"cannot return behavior log-probs.*\['torch', 'vllm'\]"):
        make_engine("openai", require_logprobs=True, base_url=server.url, model="tiny")
    assert isinstance(make_engine("openai", base_url=server.url, model="tiny"), OpenAIEngine)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "127.0.0.1:8000"}, "base_url"),
        ({"model": ""}, "model"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_retries": -1}, "max_retries"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_constructor_validation(kwargs, match):
    args = {"base_url": "http://127.0.0.1:1", "model": "m"} | kwargs
    with pytest.raises(ValueError, match=match):
        OpenAIEngine(**args)
