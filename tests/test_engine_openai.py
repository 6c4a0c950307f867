"""OpenAIEngine against a fake OpenAI-compatible server on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from asympo.engines.base import Engine, SamplingParams, make_engine
from asympo.engines.openai import OpenAIEngine, OpenAIEngineError
from asympo.engines.weight_sync import WeightSyncError
from asympo.models.tokenizer import build_char_tokenizer


class FakeServer:
    """Answers /v1/completions and /v1/chat/completions; can fail, stall or misbehave on demand."""

    def __init__(self):
        self.requests: list[tuple[str, dict, dict]] = []
        self.fail_next: list[int] = []  # HTTP status codes to answer with before succeeding
        self.delay_s = 0.0
        self.wrong_n = False
        self.ignore_n = False  # one choice per request, whatever n says (some real servers)
        self.token_ids = False  # answer return_token_ids as vLLM does
        self.drop_finish_reason = False
        self.raw_reply: bytes | None = None  # answer this body (status 200) instead of a completion
        self.long_text = False  # ignore max_tokens
        self.weight_calls: list[tuple[str, dict]] = []  # SGLang/vLLM weight routes, with their payloads
        self.reload_ok = True
        self.reject_token_ids = False  # answer 400 to the field, like a strict OpenAI-schema server
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw) if self.headers["Content-Type"] == "application/json" else {}
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
                if self.path in ("/update_weights_from_disk", "/collective_rpc", "/reset_prefix_cache"):
                    return self._weights(body)
                if server.reject_token_ids and "return_token_ids" in body:
                    return self._send(400, b'{"error": "Unrecognized request argument: return_token_ids"}')
                if server.raw_reply is not None:
                    return self._send(200, server.raw_reply)
                prompt = body["messages"][0]["content"] if "messages" in body else body["prompt"]
                n = 1 if server.ignore_n else body["n"] + (1 if server.wrong_n else 0)
                choices = []
                for i in reversed(range(n)):  # out of order: the engine must sort by index
                    text = f"{prompt}|{i}" + ("9" * 50 if server.long_text else "")
                    finish = "length" if i == 1 else "stop"
                    choice = {"index": i, "finish_reason": finish}
                    if server.drop_finish_reason:
                        del choice["finish_reason"]
                    if server.token_ids and body.get("return_token_ids"):
                        choice["token_ids"] = [7] * (i + 1)  # vLLM: response ids on the choice
                        choice["prompt_token_ids"] = [5, 6]
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

            def _send(self, status, payload: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _weights(self, body):
                # Mirrors SGLang's /update_weights_from_disk ({success, message, num_paused_requests},
                # 400 on failure) and vLLM's dev-mode /collective_rpc ({"results": [...]}).
                with server.lock:
                    server.weight_calls.append((self.path, body))
                if self.path == "/update_weights_from_disk":
                    ok = server.reload_ok
                    reply = {
                        "success": ok,
                        "message": "ok" if ok else "load failed",
                        "num_paused_requests": 0,
                    }
                    return self._send(200 if ok else 400, json.dumps(reply).encode())
                if self.path == "/collective_rpc":
                    if not server.reload_ok:
                        return self._send(500, b'{"error": "reload failed"}')
                    return self._send(200, b'{"results": [null]}')
                return self._send(200, b"")

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
        "return_token_ids": True,  # vLLM's field; used when the server answers it
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


def test_extra_choices_are_cut_to_n(server):
    server.wrong_n = True
    out = OpenAIEngine(server.url, "tiny").generate(["x"], SamplingParams(), n=2)
    assert [c.text for c in out] == ["x|0", "x|1"]


def test_server_that_ignores_n_gets_n_one_choice_requests(server, caplog):
    server.ignore_n = True
    engine = OpenAIEngine(server.url, "tiny", concurrency=1)
    out = engine.generate(["a", "b"], SamplingParams(seed=3), n=3)
    assert len(out) == 6 and [c.text for c in out[:3]] == ["a|0"] * 3
    assert "sending 3 one-choice requests" in caplog.text
    # Detected once: the first request asked for n=3, every later one for n=1, with distinct seeds.
    ns = [b["n"] for _, _, b in server.requests]
    assert ns[0] == 3 and set(ns[1:]) == {1} and len(ns) == 1 + 3 + 3
    assert len({b["seed"] for _, _, b in server.requests[1:]}) == 6
    server.requests.clear()
    engine.generate(["c"], SamplingParams(), n=2)
    assert [b["n"] for _, _, b in server.requests] == [1, 1]


def test_server_token_ids_are_used(server):
    server.token_ids = True
    tok = build_char_tokenizer()
    out = OpenAIEngine(server.url, "tiny", tokenizer=tok).generate(["12+3="], SamplingParams(), n=2)
    assert server.requests[0][2]["return_token_ids"] is True
    assert [c.prompt_ids for c in out] == [[5, 6], [5, 6]] and [c.response_ids for c in out] == [[7], [7, 7]]


def test_a_server_that_refuses_return_token_ids_is_asked_without_it_from_then_on(server):
    server.reject_token_ids = True
    engine = OpenAIEngine(server.url, "tiny", tokenizer=build_char_tokenizer())
    assert engine.generate(["x"], SamplingParams())[0].text == "x|0"
    engine.generate(["y"], SamplingParams())
    sent = ["return_token_ids" in body for _, _, body in server.requests]
    assert sent == [True, False, False]


def test_no_token_ids_from_the_server_falls_back_to_the_tokenizer(server):
    tok = build_char_tokenizer()
    out = OpenAIEngine(server.url, "tiny", tokenizer=tok).generate(["12+3="], SamplingParams(), n=1)
    assert out[0].prompt_ids == tok("12+3=")["input_ids"]
    assert out[0].response_ids == tok("12+3=|0", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_missing_finish_reason_is_inferred_from_the_length(server):
    server.drop_finish_reason = True
    tok = build_char_tokenizer()
    engine = OpenAIEngine(server.url, "tiny", tokenizer=tok)
    short, long = engine.generate(["x"], SamplingParams(max_new_tokens=3), n=1) + engine.generate(
        ["x"], SamplingParams(max_new_tokens=200), n=1
    )
    assert short.finish_reason == "length" and len(short.response_ids) == 3  # "x|0" fills max_new_tokens
    assert long.finish_reason == "stop" and long.response_ids[-1] == tok.eos_token_id
    assert engine.counts["missing_finish_reason"] == 2


def test_response_longer_than_max_tokens_is_cut(server):
    server.long_text = True
    tok = build_char_tokenizer()
    engine = OpenAIEngine(server.url, "tiny", tokenizer=tok)
    (c,) = engine.generate(["x"], SamplingParams(max_new_tokens=5), n=1)
    assert len(c.response_ids) == 5 and c.finish_reason == "length" and c.text == "x|099"
    assert engine.counts["truncated"] == 1


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (
            b'{"object": "error", "message": "model is loading", "code": 503}',
            "HTTP 200 with an error body: model is loading",
        ),
        (b'{"error": {"message": "bad"}}', "error body: bad"),
        (b"<html>oops</html>", "not JSON"),
        (b'{"choices": []}', "without a usable 'choices' list"),
        (b'{"choices": [{"text": 3, "finish_reason": "stop"}]}', r"choices\[\].text of type int"),
    ],
)
def test_a_200_that_is_not_a_completion_is_one_clear_error(server, reply, match):
    server.raw_reply = reply
    with pytest.raises(OpenAIEngineError, match=match):
        OpenAIEngine(server.url, "tiny").generate(["x"], SamplingParams())


def test_undecodable_text_becomes_replacement_characters(server):
    engine = OpenAIEngine(server.url, "tiny", tokenizer=build_char_tokenizer())
    server.raw_reply = b'{"choices": [{"index": 0, "text": "ok \\ud800", "finish_reason": "stop"}]}'
    assert engine.generate(["x"], SamplingParams())[0].text == "ok ?"  # a lone surrogate is not passed on
    server.raw_reply = b'{"choices": [{"index": 0, "text": "ok \xff", "finish_reason": "stop"}]}'
    assert engine.generate(["x"], SamplingParams())[0].text == "ok \ufffd"
    assert engine.counts["invalid_utf8"] == 1


def test_sglang_notifier_sends_sglangs_payload_and_records_only_confirmed_versions(
    server, tmp_path, tiny_model_dir
):
    import torch

    engine = OpenAIEngine(
        server.url + "/v1",
        "tiny",
        weight_sync="disk",
        weight_notifier="sglang",
        weights_dir=tmp_path,
        model_dir=tiny_model_dir,
    )
    engine.load_weights({"w": torch.ones(2)}, 1)
    route, body = server.weight_calls[-1]
    assert route == "/update_weights_from_disk"
    assert body == {"model_path": str(tmp_path / "v1"), "weight_version": "1", "flush_cache": True}
    assert engine.policy_version == 1 and (tmp_path / "v1" / "config.json").is_file()
    server.reload_ok = False
    with pytest.raises(WeightSyncError, match=r"update_weights_from_disk refused the reload \(HTTP 400"):
        engine.load_weights({"w": torch.zeros(2)}, 2)
    assert engine.policy_version == 1
    assert engine.generate(["x"], SamplingParams())[0].policy_version == 1


def test_vllm_notifier_calls_collective_rpc_reload_weights_then_resets_the_prefix_cache(server, tmp_path):
    import torch

    engine = OpenAIEngine(
        server.url + "/v1", "tiny", weight_sync="disk", weight_notifier="vllm", weights_dir=tmp_path
    )
    engine.load_weights({"w": torch.ones(2)}, 4)
    assert server.weight_calls == [
        ("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(tmp_path / "v4")}}),
        ("/reset_prefix_cache", {}),
    ]
    assert engine.policy_version == 4


def test_asympo_sync_against_a_server_without_the_route_names_the_fix(server):
    import torch

    server.fail_next = [404]
    engine = OpenAIEngine(server.url, "tiny", weight_sync="asympo")
    with pytest.raises(WeightSyncError, match="weight_sync=disk with rollout.weight_notifier"):
        engine.load_weights({"w": torch.ones(1)}, 1)
    assert engine.policy_version == 0


def test_none_sync_refuses_to_push(server):
    engine = OpenAIEngine(server.url, "tiny", weight_sync="none")
    with pytest.raises(WeightSyncError, match="frozen"):
        engine.load_weights({}, 1)


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
