"""OpenRLHF sends the policy's templated text: recover the conversation from ``query`` and ``prompts[i]``.

The prompt part is parsed back into messages when it uses a chat template we know (ChatML, Llama 3,
Gemma); otherwise the whole prompt text is one user message. The response is what follows the prompt
in the query, with trailing end-of-turn/end-of-text markers removed (our renderers add their own).
Whether the query ended with such a marker is reported: a response without one was cut off at the
policy's token limit, and the service then leaves the end-of-turn token out of the scored span.

``SplitError.reason`` is a short label (``no_prompt``, ``prompt_mismatch``, ``empty_response``) that the
service counts and reports per row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TEMPLATES = (
    re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)<\|im_end\|>", re.S),  # ChatML: SmolLM2, Qwen
    # Llama 3
    re.compile(r"<\|start_header_id\|>(system|user|assistant)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S),
    re.compile(r"<start_of_turn>(user|model)\n(.*?)<end_of_turn>", re.S),  # Gemma
)
END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


class SplitError(ValueError):
    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Split:
    messages: list[dict[str, str]]
    ended: bool  # the query ended with an end-of-turn / end-of-text marker (the policy stopped by itself)


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    for pattern in TEMPLATES:
        turns = [
            {"role": "assistant" if role == "model" else role, "content": content}
            for role, content in pattern.findall(prompt)
        ]
        if turns:
            return turns
    return [{"role": "user", "content": prompt.strip()}]


def strip_end_markers(text: str) -> str:
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


def split_query(query: str, prompt: str | None) -> Split:
    """The conversation (prompt turns + the assistant response) that ``query`` holds."""
    if prompt is None:
        raise SplitError("no prompts[i] to split the query with (send 'prompts' alongside 'query')", "no_prompt")
    if not query.startswith(prompt):
        raise SplitError("the query does not start with its prompt (was the prompt truncated?)", "prompt_mismatch")
    tail = query[len(prompt) :]
    response = strip_end_markers(tail).lstrip()  # the separator space belongs to the template
    if not response.strip():
        raise SplitError("the response after the prompt is empty", "empty_response")
    ended = len(strip_end_markers(tail)) < len(tail.rstrip())
    return Split(prompt_messages(prompt) + [{"role": "assistant", "content": response}], ended)
