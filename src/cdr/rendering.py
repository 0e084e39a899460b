"""Conversation -> text, per model: its own chat template, or a plain format for template-less models.

The renderer produces two texts: the prompt as the model would see it when asked to answer
(``add_generation_prompt``), and the whole conversation including the scored response. ``span.py``
turns them into token ids and finds where the response starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from cdr.conversation import Conversation

RENDERINGS = ("own", "shared")


@dataclass(frozen=True)
class PlainFormat:
    """The format for a model without a chat template (a base model). ``{content}`` marks the message text.

    The scored response is rendered as ``assistant`` with its text after ``{content}`` replaced by
    ``end_of_turn``; ``{eos}`` there stands for the tokenizer's end-of-sequence token.
    """

    system: str = "{content}\n\n"
    user: str = "User: {content}\n\n"
    assistant: str = "Assistant: {content}\n\n"
    end_of_turn: str = "{eos}"

    def __post_init__(self) -> None:
        for name in ("system", "user", "assistant"):
            if getattr(self, name).count("{content}") != 1:
                raise ValueError(f"plain format field '{name}' must contain '{{content}}' exactly once")

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RenderedText:
    """``full[response_start:]`` is the scored turn (plus end-of-turn); ``full[content_start:content_end]`` is
    the response text itself, or None when the template changed it beyond recognition."""

    prompt: str
    full: str
    content_start: int | None
    content_end: int | None


class Renderer:
    """Renders conversations for one tokenizer: with its chat template, or with ``plain`` when it has none."""

    def __init__(self, tokenizer, plain: PlainFormat | None = None, use_template: bool = True):
        self.tokenizer = tokenizer
        self.plain = plain or PlainFormat()
        template = getattr(tokenizer, "chat_template", None) if use_template else None
        self.template: str | None = template if isinstance(template, str) and template.strip() else None

    @property
    def description(self) -> str:
        return "chat_template" if self.template else "plain"

    def sha256(self) -> str:
        if self.template:
            return hashlib.sha256(self.template.encode()).hexdigest()
        return self.plain.sha256()

    def render(self, conversation: Conversation) -> RenderedText:
        if self.template:
            return self._render_template(conversation)
        return self._render_plain(conversation)

    def _render_template(self, conversation: Conversation) -> RenderedText:
        apply = self.tokenizer.apply_chat_template
        prompt = apply([m.as_dict() for m in conversation.prompt], tokenize=False, add_generation_prompt=True)
        full = apply(conversation.as_dicts(), tokenize=False)
        content = conversation.response
        start = full.rfind(content)
        if start < 0 and content.strip():  # templates that trim message text
            content = content.strip()
            start = full.rfind(content)
        if start < 0:
            return RenderedText(prompt, full, None, None)
        return RenderedText(prompt, full, start, start + len(content))

    def _render_plain(self, conversation: Conversation) -> RenderedText:
        fmt = self.plain
        parts = [getattr(fmt, m.role).replace("{content}", m.content) for m in conversation.prompt]
        head, _, _ = fmt.assistant.partition("{content}")
        eos = self.tokenizer.eos_token or ""
        before = "".join(parts) + head
        content_end = len(before) + len(conversation.response)
        full = before + conversation.response + fmt.end_of_turn.replace("{eos}", eos)
        # The separator space after "Assistant:" goes with the response, as BPE tokenizers merge it into the
        # first word (" The"); a prompt ending in a space would not tokenize as a prefix of the whole.
        return RenderedText(before.rstrip(" "), full, len(before), content_end)
