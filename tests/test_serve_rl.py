"""`cdr serve` as RL trainers really call it: OpenRLHF's request shapes (tests/serve_clients.py reproduces its
clients on httpx; tests/openrlhf_driver.py runs its own code when it is installed), against a real server on
loopback with the tiny models. Reward values are compared with offline scoring, never pinned."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")

from conftest import running  # noqa: E402
from serve_clients import post_batch_0_8, post_sample_0_9, rollout_0_9  # noqa: E402

HERE = Path(__file__).resolve().parent


def chatml(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def conv(question: str, answer: str):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def samples(n: int, eos: bool = True) -> list[tuple[str, str]]:
    """(query, prompt) pairs as OpenRLHF sends them: the decoded sequence with special tokens, EOS included."""
    out = []
    for i in range(n):
        prompt = chatml(f"What is {i} plus {i % 7}?")
        out.append((prompt + f"It is {i + i % 7}." + ("<|im_end|>" if eos else ""), prompt))
    return out


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics").text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(want + " "))


@pytest.fixture(scope="module")
def server(tiny_pair):
    with running(tiny_pair) as url:
        yield url


def test_a_whole_rollout_batch_in_one_request_with_the_defaults(server, tiny_pair):
    """OpenRLHF <= 0.9 posts the rollout batch (1,024 samples by default) in one request: it is streamed
    through the micro-batcher in chunks instead of being refused (413 above the old 256-row limit)."""
    rows = samples(1024)
    tries: list = []
    body = post_batch_0_8(
        f"{server}/get_reward",
        {"query": [q for q, _ in rows], "prompts": [p for _, p in rows], "labels": [None] * len(rows)},
        tries=tries,
    )
    assert tries == [200]
    assert len(body["rewards"]) == 1024 and body["scores"] == body["rewards"]
    assert sum(body["extra_logs"]["cdr_unscorable"]) == 0
    check = [0, 511, 1023]  # spot-check against offline scoring (the same conversations, scored in process)
    offline = tiny_pair.score([conv(f"What is {i} plus {i % 7}?", f"It is {i + i % 7}.") for i in check])
    assert [body["rewards"][i] for i in check] == pytest.approx([r.reward for r in offline], rel=1e-4, abs=1e-5)
    assert metric(server, "cdr_batch_rows_count") > 1  # in chunks of max_batch, not one 1,024-row batch


def test_1024_concurrent_single_sample_requests_all_answered_first_try(tiny_pair):
    """OpenRLHF >= 0.9.10 sends every sample of a rollout at once, 5 tries 1 s apart, Retry-After ignored."""
    rows = samples(1024)
    with running(tiny_pair) as url:
        answers, tries, seconds = asyncio.run(rollout_0_9(f"{url}/get_reward", rows))
        assert [a for a in answers if isinstance(a, Exception)] == []
        assert all(t == [200] for t in tries), sorted({tuple(t) for t in tries})
        assert all(len(a["rewards"]) == 1 and a["extra_logs"]["cdr_unscorable"] == [0.0] for a in answers)
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_rows_that_cannot_be_scored_get_the_configured_reward_and_a_flag(tiny_pair):
    """An empty response (EOS only), a prompt OpenRLHF truncated (the query no longer starts with it) and a
    row over --max-tokens used to fail the whole request with 422, losing every sample in it."""
    good_q, good_p = samples(1)[0]
    prompt = chatml("Tell me a story.")
    truncated_query = prompt[10:] + "Once upon a time.<|im_end|>"  # OpenRLHF 0.10+ keeps the prompt's tail
    rows = [
        (good_q, good_p),
        (prompt + "<|im_end|>", prompt),
        (truncated_query, prompt),
        (prompt + "word " * 300 + "<|im_end|>", prompt),
    ]
    with running(tiny_pair, unscorable_reward=-7.5, max_tokens=200) as url:
        tries: list = []
        body = post_batch_0_8(
            f"{url}/get_reward", {"query": [q for q, _ in rows], "prompts": [p for _, p in rows]}, tries=tries
        )
        assert tries == [200]
        assert body["rewards"][1:] == [-7.5, -7.5, -7.5] and body["rewards"][0] != -7.5
        assert body["extra_logs"]["cdr_unscorable"] == [0.0, 1.0, 1.0, 1.0]
        assert all(isinstance(v, float) for values in body["extra_logs"].values() for v in values)  # no nulls
        for reason in ("empty_response", "prompt_mismatch", "too_long"):
            assert metric(url, "cdr_unscorable_rows_total", reason=reason) == 1
        # the same rows one per request (OpenRLHF 0.9.10+): each still a 200 with the flag
        answers, tries, _ = asyncio.run(rollout_0_9(f"{url}/get_reward", rows))
        assert all(t == [200] for t in tries)
        assert [a["rewards"][0] == -7.5 for a in answers] == [False, True, True, True]
        # only a malformed request is a 4xx: it names what is wrong
        r = httpx.post(f"{url}/get_reward", json={"query": ["x"], "prompts": ["x", "y"]})
        assert r.status_code == 422 and r.json()["error"]["param"] == "prompts"
        assert httpx.post(f"{url}/get_reward", json={"query": ["x"]}).status_code == 422


def test_extra_logs_can_be_empty_for_openrlhf_0_8(tiny_pair):
    """OpenRLHF 0.8.x torch.cat()s extra_logs values and crashes on JSON lists (fixed in 0.9.0)."""
    ((q, p),) = samples(1)
    with running(tiny_pair, extra_logs="none") as url:
        body = httpx.post(f"{url}/get_reward", json={"query": [q], "prompts": [p], "labels": [None]}).json()
    assert body["extra_logs"] == {} and len(body["rewards"]) == 1


def test_a_response_cut_off_at_the_token_limit_is_scored_without_an_end_of_turn(server, tiny_pair):
    """With EOS the policy ended its turn, and the end-of-turn token is scored (include_eot, the default);
    cut off at the limit it did not, so scoring an end-of-turn it never produced would be wrong."""
    prompt = chatml("Name a colour.")
    body = httpx.post(
        f"{server}/get_reward",
        json={"query": [prompt + "Blue is nice.<|im_end|>", prompt + "Blue is nice."], "prompts": [prompt, prompt]},
    ).json()
    from cdr import DensityRatio

    with_eot = tiny_pair.score([conv("Name a colour.", "Blue is nice.")])[0]
    no_eot = DensityRatio(config=tiny_pair.config, include_eot=False).score([conv("Name a colour.", "Blue is nice.")])[
        0
    ]
    assert body["rewards"] == pytest.approx([with_eot.reward, no_eot.reward], rel=1e-4, abs=1e-5)
    assert body["rewards"][0] != pytest.approx(body["rewards"][1])
    assert body["extra_logs"]["cdr_no_eos"] == [0.0, 1.0]


def test_a_client_that_timed_out_gets_the_finished_rows_when_it_retries(tiny_pair):
    """A batch slower than the client's timeout (OpenRLHF 0.9.10+'s total timeout: no heartbeat helps): each
    try leaves its finished chunks in the server's row cache, so every retry makes progress and the batch
    completes (before: every try started from scratch and timed out again, forever). Retried rows are not
    even tokenized again. The tries are capped at 60 instead of 5 so the test does not depend on this
    machine's load."""
    import copy
    import time

    rows = samples(240)
    data = {"query": [q for q, _ in rows], "prompts": [p for _, p in rows]}
    slow = copy.copy(tiny_pair)  # a model slower than the client's timeout: 0.25 s per batch of 8 rows
    slow.score = lambda convs, **kw: (time.sleep(0.25), tiny_pair.score(convs, **kw))[1]
    with running(slow, max_batch=8) as url:
        tries: list = []
        body = asyncio.run(post_sample_0_9(f"{url}/get_reward", data, timeout_s=3.0, tries=tries, try_max_times=60))
        assert tries[0] == "TimeoutError" and tries[-1] == 200, tries  # it did time out, and then it did finish
        assert len(body["rewards"]) == len(rows) and sum(body["extra_logs"]["cdr_unscorable"]) == 0
        assert metric(url, "cdr_result_cache_hits_total") > 0


def test_a_batch_slower_than_the_read_timeout_is_kept_alive_with_whitespace(tiny_pair):
    """OpenRLHF <= 0.9.x times out after 180 s without a byte (requests' timeout); a rollout batch can take
    longer. A /get_reward slower than --heartbeat-s answers 200 at once and sends a space every so often, then
    the JSON (leading whitespace is valid JSON): one try, however long the batch (before: 5 timeouts)."""
    import copy
    import time

    rows = samples(96)
    data = {"query": [q for q, _ in rows], "prompts": [p for _, p in rows]}
    slow = copy.copy(tiny_pair)  # a model slower than the client's read timeout: 0.25 s per batch of 4 rows
    slow.score = lambda convs, **kw: (time.sleep(0.25), tiny_pair.score(convs, **kw))[1]
    with running(slow, max_batch=4, heartbeat_s=0.2, result_cache_rows=0) as url:
        t0 = time.perf_counter()
        tries: list = []
        body = post_batch_0_8(f"{url}/get_reward", data, timeout_s=2.0, tries=tries)
        seconds = time.perf_counter() - t0
        assert tries == [200] and len(body["rewards"]) == 96 and seconds > 2.0  # longer than the read timeout
        assert sum(body["extra_logs"]["cdr_unscorable"]) == 0
        kept_alive = httpx.post(f"{url}/get_reward", json={"query": data["query"][:8], "prompts": data["prompts"][:8]})
        assert kept_alive.text.startswith(" ") and len(kept_alive.json()["rewards"]) == 8  # leading spaces, valid JSON


def test_path_token_and_client_allow_list_for_clients_without_headers(tiny_pair):
    """OpenRLHF sends no Authorization header: a secret first path segment authenticates it instead."""
    ((q, p),) = samples(1)
    body = {"query": [q], "prompts": [p]}
    token = "t0ken-abcdefghijklmnop"
    with running(tiny_pair, path_token=token, api_key="bearer-secret") as url:
        assert httpx.post(f"{url}/get_reward", json=body).status_code == 401
        assert httpx.post(f"{url}/wrong-token-abcdefgh/get_reward", json=body).status_code == 401
        r = httpx.post(f"{url}/{token}/get_reward", json=body)
        assert r.status_code == 200 and len(r.json()["rewards"]) == 1
        assert (
            httpx.post(f"{url}/get_reward", json=body, headers={"Authorization": "Bearer bearer-secret"}).status_code
            == 200
        )
        assert httpx.get(f"{url}/{token}/metrics").status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200
    with running(tiny_pair, allow_clients=("10.0.0.0/8",)) as url:
        r = httpx.post(f"{url}/get_reward", json=body)
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    with running(tiny_pair, allow_clients=("127.0.0.0/8", "::1")) as url:
        assert httpx.post(f"{url}/get_reward", json=body).status_code == 200


def test_serve_rejects_bad_auth_settings(monkeypatch):
    from conftest import cdr_in_process

    monkeypatch.setenv("SHORT_TOKEN", "abc")
    r = cdr_in_process("serve", "--path-token-env", "SHORT_TOKEN")
    assert r.returncode == 2 and "at least 16 characters" in r.stderr
    r = cdr_in_process("serve", "--allow-client", "not-an-address")
    assert r.returncode == 2 and "not an address or network" in r.stderr


# --- OpenRLHF's own client code, when it is installed (pip install --no-deps --target DIR openrlhf==X) ------


def openrlhf_dir(version: str) -> Path | None:
    for spec in os.environ.get("CDR_OPENRLHF_TARGETS", "").split(","):
        if spec.startswith(version + "="):
            return Path(spec.split("=", 1)[1])
    default = Path(f"/tmp/orlhf-{version}")
    return default if (default / "openrlhf").is_dir() else None


@pytest.mark.parametrize("version", ["0.8.11", "0.11.2"])
def test_openrlhf_real_client(version, tiny_strong, tiny_weak, tmp_path):
    """OpenRLHF's own code posts to a real `cdr serve` and merges the rewards into its experiences; only vLLM,
    Ray and unrelated heavy imports are stood in (see tests/openrlhf_driver.py)."""
    target = openrlhf_dir(version)
    if target is None:
        pytest.skip(
            f"OpenRLHF {version} is not installed: pip install --no-deps --target /tmp/orlhf-{version} "
            f"openrlhf=={version} (or set CDR_OPENRLHF_TARGETS={version}=DIR)"
        )
    needed = "requests" if version.startswith("0.8") else "aiohttp"
    deps = os.environ.get("CDR_OPENRLHF_DEPS", "/tmp/orlhf-deps")  # e.g. pip install --target /tmp/orlhf-deps aiohttp
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), deps, str(HERE)])}
    if subprocess.run([sys.executable, "-c", f"import {needed}"], env=env, capture_output=True).returncode:
        pytest.skip(
            f"OpenRLHF {version}'s client uses {needed}, which is not installed (pip install --target {deps} {needed})"
        )
    from cdr import DensityRatio

    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none")
    extra = {"extra_logs": "none"} if version.startswith("0.8") else {}
    with running(reward, **extra) as url:
        proc = subprocess.run(
            [sys.executable, str(HERE / "openrlhf_driver.py"), version, f"{url}/get_reward", str(tiny_strong)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    assert report["samples"] == report["rewards"] and report["failed"] == 0, report
    if version.startswith("0.8"):
        assert report["crash_with_list_extra_logs"], report  # why --extra-logs none exists
        assert report["unscorable_reward_rows"] == 9  # 8 EOS-only responses, 1 truncated prompt: flagged, not lost
    else:
        # sample 2's prompt was truncated, 3 is EOS only: both flagged; 4 was cut off at max_tokens (no EOS)
        assert report["unscorable"] == [0.0, 0.0, 1.0, 1.0, 0.0] and report["unscorable_rows"] == 9, report
        assert report["no_eos"] == [0.0, 0.0, 0.0, 0.0, 1.0] and report["truncated"] == [False] * 4 + [True], report
