"""Any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, ...) as an engine; stdlib only.

Text only: the engine returns completions without behavior log-probs (`supports_logprobs = False`), which
is all ASymPO, SPO and naive need. Token ids come from a local tokenizer when one is given (the server's
ids are not part of the OpenAI API), with the tokenizer's EOS appended to a response that stopped, as the
torch engine does; otherwise `prompt_ids`/`response_ids` are empty and the learner must tokenize the text
itself.

Weights: the server owns them. `load_weights(state, version)` cannot push tensors over this API; it
records `version` as the policy version of everything generated afterwards and, if given, calls
`on_load_weights(state, version)` — a hook that must make the server serve those weights (for example
save them and call the server's reload endpoint) and return only when it does. Without a hook the version
tag is only as true as the caller's promise that the server already serves those weights.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asympo.engines.base import Completion, SamplingParams, check_generate_args, check_version

__all__ = ["OpenAIEngine", "OpenAIEngineError"]

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIEngineError(RuntimeError):
    """The server refused a request or stayed unreachable after all retries."""


class OpenAIEngine:
    """Sampler backed by `POST {base_url}/completions` (or `/chat/completions` with `chat=True`).

    `base_url` is the API root as OpenAI clients take it, e.g. "http://127.0.0.1:8000/v1" (a URL without
    a path gets "/v1" appended). One request per prompt carries `n`; up to `concurrency` requests run at
    once. Timeouts, connection errors and HTTP 408/409/429/5xx are retried `max_retries` times with
    exponential backoff; other HTTP errors fail at once with the server's message.
    """

    supports_logprobs = False

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        concurrency: int = 8,
        chat: bool = False,
        tokenizer: Any = None,
        on_load_weights: Callable[[Mapping[str, Any], int], None] | None = None,
        backoff_s: float = 0.5,
        policy_version: int = 0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("model (the name the server serves) must be given")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        root = base_url.rstrip("/")
        if root.count("/") == 2:  # scheme://host[:port] only
            root += "/v1"
        self.url = root + ("/chat/completions" if chat else "/completions")
        self.model = model
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.chat = chat
        self.tokenizer = tokenizer
        self.on_load_weights = on_load_weights
        self.backoff_s = backoff_s
        self._version = int(policy_version)
        self._lock = threading.Lock()

    @property
    def policy_version(self) -> int:
        return self._version

    def load_weights(self, state: Mapping[str, Any], version: int) -> None:
        """Call the reload hook (if any), then tag later completions with `version` (see module doc)."""
        check_version(version)
        with self._lock:
            if self.on_load_weights is not None:
                self.on_load_weights(state, version)
            self._version = version

    def generate(self, prompts: Sequence[str], sampling: SamplingParams, n: int = 1) -> list[Completion]:
        check_generate_args(prompts, n)
        if sampling.return_logprobs:
            raise ValueError(
                "the openai engine returns no behavior log-probs; use an objective that needs none "
                "(asympo, spo, naive) or the torch/vllm engine"
            )
        with self._lock:  # a weight reload does not interleave with a batch
            version = self._version
            bodies = [self._body(p, sampling, n, i) for i, p in enumerate(prompts)]
            with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(bodies)))) as pool:
                responses = list(pool.map(self._post_with_retries, bodies))
        out: list[Completion] = []
        for prompt, response in zip(prompts, responses):
            out.extend(self._completions(prompt, response, n, version))
        return out

    # ------------------------------------------------------------------ internals
    def _body(self, prompt: str, sampling: SamplingParams, n: int, index: int) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if sampling.seed is not None:
            # Distinct per prompt so that equal prompts in one batch do not get equal samples.
            body["seed"] = sampling.seed + index * n
        if sampling.ignore_eos:
            body["ignore_eos"] = True  # vLLM/SGLang extension; other servers ignore unknown fields or refuse
        return body

    def _post_with_retries(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code not in RETRY_STATUS:
                    raise OpenAIEngineError(f"{self.url} answered HTTP {e.code}: {detail}") from None
                last_error = f"HTTP {e.code}: {detail}"
            except TimeoutError:
                last_error = f"no response within timeout_s={self.timeout_s:g}s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError | socket.timeout):
                    last_error = f"no response within timeout_s={self.timeout_s:g}s"
                else:
                    last_error = f"cannot reach the server: {e.reason}"
            except (ConnectionError, json.JSONDecodeError) as e:
                last_error = f"{type(e).__name__}: {e}"
        raise OpenAIEngineError(
            f"{self.url} failed after {self.max_retries + 1} attempts; last error: {last_error}"
        )

    def _completions(self, prompt: str, response: dict, n: int, version: int) -> list[Completion]:
        choices = response.get("choices")
        if not isinstance(choices, list) or len(choices) != n:
            got = len(choices) if isinstance(choices, list) else "no"
            raise OpenAIEngineError(f"{self.url} returned {got} choices for n={n}")
        choices = sorted(choices, key=lambda c: c.get("index", 0))
        prompt_ids = self._tokenize(prompt, prompt=True)
        out = []
        for choice in choices:
            text = choice["message"]["content"] if self.chat else choice["text"]
            text = text or ""
            # "length" is the only truncation; "stop", "eos", tool calls, content filters end the text.
            finish = "length" if choice.get("finish_reason") == "length" else "stop"
            response_ids = self._tokenize(text, prompt=False)
            if self.tokenizer is not None and finish == "stop" and self.tokenizer.eos_token_id is not None:
                response_ids.append(self.tokenizer.eos_token_id)  # as the torch engine: train the stop
            out.append(
                Completion(
                    prompt_ids=prompt_ids,
                    response_ids=response_ids,
                    text=text,
                    finish_reason=finish,
                    policy_version=version,
                    behavior_logp=None,
                )
            )
        return out

    def _tokenize(self, text: str, prompt: bool) -> list[int]:
        if self.tokenizer is None:
            return []
        return list(self.tokenizer(text, add_special_tokens=prompt)["input_ids"])
