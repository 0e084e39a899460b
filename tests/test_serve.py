"""The reward service, tested as clients see it: a real uvicorn server on loopback, real HTTP requests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")

from cdr.backends import LogprobRequest  # noqa: E402
from cdr.serve.client import RewardClient  # noqa: E402
from conftest import running, serve_process  # noqa: E402

CHATML_PROMPT = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def server(tiny_pair):
    with running(tiny_pair, api_key=None) as url:
        yield url


def conv(question="What is 2+2?", answer="4."):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics").text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def test_reward_endpoint_equals_offline_scoring(server, tiny_pair):
    convs = [conv(), conv(answer="5, obviously."), conv("Name a colour.", "Blue.")]
    body = httpx.post(f"{server}/v1/reward", json={"conversations": convs}).json()
    offline = tiny_pair.score(convs)
    for got, want in zip(body["results"], offline):
        assert got["reward"] == pytest.approx(want.reward, rel=1e-6)
        assert got["strong_tokens"] == want.strong_tokens and got["weak_tokens"] == want.weak_tokens
        assert got["domain"] is None and got["error"] is None
    assert body["provenance"] == tiny_pair.provenance


def test_reward_endpoint_with_a_recipe_reports_the_domain(tiny_strong, tiny_weak):
    from cdr import DensityRatio

    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", recipe="paper")
    convs = [conv("How do I make a bomb?", "I can't help with that."), conv("Write a haiku.", "Leaves fall.")]
    with running(reward) as url:
        body = httpx.post(f"{url}/v1/reward", json={"conversations": convs}).json()
    assert [r["domain"] for r in body["results"]] == ["SAFETY", "CHAT"]
    assert [r["reward"] for r in body["results"]] == pytest.approx([r.reward for r in reward.score(convs)], rel=1e-6)
    assert body["provenance"]["recipe"] == "paper" and body["provenance"]["router"] == "rules"


def test_openrlhf_get_reward_splits_templated_queries(server, tiny_pair):
    gemma_prompt = "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    raw_prompt = "What is 2+2?\nAnswer:"
    queries = [CHATML_PROMPT + "4.<|im_end|>", gemma_prompt + "4.<end_of_turn>", raw_prompt + " 4."]
    body = httpx.post(
        f"{server}/get_reward",
        json={"query": queries, "prompts": [CHATML_PROMPT, gemma_prompt, raw_prompt], "labels": [None, None, None]},
    ).json()
    from cdr import DensityRatio

    expected = tiny_pair.score([conv(), conv()])
    # the raw query has no end marker (cut off at the policy's limit): scored without the end-of-turn token
    no_eot = DensityRatio(config=tiny_pair.config, include_eot=False).score([conv("What is 2+2?\nAnswer:", "4.")])
    assert body["rewards"] == pytest.approx([r.reward for r in expected + no_eot], rel=1e-6)
    assert body["scores"] == body["rewards"] and len(body["extra_logs"]["strong_logprob"]) == 3
    assert body["extra_logs"]["cdr_no_eos"] == [0.0, 0.0, 1.0]
    # a row that cannot be split gets the unscorable reward and a flag; the others their own reward
    bad = httpx.post(
        f"{server}/get_reward",
        json={"query": [CHATML_PROMPT + "4.<|im_end|>", "something else"], "prompts": [CHATML_PROMPT, CHATML_PROMPT]},
    )
    assert bad.status_code == 200
    assert bad.json()["rewards"] == [pytest.approx(expected[0].reward, rel=1e-6), -1.0]
    assert bad.json()["extra_logs"]["cdr_unscorable"] == [0.0, 1.0]
    r = httpx.post(f"{server}/get_reward", json={"query": ["x"]})  # no prompts to split with: malformed
    assert r.status_code == 422 and r.json()["error"]["param"] == "prompts"


def test_completions_echo_matches_the_backend_in_vllm_shape(server, tiny_pair):
    ids = tiny_pair.strong.tokenizer("The capital of France is Paris.").input_ids
    r = httpx.post(
        f"{server}/v1/completions",
        json={
            "model": "strong",
            "prompt": ids,
            "echo": True,
            "logprobs": 3,
            "max_tokens": 0,
            "return_tokens_as_token_ids": True,
        },
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["tokens"] == [f"token_id:{t}" for t in ids] and choice["prompt_token_ids"] == ids
    direct = tiny_pair.strong.backend.response_logprobs([LogprobRequest(tuple(ids), 1)])[0]
    assert lp["token_logprobs"][1:] == pytest.approx(list(direct), abs=1e-5)
    for pos in range(1, len(ids)):  # the actual token is always there, looked up by id, plus the top 3
        top = lp["top_logprobs"][pos]
        assert top[f"token_id:{ids[pos]}"] == lp["token_logprobs"][pos] and 3 <= len(top) <= 4
        assert max(top.values()) >= lp["token_logprobs"][pos]
    # a string prompt is tokenized by the served model; one greedy token is appended for max_tokens=1
    r = httpx.post(
        f"{server}/v1/completions",
        json={"model": "weak", "prompt": "Hello", "echo": True, "logprobs": 0, "max_tokens": 1},
    ).json()
    weak_ids = tiny_pair.weak.tokenizer("Hello").input_ids
    assert len(r["choices"][0]["logprobs"]["tokens"]) == len(weak_ids) + 1
    assert r["usage"] == {"prompt_tokens": len(weak_ids), "completion_tokens": 1, "total_tokens": len(weak_ids) + 1}


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({"prompt": [1, 2], "max_tokens": 5}, 422, "generates at most 1"),
        ({"prompt": [1, 2], "model": "gpt-4"}, 404, "is not served here"),
        ({"prompt": [1, 10**9], "echo": True, "logprobs": 0}, 422, "outside the vocabulary"),
        ({"prompt": [], "echo": True}, 422, "prompt is empty"),
        ({"prompt": [1, 2], "stream": True}, 422, "stream is not supported"),
    ],
)
def test_completions_refusals(server, body, status, message):
    r = httpx.post(f"{server}/v1/completions", json=body)
    assert r.status_code == status and message in r.text


STREAM_REFUSED = "stream is not supported: this endpoint returns prompt log-probs in one response"
MAX_TOKENS_REFUSED = (
    "max_tokens=5: this server scores prompts and generates at most 1 (greedy) token; use max_tokens 0 or 1"
)


@pytest.mark.parametrize(
    "body,param,message",
    [
        ({"prompt": [1, 2], "stream": True}, "stream", STREAM_REFUSED),
        ({"prompt": [1, 2], "max_tokens": 5}, "max_tokens", MAX_TOKENS_REFUSED),
        ({"prompt": [1, 2], "stream": True, "max_tokens": 5}, "stream", STREAM_REFUSED),  # stream is checked first
    ],
)
def test_completions_cross_field_refusals_have_the_exact_error_body(server, body, param, message):
    r = httpx.post(f"{server}/v1/completions", json=body)
    assert r.status_code == 422
    assert r.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "422"}}


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"conversations": [[{"role": "user", "content": "Hi"}]]}, "must be 'assistant'"),
        ({"conversations": [[{"role": "robot", "content": "Hi"}]]}, "role"),
        ({"conversations": "not a list"}, "list"),
        ({"conversations": [[{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]]}, "string"),
        ({"conversations": []}, "at least 1"),
        ({}, "Field required"),
    ],
)
def test_malformed_bodies_are_422_with_a_message(server, body, fragment):
    r = httpx.post(f"{server}/v1/reward", json=body)
    assert r.status_code == 422 and fragment in r.text


def test_limits(tiny_pair):
    with running(tiny_pair, max_body_bytes=2000, max_rows=2, max_tokens=80) as url:
        assert httpx.post(f"{url}/v1/reward", json={"conversations": [conv("x" * 3000)]}).status_code == 413
        r = httpx.post(f"{url}/v1/reward", json={"conversations": [conv()] * 3})
        assert r.status_code == 413 and "at most 2 per request" in r.text
        r = httpx.post(f"{url}/v1/reward", json={"conversations": [conv(), conv("word " * 100)]})
        assert r.status_code == 422 and "conversations[1]" in r.text and "at most 80" in r.text
        r = httpx.post(f"{url}/v1/reward", content=b"{bad json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = httpx.post(f"{url}/v1/reward", content=iter([b'{"conversations": []}']))  # chunked: no Content-Length
        assert r.status_code == 411
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_bearer_token(tiny_pair):
    with running(tiny_pair, api_key="s3cret") as url:
        body = {"conversations": [conv()]}
        assert httpx.post(f"{url}/v1/reward", json=body).status_code == 401
        assert httpx.post(f"{url}/v1/reward", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(f"{url}/v1/reward", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200
        assert RewardClient(url, api_key="s3cret").reward([conv()])[0]["reward"] is not None


def test_full_queue_answers_503_with_retry_after(tiny_pair):
    with running(tiny_pair, max_queue=2, max_batch=64, max_wait_ms=300) as url:

        async def burst():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(
                    *[client.post(f"{url}/v1/reward", json={"conversations": [conv(), conv()]}) for _ in range(12)]
                )

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert codes.count(200) >= 1 and codes.count(503) >= 1 and set(codes) <= {200, 503}
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "queue is full" in refused.text
        assert httpx.post(f"{url}/v1/reward", json={"conversations": [conv()]}).status_code == 200


def test_client_that_disconnects_leaves_no_work_and_no_damage(tiny_pair):
    with running(tiny_pair, max_batch=64, max_wait_ms=1500) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/reward", json={"conversations": [conv()]}, timeout=0.3)
        time.sleep(2.0)
        assert metric(url, "cdr_client_disconnects_total") == 1
        assert metric(url, "cdr_batch_rows_count") == 0  # the abandoned job never reached the model
        r = httpx.post(f"{url}/v1/reward", json={"conversations": [conv()]}, timeout=30)
        assert r.status_code == 200 and metric(url, "cdr_batch_rows_count") == 1


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(tiny_pair):
    with running(tiny_pair, max_batch=16, max_wait_ms=200) as url:
        answers = [f"{i} apples." for i in range(8)]

        async def many():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(
                    *[client.post(f"{url}/v1/reward", json={"conversations": [conv("Count.", a)]}) for a in answers]
                )

        got = [r.json()["results"][0]["reward"] for r in asyncio.run(many())]
        want = [r.reward for r in tiny_pair.score([conv("Count.", a) for a in answers])]
        assert got == pytest.approx(want, rel=1e-5)
        assert metric(url, "cdr_batch_rows_count") < 8  # fewer model batches than requests


def test_graceful_shutdown_finishes_in_flight_requests(tmp_path, tiny_strong, tiny_weak):
    args = [
        "--strong",
        str(tiny_strong),
        "--weak",
        str(tiny_weak),
        "--cache",
        "none",
        "--max-wait-ms",
        "1500",
        "--log-level",
        "warning",
    ]
    with serve_process(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    ) as (url, proc):
        result = {}
        thread = threading.Thread(
            target=lambda: result.update(r=httpx.post(f"{url}/v1/reward", json={"conversations": [conv()]}, timeout=60))
        )
        thread.start()
        time.sleep(0.5)  # the request now waits in the batcher
        proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert result["r"].status_code == 200 and result["r"].json()["results"][0]["reward"] is not None
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down cleanly


def test_serve_binds_loopback_by_default():
    from cdr.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"


def test_openapi_fuzz_finds_no_server_errors(server):
    """Schema-driven fuzzing (schemathesis) of every endpoint's request bodies: never a 500."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    failures, calls = [], []
    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(
            max_examples=25, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        @given(case=op.as_strategy())
        def check(case):
            response = case.call(base_url=server, timeout=60)
            calls.append((op.label, response.status_code))  # noqa: B023 (check() runs before op changes)
            if response.status_code >= 500:
                failures.append((op.label, response.status_code, response.text[:300]))  # noqa: B023

        check()
    assert not failures, failures
    assert {label for label, _ in calls} >= {"POST /v1/reward", "POST /get_reward", "POST /v1/completions"}
    assert any(code == 200 for label, code in calls if label == "POST /v1/completions")  # not only rejections
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
