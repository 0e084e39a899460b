"""Conversations as OpenAI-style message lists, validated once at the edge.

The scored turn is always the last message, which must come from the assistant; everything before it
is the prompt. Validation errors name the field (``messages[2].role``) so a data error can be fixed
without reading a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")


class ConversationError(ValueError):
    """A conversation that cannot be scored as given. ``field`` names the offending field."""

    def __init__(self, field: str, message: str, kind: str = "invalid conversation"):
        self.field = field
        self.message = message
        self.kind = kind  # a short label, counted per kind in run summaries
        super().__init__(f"field '{field}': {message}")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    """A prompt (zero or more system/user/assistant turns) followed by the scored assistant response."""

    messages: tuple[Message, ...]

    @property
    def prompt(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @property
    def response(self) -> str:
        return self.messages[-1].content

    def as_dicts(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]

    @classmethod
    def from_messages(cls, messages: Any, field: str = "messages") -> Conversation:
        return cls(tuple(validate_messages(messages, field, require_response=True)))

    @classmethod
    def from_prompt_response(
        cls, prompt: Any, response: Any, prompt_field: str = "prompt", response_field: str = "response"
    ) -> Conversation:
        turns = validate_prompt(prompt, prompt_field)
        _check_content(response, response_field)
        return cls(tuple(turns) + (Message("assistant", response),))


def validate_prompt(prompt: Any, field: str = "prompt") -> list[Message]:
    """A prompt: a non-empty string (one user turn) or a message list with a user turn, ending with a user turn."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConversationError(
                field, "expected non-empty text or a message list, got an empty string", "empty text"
            )
        return [Message("user", prompt)]
    turns = validate_messages(prompt, field, require_response=False)
    if not any(m.role == "user" for m in turns):
        raise ConversationError(field, "the prompt has no user turn", "no user turn")
    if turns[-1].role != "user":
        raise ConversationError(
            f"{field}[{len(turns) - 1}].role",
            "a prompt must end with a user turn (the response goes in its own field)",
            "bad role",
        )
    return turns


def _check_content(content: Any, field: str) -> None:
    if not isinstance(content, str):
        raise ConversationError(field, f"expected a string, got {type(content).__name__}", "wrong type")
    if not content.strip():
        raise ConversationError(field, "expected non-empty text, got an empty string", "empty text")


def validate_messages(messages: Any, field: str, require_response: bool) -> list[Message]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ConversationError(field, f"expected a list of messages, got {type(messages).__name__}", "wrong type")
    if not messages:
        raise ConversationError(field, "expected at least one message, got an empty list", "empty text")
    out: list[Message] = []
    for i, raw in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(raw, Mapping):
            raise ConversationError(
                where, f"expected a message object with 'role' and 'content', got {type(raw).__name__}", "wrong type"
            )
        role = raw.get("role")
        if role not in ROLES:
            raise ConversationError(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {role!r}", "bad role")
        if "content" not in raw:
            raise ConversationError(f"{where}.content", "missing", "missing field")
        _check_content(raw["content"], f"{where}.content")
        if role == "system" and i != 0:
            raise ConversationError(
                f"{where}.role", "a system message is only allowed as the first message", "bad role"
            )
        out.append(Message(role, raw["content"]))
    if require_response:
        if out[-1].role != "assistant":
            raise ConversationError(
                f"{field}[{len(out) - 1}].role",
                f"the last message is the scored response and must be 'assistant', got {out[-1].role!r}",
                "bad role",
            )
        if not any(m.role == "user" for m in out[:-1]):
            raise ConversationError(field, "expected a user turn before the scored assistant response", "no user turn")
    return out
