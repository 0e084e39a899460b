"""The reward service (FastAPI): thin routes over a ``DensityRatio`` and one micro-batching model worker.

``create_app(reward, settings)`` builds the app; ``cdr serve`` runs it with uvicorn (``uvicorn_config``
adds an idle-connection timeout). Limits answer with a message instead of failing late: body size (413),
rows per request (413), sequence length and malformed input (422), a full queue (503 with Retry-After),
missing credentials (401), a client address outside the allow-list (403), a body that does not arrive
in time (408); every error has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

Large requests are cut into chunks of ``max_batch`` rows that go through the micro-batcher one after
another, so a trainer's whole rollout batch fits in one request. Finished rows are kept in a bounded
cache keyed by their content: a client that timed out and retries gets the rows already done at once.
In the RL endpoint (``/get_reward``) every row gets a reward: one that cannot be scored gets the
configured ``unscorable_reward`` and is flagged in ``extra_logs``; only a malformed request is a 4xx.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cdr.backends import LogprobRequest
from cdr.conversation import Conversation, ConversationError
from cdr.reward import RESULT_FIELDS, DensityRatio
from cdr.serve.batcher import MicroBatcher, QueueFull
from cdr.serve.guard import Guard, error_body
from cdr.serve.openrlhf import SplitError, split_query
from cdr.serve.protocol import (
    REQUEST_ERROR,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionUsage,
    Health,
    OpenRLHFRequest,
    OpenRLHFResponse,
    RewardItem,
    RewardRequest,
    RewardResponse,
)
from cdr.span import Unscorable


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32  # rows per model batch (and per chunk of a large request)
    max_wait_ms: float = 10.0  # how long a batch waits for company
    max_queue: int = 8192  # rows waiting; a request whose first chunk does not fit gets 503
    max_rows: int = 16384  # rows per request; beyond this 413
    max_body_bytes: int = 64 << 20  # per request; beyond this 413
    max_held_bytes: int = 256 << 20  # request bodies held at once; beyond this 503
    max_tokens: int = 4096  # tokens per rendered sequence; beyond this 422 (or the unscorable reward)
    body_timeout_s: float = 60.0  # the whole body must arrive within this; else 408
    idle_timeout_s: float = 60.0  # a connection that sends no complete request head within this is closed
    api_key: str | None = None  # bearer token
    path_token: str | None = None  # secret first path segment: /<token>/get_reward
    allow_clients: tuple[str, ...] = ()  # client addresses/networks; empty: any
    retry_after_s: int = 1
    unscorable_reward: float = -1.0  # /get_reward: the reward of a row that cannot be scored
    extra_logs: str = "full"  # /get_reward: "full" or "none" (extra_logs: {} for OpenRLHF 0.8.x)
    result_cache_rows: int = 16384  # finished rows kept for retries; 0: off
    heartbeat_s: float = 15.0  # /get_reward slower than this: 200 at once, a space every heartbeat_s, then JSON; 0: off

    def __post_init__(self):
        if self.extra_logs not in ("full", "none"):
            raise ValueError(f"extra_logs must be 'full' or 'none', got {self.extra_logs!r}")
        if not math.isfinite(self.unscorable_reward):
            raise ValueError(f"unscorable_reward must be a finite number, got {self.unscorable_reward}")
        self.allow_clients = tuple(self.allow_clients)


class ServiceError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.detail, self.headers, self.param = status, message, detail, headers, param


class TooLong(Exception):
    pass


@dataclass(frozen=True)
class RewardBatch:
    """Batcher key of /v1/reward and /get_reward rows: conversations, scored with or without the end-of-turn token."""

    include_eot: bool


@dataclass(frozen=True)
class PromptBatch:
    """Batcher key of /v1/completions rows: prompts scored by one side of the pair."""

    side: str  # "strong" or "weak"


class PromptRow(NamedTuple):
    """One /v1/completions prompt as queued for the model."""

    token_ids: list[int]
    top_k: int  # top log-probs at each position; 0: none
    greedy: bool  # append the one greedy next token


class PromptResult(NamedTuple):
    logprobs: np.ndarray  # of each prompt token after the first
    top: Any  # (ids, log-probs) of the top k at every position, or None
    next_token: tuple[int, float] | None  # the greedy token and its log-prob, or None


RLRow = tuple[Conversation, bool] | tuple[None, str]


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cdr_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.rows = Counter(
            "cdr_rows", "rows (conversations or prompts) scored, by endpoint", ["endpoint"], registry=self.registry
        )
        self.latency = Histogram(
            "cdr_request_seconds",
            "request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.queue = Gauge("cdr_queue_rows", "rows waiting for the model", registry=self.registry)
        self.batch = Histogram(
            "cdr_batch_rows", "rows per model batch", registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        self.disconnects = Counter(
            "cdr_client_disconnects", "requests abandoned by their client", registry=self.registry
        )
        self.unscorable = Counter(
            "cdr_unscorable_rows",
            "/get_reward rows given the unscorable reward, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "cdr_result_cache_hits", "rows answered from the finished-row cache", registry=self.registry
        )


class RewardService:
    """What the routes call: validation, length limits, chunking, the finished-row cache, and the model
    work run on the batcher's thread."""

    def __init__(self, reward: DensityRatio, settings: ServeSettings, metrics: Metrics):
        self.reward, self.settings, self.metrics = reward, settings, metrics
        self.batcher = MicroBatcher(
            self._run,
            max_batch=settings.max_batch,
            max_wait=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            on_batch=metrics.batch.observe,
        )
        self.scorers = {"strong": reward.strong, "weak": reward.weak}
        # the same pair scoring without the end-of-turn token (for responses cut off at the policy's limit)
        self.views = {True: reward, False: reward}
        if reward.config.include_eot:
            self.views[False] = reward.view(include_eot=False)
        self.cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.max_chars = {
            side: settings.max_tokens * 2 * longest_token(s.tokenizer) for side, s in self.scorers.items()
        }
        self.closing = False

    # --- runs on the model thread -------------------------------------------------------------------
    def _run(self, key: RewardBatch | PromptBatch, items: list[Any]) -> list[Any]:
        if isinstance(key, RewardBatch):
            return self.views[key.include_eot].score(items)
        return self._score_prompts(self.scorers[key.side].backend, items)

    @staticmethod
    def _score_prompts(backend, rows: list[PromptRow]) -> list[PromptResult]:
        scorable = [i for i, row in enumerate(rows) if len(row.token_ids) > 1]
        lps = backend.response_logprobs([LogprobRequest(tuple(rows[i].token_ids), 1) for i in scorable])
        prompt_lps: list[Any] = [np.zeros(0) for _ in rows]
        for i, lp in zip(scorable, lps):
            prompt_lps[i] = lp
        out = []
        for row, lp in zip(rows, prompt_lps):
            top = backend.next_token_top_logprobs(row.token_ids, row.top_k) if row.top_k else None  # every position
            next_token = None
            if row.greedy:  # the one generated token: only the last position's distribution is needed
                last = top if top is not None else backend.next_token_top_logprobs(row.token_ids, 1, last_only=True)
                next_token = (int(last[0][-1][0]), float(last[1][-1][0]))
            out.append(PromptResult(lp, top, next_token))
        return out

    # --- called from the routes ---------------------------------------------------------------------
    async def run(self, request, key: RewardBatch | PromptBatch, items: list[Any], on_result=None) -> list[Any]:
        """Queue the rows in chunks of ``max_batch`` (two chunks in the queue at a time, so one large request
        neither fills the queue nor leaves the model idle between its chunks); give up, dropping what has not
        started, if the client disconnects first. Only the first chunk can be refused by a full queue."""
        size = self.settings.max_batch
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        results: list[Any] = [None] * len(chunks)
        window = asyncio.Semaphore(2)

        async def one(index: int, chunk: list[Any]) -> None:
            done = None if on_result is None else (lambda part, at=index * size: on_result(at, part))
            async with window:
                results[index] = await self.batcher.submit(key, chunk, force=index > 0, on_result=done)

        self.metrics.queue.set(self.batcher.queued_rows + min(len(items), 2 * size))
        first = asyncio.ensure_future(one(0, chunks[0]))
        await asyncio.sleep(0)  # the first chunk is admitted (or refused) before the others queue up
        tasks = [first] + [asyncio.ensure_future(one(i, c)) for i, c in enumerate(chunks[1:], start=1)]
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending | {gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    self.metrics.disconnects.inc()
                    raise ServiceError(499, "client disconnected")
                pending.discard(gone)
                for task in done:
                    task.result()  # a failed chunk (or a refused first chunk) fails the request
        except QueueFull as exc:
            raise ServiceError(
                503,
                f"the queue is full ({exc}); retry later",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None
        finally:
            for task in tasks + [gone]:
                task.cancel()
            self.metrics.queue.set(self.batcher.queued_rows)
        return [r for part in results for r in part]

    async def score(self, request, convs: list[Conversation], eots: list[bool]) -> list[Any]:
        """Reward results for conversations (each scored with or without its end-of-turn token), rows
        already finished coming from the cache."""
        keys = [row_key(c, e) for c, e in zip(convs, eots)]
        out: list[Any] = [self.cache.get(k) for k in keys]
        hits = sum(r is not None for r in out)
        if hits:
            self.metrics.cache_hits.inc(hits)
            for k, r in zip(keys, out):
                if r is not None:
                    self.cache.move_to_end(k)
        for eot in (True, False):
            todo = [i for i, r in enumerate(out) if r is None and eots[i] == eot]
            if not todo:
                continue

            def finished(at: int, part: list[Any], todo=todo) -> None:  # per chunk, even after a disconnect
                for i, r in zip(todo[at : at + len(part)], part):
                    self.remember(keys[i], r)

            results = await self.run(request, RewardBatch(eot), [convs[i] for i in todo], on_result=finished)
            for i, r in zip(todo, results):
                out[i] = r
        return out

    def remember(self, key: str, result) -> None:
        if self.settings.result_cache_rows <= 0:
            return
        self.cache[key] = result
        self.cache.move_to_end(key)
        while len(self.cache) > self.settings.result_cache_rows:
            self.cache.popitem(last=False)

    def check_rows(self, n: int, field: str) -> None:
        if n > self.settings.max_rows:
            raise ServiceError(413, f"{n} rows in '{field}', at most {self.settings.max_rows} per request", param=field)

    def conversations(self, raw: list[list[dict[str, str]]], field: str) -> list[Conversation]:
        self.check_rows(len(raw), field)
        convs = []
        for i, messages in enumerate(raw):
            try:
                convs.append(Conversation.from_messages(messages, field=f"{field}[{i}]"))
            except ConversationError as exc:
                raise ServiceError(422, f"{exc.field}: {exc.message}", param=exc.field) from None
        return convs

    def length_problem(self, conv: Conversation, include_eot: bool) -> str | None:
        """Why the conversation cannot be scored within the limits (None when it can): text too long to
        fit in ``max_tokens`` is refused before tokenizing it (bounded time and memory), then each model's
        rendering is tokenized and counted."""
        r = self.reward
        chars = sum(len(m.content) for m in conv.messages)
        for role, scorer, renderer in (("strong", r.strong, r.strong.renderer), ("weak", r.weak, r.weak_renderer)):
            if chars > self.max_chars[role]:
                raise TooLong(
                    f"{chars} characters cannot fit in {self.settings.max_tokens} tokens under the {role} model"
                )
            try:
                n = len(scorer.span(conv, renderer, include_eot).token_ids)
            except Unscorable as exc:
                return f"the {role} model cannot score it: {exc}"
            if n > self.settings.max_tokens:
                raise TooLong(f"{n} tokens under the {role} model, at most {self.settings.max_tokens} per sequence")
        return None

    def check_lengths(self, convs: list[Conversation], field: str) -> None:
        """Tokenize under both models' renderings; refuse what exceeds the limit (or cannot be scored)."""
        for i, conv in enumerate(convs):
            try:
                problem = self.length_problem(conv, self.reward.config.include_eot)
            except TooLong as exc:
                raise ServiceError(422, f"{field}[{i}]: {exc}", param=f"{field}[{i}]") from None
            if problem:
                raise ServiceError(422, f"{field}[{i}]: {problem}", param=f"{field}[{i}]")

    def prepare_rl_rows(self, queries: list[str], prompts: list[str]) -> list[RLRow]:
        """Each /get_reward row as (conversation, score the end-of-turn token?) or (None, reason); runs in a
        worker thread (splitting and tokenizing are CPU work)."""
        include_eot = self.reward.config.include_eot
        rows: list[Any] = []
        for query, prompt in zip(queries, prompts):
            try:
                split = split_query(query, prompt)
                conv = Conversation.from_messages(split.messages)
            except SplitError as exc:
                rows.append((None, exc.reason))
                continue
            except ConversationError:
                rows.append((None, "invalid_conversation"))
                continue
            eot = include_eot and split.ended  # a response cut off at the limit has no end-of-turn to score
            if row_key(conv, eot) in self.cache:  # scored before (a retry): no need to tokenize it again
                rows.append((conv, eot))
                continue
            try:
                problem = self.length_problem(conv, eot)
            except TooLong:
                rows.append((None, "too_long"))
                continue
            rows.append((None, "unscorable") if problem else (conv, eot))
        return rows


async def _disconnected(request) -> None:
    """Returns when the client has gone (uvicorn sends http.disconnect once the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def row_key(conv: Conversation, include_eot: bool) -> str:
    return hashlib.sha256(json.dumps([include_eot, conv.as_dicts()], ensure_ascii=False).encode()).hexdigest()


def longest_token(tokenizer) -> int:
    """Characters in the tokenizer's longest vocabulary entry: no token covers more text than that (its
    entry spells every byte or character it covers), so text longer than max_tokens x this cannot fit."""
    try:
        return max(1, max(len(t) for t in tokenizer.get_vocab()))
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary listing: no text pre-check
        return 1 << 40


def _finite(value: Any) -> Any:
    """JSON-safe copies of validation contexts (NaN and Infinity as strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def reward_item(result) -> RewardItem:
    return RewardItem(**{name: getattr(result, name) for name in RESULT_FIELDS})


def uvicorn_config(app, settings: ServeSettings, **kwargs):
    """uvicorn's Config for the app, with connections that send no complete request head within
    ``idle_timeout_s`` closed (uvicorn itself only times out idle keep-alive connections)."""
    import uvicorn

    from cdr.serve.idle import idle_timeout_protocol

    return uvicorn.Config(
        app, host=settings.host, port=settings.port, http=idle_timeout_protocol(settings.idle_timeout_s), **kwargs
    )


def uvicorn_server(app, settings: ServeSettings, **kwargs):
    """A uvicorn Server for the app (``uvicorn_config``) that tells the app when it is shutting down, so a
    request still waiting for its body is answered at once instead of holding up the graceful shutdown."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, settings, **kwargs))
    app.state.exiting = lambda: server.should_exit
    return server


def create_app(reward: DensityRatio, settings: ServeSettings | None = None):
    settings = settings or ServeSettings()
    metrics = Metrics()
    service = RewardService(reward, settings, metrics)
    provenance = reward.provenance

    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        yield
        service.closing = True
        await service.batcher.stop()  # uvicorn has already let in-flight requests finish

    app = FastAPI(
        title="cdr reward service",
        version=provenance["cdr_version"],
        lifespan=lifespan,
        description="Density-ratio rewards log p_strong(y|x) - log p_weak(y|x) over HTTP.",
    )
    app.state.service = service
    app.state.exiting = None  # uvicorn_server sets it: () -> True once shutdown has begun
    app.add_middleware(Guard, settings=settings, metrics=metrics, state=app.state)
    _add_error_handlers(app)
    # registered in this order so that openapi.json lists the paths as it always has
    _add_health_routes(app, service, provenance)
    _add_reward_route(app, service, provenance)
    _add_openrlhf_route(app, service)
    _add_completions_route(app, service, provenance)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return JSONResponse(
            error_body(exc.status, exc.message, param=exc.param, detail=exc.detail),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        refusal = next((e for e in exc.errors() if e.get("type") == REQUEST_ERROR), None)
        if refusal is not None:
            return JSONResponse(error_body(422, refusal["msg"], param=refusal["ctx"]["param"]), status_code=422)
        errors = [{k: _finite(v) for k, v in e.items() if k in ("type", "loc", "msg", "ctx")} for e in exc.errors()]
        where = [".".join(str(x) for x in e.get("loc", ()) if x != "body") for e in errors]
        message = "; ".join(f"{w or 'body'}: {e.get('msg', '')}" for w, e in zip(where, errors))
        return JSONResponse(error_body(422, message, param=where[0] if where else None, detail=errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )


def _add_health_routes(app: FastAPI, service: RewardService, provenance: dict) -> None:
    """/health (open to liveness probes) and /metrics (Prometheus)."""

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(
            status="shutting down" if service.closing else "ok",
            strong=provenance["strong"],
            weak=provenance["weak"],
            queue_depth=service.batcher.queued_rows,
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service.metrics.queue.set(service.batcher.queued_rows)
        return PlainTextResponse(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_reward_route(app: FastAPI, service: RewardService, provenance: dict) -> None:
    """cdr's own protocol: conversations in, one reward (with its parts) per conversation out."""

    @app.post("/v1/reward", response_model=RewardResponse)
    async def score(body: RewardRequest, request: Request) -> RewardResponse:
        convs = service.conversations([[m.model_dump() for m in c] for c in body.conversations], "conversations")
        await run_in_threadpool(service.check_lengths, convs, "conversations")
        eot = service.reward.config.include_eot
        results = await service.score(request, convs, [eot] * len(convs))
        service.metrics.rows.labels("/v1/reward").inc(len(convs))
        return RewardResponse(results=[reward_item(r) for r in results], provenance=provenance)


def _add_openrlhf_route(app: FastAPI, service: RewardService) -> None:
    """OpenRLHF's remote reward model: templated queries in, one reward per query out, always."""
    settings = service.settings

    @app.post("/get_reward", response_model=OpenRLHFResponse)
    async def get_reward(body: OpenRLHFRequest, request: Request) -> OpenRLHFResponse:
        service.check_rows(len(body.query), "query")

        async def prepare_and_score():
            rows = await run_in_threadpool(service.prepare_rl_rows, body.query, body.prompts)
            good = [i for i, (conv, _) in enumerate(rows) if conv is not None]
            return rows, good, await service.score(request, [rows[i][0] for i in good], [rows[i][1] for i in good])

        work = asyncio.ensure_future(prepare_and_score())

        def answer(out) -> OpenRLHFResponse:
            return _openrlhf_response(service, *out)

        if settings.heartbeat_s > 0:
            try:
                done, _ = await asyncio.wait({work}, timeout=settings.heartbeat_s)
            except asyncio.CancelledError:
                work.cancel()
                raise
            if not done:  # slow: commit to 200 and keep the connection alive until the answer
                return StreamingResponse(_heartbeat(work, answer, settings.heartbeat_s), media_type="application/json")
        return answer(await work)


def _openrlhf_response(service: RewardService, rows: list[RLRow], good: list[int], results: list) -> OpenRLHFResponse:
    """The rewards of every row (``unscorable_reward`` where ``rows`` or the scoring gave a reason), counted
    in the metrics."""
    metrics, settings, include_eot = service.metrics, service.settings, service.reward.config.include_eot
    reasons: list[str | None] = [None if conv is not None else why for conv, why in rows]
    scored: list[Any] = [None] * len(rows)
    for i, r in zip(good, results):
        scored[i] = r
        if r.reward is None:
            reasons[i] = "unscorable"
    for why in reasons:
        if why:
            metrics.unscorable.labels(why).inc()
    metrics.rows.labels("/get_reward").inc(len(rows))
    fallback = settings.unscorable_reward
    rewards = [fallback if why else float(r.reward) for r, why in zip(scored, reasons)]
    extra: dict[str, list[float]] = {}
    if settings.extra_logs == "full":
        extra = {
            "strong_logprob": [0.0 if why else float(r.strong_logprob) for r, why in zip(scored, reasons)],
            "weak_logprob": [0.0 if why else float(r.weak_logprob) for r, why in zip(scored, reasons)],
            "cdr_unscorable": [1.0 if why else 0.0 for why in reasons],
            "cdr_no_eos": [0.0 if conv is None or eot or not include_eot else 1.0 for conv, eot in rows],
        }
    return OpenRLHFResponse(rewards=rewards, scores=rewards, extra_logs=extra)


def _add_completions_route(app: FastAPI, service: RewardService, provenance: dict) -> None:
    """The prompt-scoring part of vLLM's /v1/completions (``echo`` with ``logprobs``, at most one greedy token)."""

    @app.post("/v1/completions", response_model=CompletionResponse, response_model_exclude_none=False)
    async def completions(body: CompletionRequest, request: Request) -> CompletionResponse:
        side = _served_side(body.model, provenance)
        scorer = service.scorers[side]
        k = body.logprobs or 0
        greedy = body.max_tokens == 1
        if (k or greedy) and not scorer.backend.has_top_logprobs:
            raise ServiceError(
                422,
                f"the {scorer.backend.name} backend serving '{side}' returns no top-k log-probs: "
                "use logprobs=0 and max_tokens=0 (the prompt's own log-probs still come back)",
            )
        # tokenizing text is CPU work: off the event loop, after a length check that needs no tokenizing
        prompts = await run_in_threadpool(_checked_prompts, body.prompt, scorer, service, side)
        results = await service.run(request, PromptBatch(side), [PromptRow(ids, k, greedy) for ids in prompts])
        service.metrics.rows.labels("/v1/completions").inc(len(prompts))
        choices = [_choice(i, ids, res, body, scorer.tokenizer) for i, (ids, res) in enumerate(zip(prompts, results))]
        n_prompt = sum(len(p) for p in prompts)
        return CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model or side,
            choices=choices,
            usage=CompletionUsage(
                prompt_tokens=n_prompt,
                completion_tokens=body.max_tokens * len(prompts),
                total_tokens=n_prompt + body.max_tokens * len(prompts),
            ),
        )


async def _heartbeat(work: asyncio.Future, answer, every_s: float):
    """A body of whitespace, one space every ``every_s`` while ``work`` runs, then the JSON answer (leading
    whitespace is valid JSON). Clients whose timeout runs between received bytes (``requests``, OpenRLHF up
    to 0.9.x) wait for a long batch instead of giving up after 180 s. If the work fails the connection is
    cut before the body is complete, which the client sees as a failed try."""
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=every_s)
            if done:
                break
            yield b" "
        yield answer(work.result()).model_dump_json().encode()
    finally:
        work.cancel()


def _checked_prompts(prompt, scorer, service: RewardService, side: str) -> list[list[int]]:
    settings = service.settings
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    if not prompt:
        raise ServiceError(422, "prompt is empty", param="prompt")
    service.check_rows(len(prompt), "prompt")
    for i, p in enumerate(prompt):
        if isinstance(p, str) and len(p) > service.max_chars[side]:
            raise ServiceError(
                422,
                f"prompt[{i}] has {len(p)} characters, which cannot fit in {settings.max_tokens} tokens",
                param=f"prompt[{i}]",
            )
    prompts = [scorer.tokenizer(p).input_ids if isinstance(p, str) else list(p) for p in prompt]
    vocab = scorer.backend.vocab_size if scorer.backend.vocab_size is not None else len(scorer.tokenizer)
    for i, ids in enumerate(prompts):
        if not ids:
            raise ServiceError(422, f"prompt[{i}] is empty", param=f"prompt[{i}]")
        if len(ids) > settings.max_tokens:
            raise ServiceError(
                422, f"prompt[{i}] has {len(ids)} tokens, at most {settings.max_tokens}", param=f"prompt[{i}]"
            )
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ServiceError(
                422,
                f"prompt[{i}] has token ids outside the vocabulary (0..{vocab - 1}): {bad[:5]}",
                param=f"prompt[{i}]",
            )
    return prompts


def _served_side(model: str | None, provenance: dict) -> str:
    if model in (None, "", "strong", provenance["strong"]):
        return "strong"
    if model in ("weak", provenance["weak"]):
        return "weak"
    raise ServiceError(
        404,
        f"model {model!r} is not served here; use 'strong' ({provenance['strong']}) or 'weak' ({provenance['weak']})",
    )


def _choice(index: int, ids: list[int], result: PromptResult, body: CompletionRequest, tokenizer) -> CompletionChoice:
    lps, top, greedy = result

    def name(token_id: int) -> str:
        return f"token_id:{token_id}" if body.return_tokens_as_token_ids else tokenizer.decode([token_id])

    def top_dict(position: int) -> dict[str, float]:
        """The top k after ``position``; the actual token is added by the caller, as vLLM does."""
        if top is None:
            return {}
        top_ids, values = top
        return {name(int(t)): float(v) for t, v in zip(top_ids[position], values[position])}

    tokens: list[int] = list(ids) if body.echo else []
    token_lps: list[float | None] = ([None] + [float(x) for x in lps]) if body.echo else []
    tops: list[dict[str, float] | None] = []
    if body.echo:
        tops = [None] + [top_dict(p - 1) | {name(t): float(lp)} for p, (t, lp) in enumerate(zip(ids[1:], lps), start=1)]
    if greedy is not None:
        next_id, next_lp = greedy
        tokens.append(next_id)
        token_lps.append(next_lp)
        tops.append(top_dict(len(ids) - 1) | {name(next_id): next_lp})
    strings = [name(t) for t in tokens]
    offsets, at = [], 0
    for s in strings:
        offsets.append(at)
        at += len(s)
    text = "".join(tokenizer.decode([t]) for t in tokens)
    logprobs = None
    if body.logprobs is not None:
        logprobs = CompletionLogprobs(text_offset=offsets, token_logprobs=token_lps, tokens=strings, top_logprobs=tops)
    return CompletionChoice(
        index=index, text=text, logprobs=logprobs, prompt_token_ids=list(ids) if body.echo else None
    )
