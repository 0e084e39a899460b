"""A client for OpenAI-compatible ``/v1/completions`` servers that echo prompt log-probs (vLLM, ``cdr serve``).

The prompt goes as token ids (rendered and tokenized here, so the response boundary is exact), with
``echo``, ``logprobs=0`` and ``max_tokens=1`` (vLLM refuses 0; the generated token is ignored). The answer
is read from vLLM's ``prompt_logprobs`` (dicts keyed by token id: the token is looked up by id, never by
position) when the server sends it, else from ``logprobs.token_logprobs`` after checking the echoed tokens
are ours. Requests run concurrently up to a limit, with a timeout, and are retried with exponential
backoff on connection errors, 429 and 5xx. A server that echoes no prompt log-probs (llama.cpp's
``llama-server``) gets a clear error, not wrong numbers.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cdr.backends.base import Backend, BackendOptions, LogprobRequest
from cdr.backends.vllm import prompt_token_logprobs
from cdr.errors import CdrError
from cdr.models import ModelSource


class ServerError(CdrError):
    pass


def parse_prompt_logprobs(choice: dict[str, Any], token_ids: Sequence[int]) -> list[float | None]:
    """Per prompt position, the log-prob of our token there (entry 0 is None), from one completion choice."""
    n = len(token_ids)
    table = choice.get("prompt_logprobs")
    if table is not None:  # vLLM: [None, {"<id>": {"logprob": ..., "rank": ..., "decoded_token": ...}, ...}, ...]
        try:
            return [None] + list(prompt_token_logprobs(table, token_ids, 1))
        except CdrError as exc:
            raise ServerError(str(exc)) from None
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs")
    if not values or len(values) < n:
        raise ServerError(
            "the server echoed no prompt log-probs (it needs /v1/completions with echo and logprobs, as "
            "vLLM and `cdr serve` provide; llama.cpp's llama-server does not)"
        )
    tokens = logprobs.get("tokens") or []
    if tokens and tokens[0].startswith("token_id:"):
        echoed = [int(t.removeprefix("token_id:")) for t in tokens[:n]]
        if echoed != list(token_ids):
            raise ServerError("the echoed prompt tokens differ from the ones sent")
    return [None] + [float(v) for v in values[1:n]]


def run_coroutine(coro):
    """``asyncio.run(coro)``, also when called from a running event loop (a notebook, an async web handler),
    where ``asyncio.run`` refuses: the coroutine then runs on a private loop in a worker thread, and this call
    blocks until it is done, as it does everywhere else."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="cdr-openai") as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAICompletionsBackend(Backend):
    name = "openai"

    def __init__(self, source: ModelSource, options: BackendOptions):
        super().__init__(source, options)
        if not options.url:
            raise CdrError(
                f"the openai backend for '{source.name}' needs the server's base URL "
                "(--strong-url / --weak-url, e.g. http://127.0.0.1:8000/v1)"
            )
        self.url = options.url.rstrip("/")
        self.served_model = options.served_model or source.name
        key = os.environ.get(options.api_key_env) if options.api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        # the numbers come from whatever the server runs: the cache key names the server and its model
        self.precision = f"remote:{self.url}:{self.served_model}"

    @property
    def max_length(self) -> int | None:
        return None  # the server enforces its own

    def response_logprobs(
        self, requests: Sequence[LogprobRequest], on_progress: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        return run_coroutine(self._all(requests, on_progress))

    async def _all(self, requests, on_progress) -> list[np.ndarray]:
        import httpx

        limit = asyncio.Semaphore(self.options.concurrency)
        async with httpx.AsyncClient(timeout=self.options.timeout_s, headers=self.headers) as client:

            async def one(request: LogprobRequest) -> np.ndarray:
                async with limit:
                    lps = await self._score(client, request)
                if on_progress:
                    on_progress(1)
                return lps

            return list(await asyncio.gather(*[one(r) for r in requests]))

    async def _score(self, client, request: LogprobRequest) -> np.ndarray:
        import httpx

        body = {
            "model": self.served_model,
            "prompt": list(request.token_ids),
            "echo": True,
            "logprobs": 0,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
            "return_tokens_as_token_ids": True,
        }
        delay = 0.5
        for attempt in range(self.options.retries + 1):
            try:
                response = await client.post(f"{self.url}/completions", json=body)
            except httpx.TransportError as exc:  # connection refused, reset, timeout
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    choice = response.json()["choices"][0]
                    values = parse_prompt_logprobs(choice, request.token_ids)
                    return np.array(values[request.response_start :], dtype=np.float64)
                failure = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in (429,) and response.status_code < 500:
                    raise ServerError(f"{self.url}/completions refused the request: {failure}")
                delay = max(delay, float(response.headers.get("Retry-After", 0) or 0))
            if attempt < self.options.retries:
                await asyncio.sleep(delay * (1 + random.random() / 4))
                delay *= 2
        raise ServerError(f"{self.url}/completions failed after {self.options.retries + 1} attempts: {failure}")
