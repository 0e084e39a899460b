"""The service's front door, as plain ASGI middleware (so disconnect detection in the routes keeps working).

In order, before any route runs: client address allow-list (403), authentication (401: a bearer token,
or a secret first path segment for clients that cannot send headers, such as OpenRLHF), body limits
(411 without Content-Length, 413 above the size limit, 503 when too many body bytes are already held),
and the body itself, read to the end within a deadline (408 and the connection closed when a client
declares more than it sends, or sends it too slowly). Every answer it gives is an OpenAI-style error
body; requests are counted and timed per endpoint. After a large body the process gives freed heap
back to the operating system (glibc ``malloc_trim``).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import ipaddress
import json
import secrets
import time
from typing import Any

ROUTES = ("/v1/reward", "/get_reward", "/v1/completions", "/health", "/metrics", "/openapi.json", "/docs", "/redoc")
OPEN_PATHS = ("/health",)  # answer without authentication (liveness probes)
TRIM_AFTER_BYTES = 1 << 20  # bodies at least this large are followed by malloc_trim

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    499: "client_disconnected",
    503: "overloaded_error",
}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None, detail: Any = None
) -> dict[str, Any]:
    """The shape OpenAI clients read: {"error": {"message", "type", "param", "code"}} (+ cdr's row detail)."""
    err: dict[str, Any] = {
        "message": message,
        "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        "param": param,
        "code": code or str(status),
    }
    if detail is not None:
        err["detail"] = detail
    return {"error": err}


async def send_error(
    send, status: int, message: str, headers: dict[str, str] | None = None, close: bool = False, code: str | None = None
) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


_libc = None


def malloc_trim() -> None:
    """Give the heap's free pages back to the OS (glibc); a no-op elsewhere."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def parse_networks(specs) -> list:
    """``--allow-client`` values: addresses or networks (10.0.0.0/8, 127.0.0.1, ::1)."""
    nets = []
    for spec in specs or ():
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"--allow-client {spec!r}: not an address or network ({exc})") from None
    return nets


class Guard:
    def __init__(self, app, settings, metrics, state=None):
        self.app, self.settings, self.metrics, self.state = app, settings, metrics, state
        self.networks = parse_networks(settings.allow_clients)
        self.held_bytes = 0  # request bodies being read or processed right now

    def _client_allowed(self, scope) -> bool:
        if not self.networks:
            return True
        client = scope.get("client")
        if not client:
            return False
        try:
            addr = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)

    def _authenticate(self, scope) -> bool:
        """True when the request may proceed; strips a valid secret path prefix from the scope in place
        (so the route matches and the access log never shows the secret)."""
        s = self.settings
        path = scope["path"]
        if s.path_token:
            prefix = f"/{s.path_token}"
            if path == prefix or path.startswith(prefix + "/"):
                if secrets.compare_digest(path[: len(prefix)].encode(), prefix.encode()):
                    rest = path[len(prefix) :] or "/"
                    scope["path"] = rest
                    scope["raw_path"] = rest.encode()
                    return True
        if path in OPEN_PATHS:
            return True
        if s.api_key is None and s.path_token is None:
            return True
        if s.api_key is not None:
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), s.api_key.encode()):
                return True
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        authorized = self._client_allowed(scope) and self._authenticate(scope)
        endpoint = scope["path"] if scope["path"] in ROUTES else "other"  # bounded label values
        try:
            if not self._client_allowed(scope):
                return await send_error(send_and_record, 403, "this client address is not allowed")
            if not authorized:
                return await send_error(
                    send_and_record,
                    401,
                    "missing or wrong credentials: send 'Authorization: "
                    "Bearer <token>' (or use the secret path prefix)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if scope["method"] != "POST":
                return await self.app(scope, receive, send_and_record)
            if not await self._forward_post(scope, receive, send_and_record):
                status["code"] = 499
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    async def _forward_post(self, scope, receive, send) -> bool:
        """The body limits, then the whole body read within the deadline and replayed to the app. Whether an
        answer was sent: False when the client went away while sending."""
        s = self.settings
        length = dict(scope["headers"]).get(b"content-length")
        if length is None:
            await send_error(send, 411, "a Content-Length header is required")
            return True
        if not length.isdigit():
            await send_error(send, 400, "Content-Length is not a number")
            return True
        size = int(length)
        if size > s.max_body_bytes:
            await send_error(send, 413, f"the body has {size} bytes, at most {s.max_body_bytes}")
            return True
        if self.held_bytes + size > s.max_held_bytes and self.held_bytes > 0:
            await send_error(
                send,
                503,
                f"{self.held_bytes} bytes of request bodies are being processed (limit "
                f"{s.max_held_bytes}); retry later",
                headers={"Retry-After": str(s.retry_after_s)},
            )
            return True
        self.held_bytes += size
        try:
            body = await self._read_body(receive, size)
            if body is None:
                await send_error(
                    send,
                    408,
                    f"the body did not arrive within {s.body_timeout_s:g} s ({size} bytes declared)",
                    close=True,
                )
            elif body == "exiting":
                await send_error(
                    send, 503, "the server is shutting down", close=True, headers={"Retry-After": str(s.retry_after_s)}
                )
            elif isinstance(body, str):  # the client went away while sending
                return False
            else:
                await self.app(scope, _replaying(body, receive), send)
            return True
        finally:
            self.held_bytes -= size
            if size >= TRIM_AFTER_BYTES:
                await asyncio.get_running_loop().run_in_executor(None, malloc_trim)

    async def _read_body(self, receive, size: int):
        """The whole body; None when the deadline passed first, "gone" when the client disconnected,
        "exiting" when the server began shutting down while waiting for it."""
        chunks, got = [], 0
        deadline = time.monotonic() + self.settings.body_timeout_s
        exiting = getattr(self.state, "exiting", None)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if exiting is not None and exiting():
                return "exiting"
            try:
                message = await asyncio.wait_for(receive(), min(left, 0.25))
            except asyncio.TimeoutError:
                continue
            if message["type"] == "http.disconnect":
                return "gone"
            chunk = message.get("body", b"")
            got += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replaying(body: bytes, receive):
    """An ASGI receive that gives the app the body already read, then what the client sends next."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: waits for the disconnect, if one comes

    return replay
