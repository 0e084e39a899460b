"""Every request and response body the reward service speaks, as pydantic models (the OpenAPI schema).

Three protocols: cdr's own ``/v1/reward``; OpenRLHF's remote reward model (``/get_reward``); and the
part of vLLM's OpenAI-compatible ``/v1/completions`` that returns prompt log-probs (``echo`` with
``logprobs``), so that any backend can serve as a log-prob server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

REQUEST_ERROR = "cdr_request_error"


def request_error(param: str, message: str) -> PydanticCustomError:
    """A refusal of a request whose fields are each valid but do not go together. The app answers it with
    this message and param alone (``{"error": {"message", "type", "param", "code"}}``), not pydantic's list."""
    return PydanticCustomError(REQUEST_ERROR, "{message}", {"message": message, "param": param})


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class RewardRequest(BaseModel):
    """Conversations whose last message is the assistant response to score."""

    model_config = ConfigDict(extra="forbid")

    conversations: list[list[ChatMessage]] = Field(min_length=1)


class RewardItem(BaseModel):
    reward: float | None
    strong_logprob: float | None
    weak_logprob: float | None
    strong_tokens: int | None
    weak_tokens: int | None
    truncated: bool = False
    domain: str | None = None
    error: str | None = None


class RewardResponse(BaseModel):
    results: list[RewardItem]
    provenance: dict[str, Any]


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote reward model call: ``query`` is the full templated text (prompt + response) and
    ``prompts[i]`` the templated prompt it starts with."""

    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: list[Any] | None = None

    # Optional in the schema, required here: a missing 'prompts' gets this message, not "Field required"
    @model_validator(mode="after")
    def _prompts_match_queries(self) -> OpenRLHFRequest:
        if self.prompts is None:
            raise request_error(
                "prompts", "'prompts' is required: cdr splits each query at its prompt (OpenRLHF sends it)"
            )
        if len(self.prompts) != len(self.query):
            raise request_error("prompts", f"'prompts' has {len(self.prompts)} items but 'query' has {len(self.query)}")
        return self


class OpenRLHFResponse(BaseModel):
    """One reward per query, always (a row that cannot be scored gets the server's ``--unscorable-reward``
    and ``extra_logs.cdr_unscorable`` 1.0). ``extra_logs`` holds numbers only (OpenRLHF makes tensors of
    them), or nothing with ``--extra-logs none`` (OpenRLHF 0.8.x cannot merge lists)."""

    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class CompletionRequest(BaseModel):
    """The prompt-scoring subset of vLLM's /v1/completions: ``echo`` returns the prompt tokens with their
    log-probs (entry 0 is None), ``logprobs=k`` adds the top k at each position, and ``max_tokens`` may be
    0 or 1 (one greedy token, as lm-evaluation-harness's ``local-completions`` asks for)."""

    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we ignore (temperature, user, ...)

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int = Field(default=0, ge=0)  # OpenAI defaults to 16; a scoring server to none
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    return_tokens_as_token_ids: bool = False

    @model_validator(mode="after")
    def _scoring_only(self) -> CompletionRequest:
        if self.stream:
            raise request_error(
                "stream", "stream is not supported: this endpoint returns prompt log-probs in one response"
            )
        if self.max_tokens > 1:
            raise request_error(
                "max_tokens",
                f"max_tokens={self.max_tokens}: this server scores prompts and "
                "generates at most 1 (greedy) token; use max_tokens 0 or 1",
            )
        return self


class CompletionLogprobs(BaseModel):
    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["length"] = "length"
    prompt_token_ids: list[int] | None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    detail: Any | None = None  # cdr's addition: the rows at fault, where there are several


class ErrorBody(BaseModel):
    """Every error, in the shape OpenAI clients read."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "shutting down"]
    strong: str
    weak: str
    queue_depth: int
