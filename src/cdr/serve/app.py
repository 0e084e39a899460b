"""The reward service (FastAPI): thin routes over a ``DensityRatio`` and one micro-batching model worker.

``create_app(reward, settings)`` builds the app; ``cdr serve`` runs it with uvicorn. Limits answer with a
message instead of failing late: body size (413), rows per request (413), sequence length and malformed
input (422), a full queue (503 with Retry-After), a missing or wrong bearer token (401).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from cdr.backends import LogprobRequest
from cdr.conversation import Conversation, ConversationError
from cdr.reward import DensityRatio
from cdr.serve.batcher import MicroBatcher, QueueFull
from cdr.serve.openrlhf import SplitError, split_query
from cdr.serve.protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
                                CompletionUsage, Health, OpenRLHFRequest, OpenRLHFResponse, RewardItem,
                                RewardRequest, RewardResponse)
from cdr.span import Unscorable


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32  # rows per model batch
    max_wait_ms: float = 10.0  # how long a batch waits for company
    max_queue: int = 1024  # rows waiting; beyond this requests get 503
    max_rows: int = 256  # rows per request; beyond this 413
    max_body_bytes: int = 8 << 20
    max_tokens: int = 4096  # tokens per rendered sequence; beyond this 422
    api_key: str | None = None
    retry_after_s: int = 1


class ServiceError(Exception):
    def __init__(self, status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.detail, self.headers = status, message, detail, headers


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("cdr_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.rows = Counter("cdr_rows", "rows (conversations or prompts) scored, by endpoint", ["endpoint"], registry=self.registry)
        self.latency = Histogram("cdr_request_seconds", "request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.queue = Gauge("cdr_queue_rows", "rows waiting for the model", registry=self.registry)
        self.batch = Histogram("cdr_batch_rows", "rows per model batch", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.disconnects = Counter("cdr_client_disconnects", "requests abandoned by their client", registry=self.registry)


class RewardService:
    """What the routes call: validation, length limits, and the model work run on the batcher's thread."""

    def __init__(self, reward: DensityRatio, settings: ServeSettings, metrics: Metrics):
        self.reward, self.settings, self.metrics = reward, settings, metrics
        self.batcher = MicroBatcher(self._run, max_batch=settings.max_batch, max_wait=settings.max_wait_ms / 1000,
                                    max_queue=settings.max_queue, on_batch=metrics.batch.observe)
        self.scorers = {"strong": reward.strong, "weak": reward.weak}
        self.closing = False

    # --- runs on the model thread -------------------------------------------------------------------
    def _run(self, key: tuple, items: list[Any]) -> list[Any]:
        if key[0] == "reward":
            return self.reward.score(items)
        backend = self.scorers[key[1]].backend
        scorable = [i for i, (ids, _k, _g) in enumerate(items) if len(ids) > 1]
        lps = backend.response_logprobs([LogprobRequest(tuple(items[i][0]), 1) for i in scorable])
        out: list[Any] = [(np.zeros(0), None, None) for _ in items]
        for i, lp in zip(scorable, lps):
            out[i] = (lp, None, None)
        for i, (ids, k, greedy) in enumerate(items):
            top = backend.next_token_top_logprobs(ids, k) if k else None  # every position
            if greedy:  # the one generated token: only the last position's distribution is needed
                next_ids, next_lps = top if top is not None else backend.next_token_top_logprobs(ids, 1, last_only=True)
                out[i] = (out[i][0], top, (int(next_ids[-1][0]), float(next_lps[-1][0])))
            else:
                out[i] = (out[i][0], top, None)
        return out

    # --- called from the routes ---------------------------------------------------------------------
    async def run(self, request, key: tuple, items: list[Any]) -> list[Any]:
        """Queue the job; give up (and drop it) if the client disconnects first."""
        self.metrics.queue.set(self.batcher.queued_rows + len(items))
        task = asyncio.ensure_future(self.batcher.submit(key, items))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.1)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    task.cancel()
                    self.metrics.disconnects.inc()
                    raise ServiceError(499, "client disconnected")
        except QueueFull as exc:
            raise ServiceError(503, f"the queue is full ({exc}); retry later",
                               headers={"Retry-After": str(self.settings.retry_after_s)}) from None
        finally:
            self.metrics.queue.set(self.batcher.queued_rows)

    def check_rows(self, n: int, field: str) -> None:
        if n > self.settings.max_rows:
            raise ServiceError(413, f"{n} rows in '{field}', at most {self.settings.max_rows} per request")

    def conversations(self, raw: list[list[dict[str, str]]], field: str) -> list[Conversation]:
        self.check_rows(len(raw), field)
        convs = []
        for i, messages in enumerate(raw):
            try:
                convs.append(Conversation.from_messages(messages, field=f"{field}[{i}]"))
            except ConversationError as exc:
                raise ServiceError(422, f"{exc.field}: {exc.message}") from None
        return convs

    def check_lengths(self, convs: list[Conversation], field: str) -> None:
        """Tokenize under both models' renderings; refuse what exceeds the limit (or cannot be scored)."""
        r = self.reward
        for i, conv in enumerate(convs):
            for role, scorer, renderer in (("strong", r.strong, r.strong.renderer), ("weak", r.weak, r.weak_renderer)):
                try:
                    n = len(scorer.span(conv, renderer, r.config.include_eot).token_ids)
                except Unscorable as exc:
                    raise ServiceError(422, f"{field}[{i}]: the {role} model cannot score it: {exc}") from None
                if n > self.settings.max_tokens:
                    raise ServiceError(422, f"{field}[{i}]: {n} tokens under the {role} model, at most "
                                       f"{self.settings.max_tokens} per sequence")


ROUTES = ("/v1/reward", "/get_reward", "/v1/completions", "/health", "/metrics", "/openapi.json", "/docs")


class LimitsAndMetrics:
    """Plain ASGI middleware (so disconnect detection in the routes keeps working): body-size limits before
    any parsing, and request counts and latency per endpoint."""

    def __init__(self, app, settings: ServeSettings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in ROUTES else "other"  # bounded label values
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        error = None
        if scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            if length is None:
                error = (411, "a Content-Length header is required")
            elif not length.isdigit():
                error = (400, "Content-Length is not a number")
            elif int(length) > self.settings.max_body_bytes:
                error = (413, f"the body has {int(length)} bytes, at most {self.settings.max_body_bytes}")
        try:
            if error:
                await JSONResponse({"error": error[1]}, status_code=error[0])(scope, receive, send_and_record)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def reward_item(result) -> RewardItem:
    return RewardItem(reward=result.reward, strong_logprob=result.strong_logprob, weak_logprob=result.weak_logprob,
                      strong_tokens=result.strong_tokens, weak_tokens=result.weak_tokens, truncated=result.truncated,
                      domain=result.domain, error=result.error)


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

    app = FastAPI(title="cdr reward service", version=provenance["cdr_version"], lifespan=lifespan,
                  description="Density-ratio rewards log p_strong(y|x) - log p_weak(y|x) over HTTP.")
    app.state.service = service
    app.add_middleware(LimitsAndMetrics, settings=settings, metrics=metrics)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        body = {"error": exc.message} | ({"detail": exc.detail} if exc.detail is not None else {})
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), settings.api_key.encode()):
            raise ServiceError(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorized)]

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(status="shutting down" if service.closing else "ok", strong=provenance["strong"],
                      weak=provenance["weak"], queue_depth=service.batcher.queued_rows)

    @app.get("/metrics", dependencies=auth, response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics.queue.set(service.batcher.queued_rows)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/reward", response_model=RewardResponse, dependencies=auth)
    async def score(body: RewardRequest, request: Request) -> RewardResponse:
        convs = service.conversations([[m.model_dump() for m in c] for c in body.conversations], "conversations")
        await run_in_threadpool(service.check_lengths, convs, "conversations")
        results = await service.run(request, ("reward",), convs)
        metrics.rows.labels("/v1/reward").inc(len(convs))
        return RewardResponse(results=[reward_item(r) for r in results], provenance=provenance)

    @app.post("/get_reward", response_model=OpenRLHFResponse, dependencies=auth)
    async def get_reward(body: OpenRLHFRequest, request: Request) -> OpenRLHFResponse:
        prompts = body.prompts
        if prompts is not None and len(prompts) != len(body.query):
            raise ServiceError(422, f"'prompts' has {len(prompts)} items but 'query' has {len(body.query)}")
        messages, problems = [], []
        for i, query in enumerate(body.query):
            try:
                messages.append(split_query(query, prompts[i] if prompts else None))
            except SplitError as exc:
                problems.append({"row": i, "error": str(exc)})
        if problems:
            raise ServiceError(422, f"{len(problems)} of {len(body.query)} queries cannot be split into prompt and "
                               "response", detail=problems)
        convs = service.conversations(messages, "query")
        await run_in_threadpool(service.check_lengths, convs, "query")
        results = await service.run(request, ("reward",), convs)
        bad = [{"row": i, "error": r.error} for i, r in enumerate(results) if r.reward is None]
        if bad:
            raise ServiceError(422, f"{len(bad)} queries could not be scored", detail=bad)
        metrics.rows.labels("/get_reward").inc(len(convs))
        rewards = [float(r.reward) for r in results]
        return OpenRLHFResponse(rewards=rewards, scores=rewards, extra_logs={
            "strong_logprob": [r.strong_logprob for r in results], "weak_logprob": [r.weak_logprob for r in results]})

    @app.post("/v1/completions", response_model=CompletionResponse, response_model_exclude_none=False,
              dependencies=auth)
    async def completions(body: CompletionRequest, request: Request) -> CompletionResponse:
        side = _served_side(body.model, provenance)
        scorer = service.scorers[side]
        if body.stream:
            raise ServiceError(422, "stream is not supported: this endpoint returns prompt log-probs in one response")
        if body.max_tokens > 1:
            raise ServiceError(422, f"max_tokens={body.max_tokens}: this server scores prompts and generates at most "
                               "1 (greedy) token; use max_tokens 0 or 1")
        prompts = _token_prompts(body.prompt, scorer.tokenizer)
        service.check_rows(len(prompts), "prompt")
        vocab = scorer.backend.vocab_size if hasattr(scorer.backend, "vocab_size") else len(scorer.tokenizer)
        for i, ids in enumerate(prompts):
            if not ids:
                raise ServiceError(422, f"prompt[{i}] is empty")
            if len(ids) > settings.max_tokens:
                raise ServiceError(422, f"prompt[{i}] has {len(ids)} tokens, at most {settings.max_tokens}")
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ServiceError(422, f"prompt[{i}] has token ids outside the vocabulary (0..{vocab - 1}): {bad[:5]}")
        k = body.logprobs or 0
        greedy = body.max_tokens == 1
        if (k or greedy) and not scorer.backend.has_top_logprobs:
            raise ServiceError(422, f"the {scorer.backend.name} backend serving '{side}' returns no top-k log-probs: "
                               "use logprobs=0 and max_tokens=0 (the prompt's own log-probs still come back)")
        results = await service.run(request, ("echo", side), [(ids, k, greedy) for ids in prompts])
        metrics.rows.labels("/v1/completions").inc(len(prompts))
        choices = [_choice(i, ids, res, body, scorer.tokenizer) for i, (ids, res) in enumerate(zip(prompts, results))]
        n_prompt = sum(len(p) for p in prompts)
        return CompletionResponse(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model or side,
                                  choices=choices, usage=CompletionUsage(prompt_tokens=n_prompt,
                                  completion_tokens=body.max_tokens * len(prompts),
                                  total_tokens=n_prompt + body.max_tokens * len(prompts)))

    return app


def _served_side(model: str | None, provenance: dict) -> str:
    if model in (None, "", "strong", provenance["strong"]):
        return "strong"
    if model in ("weak", provenance["weak"]):
        return "weak"
    raise ServiceError(404, f"model {model!r} is not served here; use 'strong' ({provenance['strong']}) or "
                       f"'weak' ({provenance['weak']})")


def _token_prompts(prompt, tokenizer) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    if not prompt:
        raise ServiceError(422, "prompt is empty")
    return [tokenizer(p).input_ids if isinstance(p, str) else list(p) for p in prompt]


def _choice(index: int, ids: list[int], result, body: CompletionRequest, tokenizer) -> CompletionChoice:
    lps, top, greedy = result  # prompt log-probs; top-k per position (or None); the greedy token (or None)

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
    return CompletionChoice(index=index, text=text, logprobs=logprobs, prompt_token_ids=list(ids) if body.echo else None)
