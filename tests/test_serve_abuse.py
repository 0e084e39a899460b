"""`cdr serve` under abuse: slow and lying clients, huge inputs, odd JSON, probing without credentials. A real
server on loopback; raw sockets where a well-behaved HTTP client could not misbehave enough."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")

from conftest import serve_process, serving  # noqa: E402


def conv(question="What is 2+2?", answer="4."):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within ``seconds``, and what it sent first."""
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True, data
            data += chunk
    except TimeoutError:
        return False, data
    except ConnectionResetError:
        return True, data


@pytest.fixture(scope="module")
def guarded(tiny_pair):
    with serving(tiny_pair, body_timeout_s=1.0, idle_timeout_s=1.0) as (url, port):
        yield url, port


def test_a_body_shorter_than_its_content_length_gets_408_and_the_connection_closed(guarded):
    url, port = guarded
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100000\r\n\r\n{"conversations": '
        )
        closed, data = closed_within(sock, 10)
    assert closed and data.startswith(b"HTTP/1.1 408")
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "timeout_error"
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


@pytest.mark.parametrize("sent", [b"", b"POST /v1/reward HTTP/1.1\r\nHost: x\r\n"])
def test_idle_connections_are_closed(guarded, sent):
    """A connection that sends nothing, or half a request head, is closed after --idle-timeout-s."""
    url, port = guarded
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(sent)
        t0 = time.monotonic()
        closed, _ = closed_within(sock, 10)
    assert closed and time.monotonic() - t0 < 5


def test_a_keep_alive_connection_still_serves_several_requests(guarded):
    url, _ = guarded
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(f"{url}/health").status_code == 200
            time.sleep(0.3)


def test_a_slow_body_does_not_hold_up_shutdown(tiny_strong, tiny_weak_fast):
    """SIGTERM with a request still 'sending' its body: that request is answered 503 at once and the server
    stops, instead of waiting out the whole --grace-s (or the body deadline)."""
    args = [
        "--strong",
        str(tiny_strong),
        "--weak",
        str(tiny_weak_fast),
        "--cache",
        "none",
        "--log-level",
        "warning",
        "--body-timeout-s",
        "60",
        "--grace-s",
        "60",
    ]
    with serve_process(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    ) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/reward HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        closed, data = closed_within(sock, 30)
        assert closed and data.startswith(b"HTTP/1.1 503") and b"shutting down" in data
        proc.wait(45)
        assert time.monotonic() - t0 < 10
        sock.close()


@pytest.fixture(scope="module")
def process_server(tiny_strong, tiny_weak_fast):
    """`cdr serve` in its own process (so the GIL of this one does not blur what the server does)."""
    args = ["--strong", str(tiny_strong), "--weak", str(tiny_weak_fast), "--cache", "none", "--log-level", "warning"]
    with serve_process(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as (url, proc):
        yield url, proc.pid


def test_a_huge_prompt_does_not_stall_the_event_loop(process_server):
    """A 7 MB /v1/completions prompt used to be tokenized on the event loop (/health waited seconds); now it is
    refused by its length before any tokenizing, and prompts that are tokenized are tokenized off the loop."""
    url, _ = process_server
    latencies: list[float] = []
    stop = threading.Event()

    def probe():
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                client.get(f"{url}/health")
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        time.sleep(0.2)
        huge = "word " * 1_400_000  # 7 MB
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/completions", json={"prompt": huge, "echo": True, "logprobs": 0}, timeout=120)
        assert r.status_code == 422 and "cannot fit in 4096 tokens" in r.json()["error"]["message"]
        assert time.perf_counter() - t0 < 3
        # under the character bound but over the token limit: tokenized, in a worker thread
        big = "word " * 60_000
        r = httpx.post(f"{url}/v1/completions", json={"prompt": big, "echo": True, "logprobs": 0}, timeout=120)
        assert r.status_code == 422 and "tokens, at most 4096" in r.json()["error"]["message"]
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert len(latencies) > 3 and max(latencies) < 1.0, max(latencies)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": [1, 2], "logprobs": NaN}',
        b'{"prompt": [1, 2], "max_tokens": Infinity}',
        b'{"conversations": -Infinity}',
        b'{"conversations": [[{"role": "user", "content": NaN}]]}',
    ],
)
def test_nan_and_infinity_in_a_bad_field_are_422_not_500(guarded, raw):
    url, _ = guarded
    path = "/v1/reward" if b"conversations" in raw else "/v1/completions"
    r = httpx.post(f"{url}{path}", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"


def test_the_schema_pages_need_the_token_too(tiny_pair):
    with serving(tiny_pair, api_key="s3cret") as (url, _):
        for path in ("/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect", "/no-such-page"):
            r = httpx.get(f"{url}{path}")
            assert r.status_code == 401, path
        assert httpx.get(f"{url}/openapi.json", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200


def test_errors_have_openais_shape(tiny_pair):
    with serving(tiny_pair, max_body_bytes=2000, max_rows=2, api_key="k") as (url, _):
        auth = {"Authorization": "Bearer k"}
        cases = [
            httpx.post(f"{url}/v1/reward", json={"conversations": [conv()]}),  # 401
            httpx.get(f"{url}/nowhere", headers=auth),  # 404
            httpx.get(f"{url}/v1/reward", headers=auth),  # 405
            httpx.post(f"{url}/v1/reward", json={"conversations": [conv("x" * 3000)]}, headers=auth),  # 413 body
            httpx.post(f"{url}/v1/reward", json={"conversations": [conv()] * 3}, headers=auth),  # 413 rows
            httpx.post(f"{url}/v1/reward", json={"conversations": [[{"role": "user", "content": "x"}]]}, headers=auth),
            httpx.post(f"{url}/v1/completions", json={"prompt": [1], "model": "gpt-4"}, headers=auth),  # 404 model
        ]
        assert [r.status_code for r in cases] == [401, 404, 405, 413, 413, 422, 404]
        for r in cases:
            err = r.json()["error"]
            assert set(err) >= {"message", "type", "param", "code"} and isinstance(err["message"], str), r.text
        assert cases[4].json()["error"]["param"] == "conversations"


def test_memory_is_bounded_after_huge_requests(process_server):
    """A few 7 MB requests used to take the server from 2.3 GB to 3.5 GB for good."""
    url, pid = process_server

    def rss_mib() -> float:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    httpx.post(f"{url}/v1/reward", json={"conversations": [conv()]}, timeout=60)  # warm
    before = rss_mib()
    huge = "word " * 1_400_000
    for body in ({"prompt": huge, "echo": True}, {"prompt": [huge, "x"]}):
        for _ in range(3):
            assert httpx.post(f"{url}/v1/completions", json=body, timeout=120).status_code == 422
    for _ in range(3):
        r = httpx.post(f"{url}/v1/reward", json={"conversations": [conv(huge)]}, timeout=120)
        assert r.status_code == 422 and "cannot fit" in r.text
        r = httpx.post(
            f"{url}/get_reward",
            json={"query": ["<|im_start|>user\nx<|im_end|>\n" + huge], "prompts": ["<|im_start|>user\nx<|im_end|>\n"]},
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["extra_logs"]["cdr_unscorable"] == [1.0]
    after = rss_mib()
    assert after - before < 150, (before, after)


def test_concurrent_huge_bodies_are_bounded(tiny_pair):
    """Bodies held at once are bounded (--max-held-bytes): beyond it a request gets 503 with Retry-After."""
    with serving(tiny_pair, max_held_bytes=3_000_000, body_timeout_s=5) as (url, port):
        # one client holds 2.5 MB declared (sending slowly); a second 2.5 MB body does not fit beside it
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/reward HTTP/1.1\r\nHost: x\r\nContent-Length: 2500000\r\n\r\n{")
            time.sleep(0.3)
            r = httpx.post(f"{url}/v1/reward", content=b" " * 2_500_000, headers={"content-type": "application/json"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
        time.sleep(0.5)
        assert asyncio.run(_ok(url))


async def _ok(url):
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{url}/v1/reward", json={"conversations": [conv()]}, timeout=60)
        return r.status_code == 200
