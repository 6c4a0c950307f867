"""Any OpenAI-compatible server (vLLM, SGLang, `asympo serve`, TGI, llama.cpp, ...) as an engine; stdlib only.

Text only: the engine returns completions without behavior log-probs (`supports_logprobs = False`), which
is all ASymPO, SPO and naive need.

Token ids: each request asks for them (`return_token_ids`, vLLM >= 0.10.2 and `asympo serve`); a server that
returns them is used as is (`prompt_token_ids`, choice `token_ids`). Otherwise the local `tokenizer` (the
model's own; `asympo train` passes it) tokenizes the text, appending EOS to a response that stopped, as the
torch engine does. A server that rejects the field is asked again without it (once, then never again).

Weights: `load_weights(state, version)` hands the state dict to a `ServerWeightSync` (see
`asympo.engines.weight_sync`: `asympo`, `disk` + notifier, `none`) and records `version` only after the
sync returns, i.e. once the server confirms it serves it. A server that reports the version it served a
request with (`asympo serve`'s `X-Asympo-Weight-Version` response header) is believed over that record,
so every completion carries the version that really generated it. Without a sync (Python use only) an
`on_load_weights(state, version)` hook may do the same; with neither, the version is only a label.

Real servers differ; this engine survives the common differences: a server that returns fewer than `n`
choices is detected once and then sent `n` one-choice requests; a missing `finish_reason` is inferred from
the length; a response longer than `max_tokens` is cut to it (finish "length"); undecodable bytes become
U+FFFD. A 200 whose body is an error, or a malformed body, is an `OpenAIEngineError` naming the server
and the field, never a traceback from deep inside.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asympo.engines.base import Completion, SamplingParams, check_generate_args, check_version
from asympo.engines.weight_sync import VERSION_HEADER, ServerWeightSync, make_weight_sync

__all__ = ["OpenAIEngine", "OpenAIEngineError"]

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIEngineError(RuntimeError):
    """The server refused a request, stayed unreachable after all retries, or answered nonsense."""


class OpenAIEngine:
    """Sampler backed by `POST {base_url}/completions` (or `/chat/completions` with `chat=True`).

    `base_url` is the API root as OpenAI clients take it, e.g. "http://127.0.0.1:8000/v1" (a URL without
    a path gets "/v1" appended). `model` is the name the server serves; None asks `GET /v1/models` once.
    One request per prompt carries `n`; up to `concurrency` requests run at once. Timeouts, connection
    errors and HTTP 408/409/429/5xx are retried `max_retries` times with exponential backoff; other HTTP
    errors fail at once with the server's message.
    `weight_sync` names how weights reach the server ("asympo", "disk", "none"; or a `ServerWeightSync`);
    "disk" also takes `weight_notifier`, `weights_dir` and `model_dir` (config and tokenizer files to copy).
    """

    supports_logprobs = False

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        concurrency: int = 8,
        chat: bool = False,
        tokenizer: Any = None,
        weight_sync: str | ServerWeightSync | None = None,
        weight_notifier: str | None = None,
        weights_dir: str | os.PathLike | None = None,
        model_dir: str | os.PathLike | None = None,
        on_load_weights: Callable[[Mapping[str, Any], int], None] | None = None,
        return_token_ids: bool = True,
        backoff_s: float = 0.5,
        policy_version: int = 0,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if model is not None and not model:
            raise ValueError("model (the name the server serves) must be a non-empty string or None")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        root = base_url.rstrip("/")
        if root.count("/") == 2:  # scheme://host[:port] only
            root += "/v1"
        self.base = root
        self.url = root + ("/chat/completions" if chat else "/completions")
        self.model = model
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.chat = chat
        self.tokenizer = tokenizer
        if isinstance(weight_sync, str):
            weight_sync = make_weight_sync(
                weight_sync,
                base_url=root,
                api_key=api_key,
                notifier=weight_notifier,
                weights_dir=weights_dir,
                model_dir=model_dir,
            )
        self.weight_sync = weight_sync
        self.on_load_weights = on_load_weights
        self.return_token_ids = return_token_ids
        self.backoff_s = backoff_s
        self._version = int(policy_version)
        self._lock = threading.Lock()
        self._single_choice = False  # set once the server is seen to ignore n
        self.last_sync_s = 0.0
        self.counts: dict[str, int] = {}  # what was repaired, by kind (see the module doc)
        self._count_lock = threading.Lock()

    @property
    def policy_version(self) -> int:
        return self._version

    def load_weights(self, state: Mapping[str, Any], version: int) -> None:
        """Make the server serve `state` (weight sync or hook), then tag later completions with `version`."""
        check_version(version)
        with self._lock:  # no request is in flight while the server swaps weights
            t0 = time.monotonic()
            if self.weight_sync is not None:
                version = self.weight_sync.push(state, version)
            elif self.on_load_weights is not None:
                self.on_load_weights(state, version)
            self.last_sync_s = time.monotonic() - t0
            self._version = version

    def generate(self, prompts: Sequence[str], sampling: SamplingParams, n: int = 1) -> list[Completion]:
        check_generate_args(prompts, n)
        if sampling.return_logprobs:
            raise ValueError(
                "the openai engine returns no behavior log-probs; use an objective that needs none "
                "(asympo, spo, naive) or the torch/vllm engine"
            )
        with self._lock:  # a weight reload does not interleave with a batch
            if self.model is None:
                self.model = self._served_model()
            version = self._version
            jobs = list(enumerate(prompts))
            with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(jobs)))) as pool:
                per_prompt = list(pool.map(lambda j: self._prompt(j[1], j[0], sampling, n, version), jobs))
        return [c for cs in per_prompt for c in cs]

    # ------------------------------------------------------------------ internals
    def _served_model(self) -> str:
        url = self.base + "/models"
        try:
            body = self._request(url, None)
            return str(body["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise OpenAIEngineError(
                f"{url} lists no model; pass engine_kwargs.model (the name the server serves)"
            ) from None

    def _prompt(self, prompt: str, index: int, sampling: SamplingParams, n: int, version: int):
        """The n completions of one prompt: one request with n, or n one-choice requests."""
        if not self._single_choice:
            response, headers = self._post(self._body(prompt, sampling, n, index * n, version))
            choices = self._choices(response)
            if len(choices) >= n or n == 1:
                return self._completions(prompt, response, headers, choices, n, sampling, version)
            # Fewer choices than n: the server ignores or caps n. Remember, and ask n times for one.
            with self._count_lock:  # prompts run concurrently: say it once
                if not self._single_choice:
                    self._single_choice = True
                    self.counts["single_choice_fallback"] = 1
                    log.warning(
                        "%s returned %d choices for n=%d; sending %d one-choice requests per prompt from now on",
                        self.url,
                        len(choices),
                        n,
                        n,
                    )
        out = []
        for i in range(n):
            response, headers = self._post(self._body(prompt, sampling, 1, index * n + i, version))
            out += self._completions(prompt, response, headers, self._choices(response), 1, sampling, version)
        return out

    def _body(self, prompt: str, sampling: SamplingParams, n: int, seed_offset: int, version: int) -> dict:
        model = None if self.weight_sync is None else self.weight_sync.request_model(version)
        body: dict[str, Any] = {
            "model": model or self.model,
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if self.return_token_ids:
            body["return_token_ids"] = True
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if sampling.seed is not None:
            # Distinct per prompt and sample so that equal prompts in one batch do not get equal samples.
            body["seed"] = sampling.seed + seed_offset
        if sampling.ignore_eos:
            body["ignore_eos"] = True  # vLLM/SGLang extension; other servers ignore unknown fields or refuse
        return body

    def _post(self, body: dict) -> tuple[dict, Mapping[str, str]]:
        try:
            return self._request(self.url, body, with_headers=True)
        except OpenAIEngineError as e:
            if self.return_token_ids and "return_token_ids" in str(e) and " 4" in str(e):
                # The server refuses the field (HTTP 4xx naming it): tokenize locally from now on.
                log.warning("%s refuses return_token_ids; tokenizing locally", self.url)
                self.return_token_ids = False
                body = {k: v for k, v in body.items() if k != "return_token_ids"}
                return self._request(self.url, body, with_headers=True)
            raise

    def _request(self, url: str, body: dict | None, with_headers: bool = False):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(
                url, data=data, headers=headers, method="GET" if body is None else "POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw, got_headers = response.read(), response.headers
                break
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code not in RETRY_STATUS:
                    raise OpenAIEngineError(f"{url} answered HTTP {e.code}: {detail}") from None
                last_error = f"HTTP {e.code}: {detail}"
            except TimeoutError:
                last_error = f"no response within timeout_s={self.timeout_s:g}s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError | socket.timeout):
                    last_error = f"no response within timeout_s={self.timeout_s:g}s"
                else:
                    last_error = f"cannot reach the server: {e.reason}"
            except ConnectionError as e:
                last_error = f"{type(e).__name__}: {e}"
        else:
            raise OpenAIEngineError(
                f"{url} failed after {self.max_retries + 1} attempts; last error: {last_error}"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            self._count("invalid_utf8")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise OpenAIEngineError(
                f"{url} answered HTTP 200 with a body that is not JSON: {text[:200]!r}"
            ) from None
        if isinstance(parsed, dict) and (parsed.get("object") == "error" or "error" in parsed):
            err = parsed.get("error", parsed)
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise OpenAIEngineError(f"{url} answered HTTP 200 with an error body: {str(msg)[:300]}")
        if not isinstance(parsed, dict):
            raise OpenAIEngineError(f"{url} answered a JSON {type(parsed).__name__}, not an object")
        return (parsed, got_headers) if with_headers else parsed

    def _choices(self, response: dict) -> list[dict]:
        choices = response.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            raise OpenAIEngineError(
                f"{self.url} answered without a usable 'choices' list: {str(response)[:200]}"
            )
        return sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)

    def _completions(
        self,
        prompt: str,
        response: dict,
        headers: Mapping[str, str],
        choices: list[dict],
        n: int,
        sampling: SamplingParams,
        version: int,
    ) -> list[Completion]:
        served = headers.get(VERSION_HEADER) if headers is not None else None
        if served is not None:
            try:
                version = int(served)  # the server's word beats our record
            except ValueError:
                raise OpenAIEngineError(f"{self.url} sent {VERSION_HEADER}: {served!r}, not an int") from None
        prompt_ids = response.get("prompt_token_ids")
        out = []
        for choice in choices[:n]:
            text = self._text(choice)
            ids = choice.get("token_ids")
            p_ids = choice.get("prompt_token_ids", prompt_ids)
            if not _int_list(p_ids):
                p_ids = self._tokenize(prompt, prompt=True)
            finish = choice.get("finish_reason")
            if finish is None:
                self._count("missing_finish_reason")
            if _int_list(ids):
                response_ids = list(ids)
                if finish is None:
                    finish = "length" if len(response_ids) >= sampling.max_new_tokens else "stop"
            else:
                response_ids = self._tokenize(text, prompt=False)
                if finish is None:
                    finish = "length" if len(response_ids) >= sampling.max_new_tokens else "stop"
                # "length" is the only truncation; "stop", "eos", tool calls, content filters end the text.
                eos = getattr(self.tokenizer, "eos_token_id", None)
                if finish != "length" and eos is not None:
                    response_ids.append(eos)  # as the torch engine: train the stop
            finish = "length" if finish == "length" else "stop"
            if len(response_ids) > sampling.max_new_tokens:
                # Longer than asked (a server that ignores max_tokens, or a re-tokenization that does not
                # round-trip): keep what the sampler was allowed to produce.
                self._count("truncated")
                response_ids = response_ids[: sampling.max_new_tokens]
                finish = "length"
                if self.tokenizer is not None:
                    text = self.tokenizer.decode(response_ids, skip_special_tokens=True)
            out.append(
                Completion(
                    prompt_ids=list(p_ids),
                    response_ids=response_ids,
                    text=text,
                    finish_reason=finish,
                    policy_version=version,
                    behavior_logp=None,
                )
            )
        return out

    def _text(self, choice: dict) -> str:
        if self.chat:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            field = "choices[].message.content"
        else:
            text, field = choice.get("text"), "choices[].text"
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise OpenAIEngineError(f"{self.url} sent {field} of type {type(text).__name__}, not a string")
        # Lone surrogates (from "\ud800" escapes) cannot be tokenized or written: make them U+FFFD.
        return text.encode("utf-8", errors="replace").decode("utf-8")

    def _count(self, kind: str) -> None:
        with self._count_lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def _tokenize(self, text: str, prompt: bool) -> list[int]:
        if self.tokenizer is None:
            return []
        return list(self.tokenizer(text, add_special_tokens=prompt)["input_ids"])


def _int_list(x: Any) -> bool:
    return (
        isinstance(x, list) and len(x) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
    )
