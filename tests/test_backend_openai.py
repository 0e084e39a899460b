"""The OpenAI-compatible client backend, against real HTTP servers on loopback.

`cdr serve` is the real /v1/completions server here (it serves any backend); vLLM itself cannot run on
this machine, so vLLM's documented payload shapes (prompt_logprobs keyed by token id, entry 0 None) are
checked on hand-written bodies served by a small real HTTP server.
"""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from cdr import DensityRatio  # noqa: E402
from cdr.backends import BackendOptions, LogprobRequest  # noqa: E402
from cdr.backends.openai import OpenAICompletionsBackend, ServerError, parse_prompt_logprobs  # noqa: E402
from cdr.models import resolve_model  # noqa: E402
from conftest import free_port, running  # noqa: E402


@contextlib.contextmanager
def fake_server(handler):
    """A real uvicorn server whose /v1/completions answers with ``handler(body, call_number)``."""
    app, calls = FastAPI(), []

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        calls.append(body)
        status, payload = handler(body, len(calls))
        return JSONResponse(payload, status_code=status)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", calls
    finally:
        server.should_exit = True
        thread.join(10)


def vllm_choice(ids, lps):
    """vLLM's documented shape: prompt_logprobs[0] is None, later entries map token-id strings to Logprob
    dicts, the sampled top-1 first and the prompt's own token possibly later."""
    table = [None]
    for pos in range(1, len(ids)):
        table.append(
            {
                "7": {"logprob": -0.01, "rank": 1, "decoded_token": "x"},
                str(ids[pos]): {"logprob": lps[pos - 1], "rank": 3, "decoded_token": "y"},
            }
        )
    return {"index": 0, "text": "", "logprobs": None, "prompt_logprobs": table, "finish_reason": "length"}


def openai_backend(tiny, url, **options):
    return OpenAICompletionsBackend(resolve_model(str(tiny)), BackendOptions(url=url, **options))


def test_vllm_prompt_logprobs_are_read_by_token_id_not_position():
    ids = [1, 50, 60, 70]
    values = parse_prompt_logprobs(vllm_choice(ids, [-1.5, -2.5, -3.5]), ids)
    assert values == [None, -1.5, -2.5, -3.5]
    with pytest.raises(ServerError, match="lacks the prompt's own token"):
        parse_prompt_logprobs(vllm_choice(ids, [-1.0, -2.0, -3.0]), [1, 50, 61, 70])


def test_echo_token_logprobs_shape_and_token_check():
    choice = {
        "logprobs": {
            "tokens": ["token_id:1", "token_id:5", "token_id:9", "token_id:3"],
            "token_logprobs": [None, -0.5, -0.25, -4.0],
            "top_logprobs": [None, {}, {}, {}],
            "text_offset": [0, 1, 2, 3],
        }
    }
    assert parse_prompt_logprobs(choice, [1, 5, 9]) == [None, -0.5, -0.25]  # the generated 4th token is ignored
    with pytest.raises(ServerError, match="differ from the ones sent"):
        parse_prompt_logprobs(choice, [1, 5, 8])


def test_against_cdr_serve_equals_the_in_process_backend(tiny_pair, tiny_strong, tiny_weak):
    with running(tiny_pair) as url:
        remote = openai_backend(tiny_strong, f"{url}/v1", served_model="strong")
        ids = tuple(tiny_pair.strong.tokenizer("Paris is the capital of France. It is on the Seine.").input_ids)
        requests = [LogprobRequest(ids, 5), LogprobRequest(ids[:9], 2)]
        got = remote.response_logprobs(requests)
        want = tiny_pair.strong.backend.response_logprobs(requests)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-5)
        # the whole reward through the HTTP path equals the in-process reward
        convs = [
            [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": c}]
            for c in ("Blue.", "The sky is blue and grass is green.")
        ]
        via_http = DensityRatio(
            strong=str(tiny_strong),
            weak=str(tiny_weak),
            cache="none",
            backend="openai",
            strong_url=f"{url}/v1",
            weak_url=f"{url}/v1",
            strong_served_model="strong",
            weak_served_model="weak",
        ).score(convs)
        local = tiny_pair.score(convs)
        assert [r.reward for r in via_http] == pytest.approx([r.reward for r in local], abs=1e-4)
        assert via_http[0].strong_tokens == local[0].strong_tokens


def test_retries_server_errors_with_backoff_then_succeeds(tiny_strong):
    ids = (1, 50, 60, 70)

    def flaky(body, n):
        if n <= 2:
            return 503, {"error": "busy"}
        return 200, {"choices": [vllm_choice(body["prompt"], [-1.0, -2.0, -3.0])]}

    with fake_server(flaky) as (url, calls):
        out = openai_backend(tiny_strong, url, retries=3).response_logprobs([LogprobRequest(ids, 2)])
        assert list(out[0]) == [-2.0, -3.0] and len(calls) == 3
        body = calls[0]
        assert body["prompt"] == list(ids) and body["echo"] is True and body["max_tokens"] == 1
        assert body["logprobs"] == 0 and body["prompt_logprobs"] == 0


def test_gives_up_with_a_clear_message(tiny_strong):
    with fake_server(lambda body, n: (500, {"error": "boom"})) as (url, calls):
        with pytest.raises(ServerError, match="failed after 2 attempts: HTTP 500"):
            openai_backend(tiny_strong, url, retries=1).response_logprobs([LogprobRequest((1, 2, 3), 1)])
    with fake_server(lambda body, n: (400, {"error": "bad model"})) as (url, calls):
        with pytest.raises(ServerError, match="refused the request: HTTP 400"):
            openai_backend(tiny_strong, url, retries=3).response_logprobs([LogprobRequest((1, 2, 3), 1)])
        assert len(calls) == 1  # a 4xx is not retried
    with pytest.raises(ServerError, match="ConnectError"):
        openai_backend(tiny_strong, f"http://127.0.0.1:{free_port()}/v1", retries=1).response_logprobs(
            [LogprobRequest((1, 2, 3), 1)]
        )


def test_llama_server_without_prompt_logprobs_is_refused(tiny_strong):
    # llama.cpp's llama-server answers /v1/completions but echoes no prompt log-probs
    answer = {"choices": [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": "length"}]}
    with fake_server(lambda body, n: (200, answer)) as (url, _):
        with pytest.raises(ServerError, match="echoed no prompt log-probs"):
            openai_backend(tiny_strong, url).response_logprobs([LogprobRequest((1, 2, 3), 1)])


def test_missing_url_is_a_clear_error(tiny_strong):
    from cdr.errors import CdrError

    with pytest.raises(CdrError, match="needs the server's base URL"):
        OpenAICompletionsBackend(resolve_model(str(tiny_strong)), BackendOptions())


def test_only_backends_with_top_k_claim_it(tiny_pair, tiny_strong):
    # cdr serve answers logprobs=k / max_tokens=1 with 422 for a backend without top-k (this one)
    assert openai_backend(tiny_strong, "http://127.0.0.1:1/v1").has_top_logprobs is False
    assert tiny_pair.strong.backend.has_top_logprobs is True


def test_works_when_called_from_a_running_event_loop(tiny_strong):
    # a notebook (or an async web handler) already runs an event loop: asyncio.run would refuse to start another
    import asyncio

    ids = (1, 50, 60, 70)
    with fake_server(lambda body, n: (200, {"choices": [vllm_choice(body["prompt"], [-1.0, -2.0, -3.0])]})) as (url, _):
        backend = openai_backend(tiny_strong, url)

        async def from_a_notebook_cell():
            asyncio.get_running_loop()  # the loop is running here
            return backend.response_logprobs([LogprobRequest(ids, 2), LogprobRequest(ids, 1)])

        out = asyncio.run(from_a_notebook_cell())
        assert [list(x) for x in out] == [[-2.0, -3.0], [-1.0, -2.0, -3.0]]
        assert [list(x) for x in backend.response_logprobs([LogprobRequest(ids, 2)])] == [[-2.0, -3.0]]  # no loop
