"""Rendered text -> token ids and the exact first token of the response (docs/method.md, pitfalls).

Order of attempts: (1) the prompt's token ids are a prefix of the whole conversation's ids; (2) the
prompt text is a prefix of the whole text and a token starts exactly where the response starts (a token
that straddles the seam is accepted only when its prompt-side part is whitespace, the separator a plain
format or a template puts before the answer); (3) otherwise the row is unscorable, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdr.rendering import RenderedText


class Unscorable(Exception):
    """A row whose response tokens cannot be located exactly. The message says why."""


@dataclass(frozen=True)
class ResponseSpan:
    token_ids: tuple[int, ...]
    start: int  # index of the first scored token
    method: str  # "prefix" or "offsets"
    truncated: bool

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids) - self.start


class Tokenization:
    """Tokenizes rendered text the same way for every call, with exactly one BOS where the model expects one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        bos = tokenizer.bos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        # Some tokenizers add BOS themselves; chat templates often write it into the text as well.
        self.bos_id: int | None = bos if bos is not None and probe and probe[0] == bos else None
        self.has_offsets = bool(getattr(tokenizer, "is_fast", False))

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=self.has_offsets)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]] if self.has_offsets else None
        if self.bos_id is not None:
            if ids and ids[0] == self.bos_id:
                # drop duplicates of a BOS the text already carries (template BOS + tokenizer BOS)
                while len(ids) > 1 and ids[1] == self.bos_id:
                    ids.pop(1)
                    if offsets:
                        offsets.pop(1)
            else:
                ids.insert(0, self.bos_id)
                if offsets is not None:
                    offsets.insert(0, (0, 0))
        return ids, offsets

    def token_at_char(self, text: str, ids: list[int], offsets, char: int, allow_whitespace_seam: bool) -> int | None:
        """Index of the token that starts at ``char``, or None when a token straddles it."""
        head, _ = self.encode(text[:char])
        if ids[: len(head)] == head:
            return len(head)
        if offsets is None:
            return None
        for i, (start, end) in enumerate(offsets):
            if start == end:  # special tokens added outside the text
                continue
            if start >= char:
                return i
            if end > char:  # straddles the seam
                if allow_whitespace_seam and not text[start:char].strip():
                    return i
                return None
        return len(ids)


def locate_response(
    tok: Tokenization, rendered: RenderedText, include_eot: bool = True, max_length: int | None = None
) -> ResponseSpan:
    full_ids, offsets = tok.encode(rendered.full)
    prompt_ids, _ = tok.encode(rendered.prompt)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        start, method = len(prompt_ids), "prefix"
    elif rendered.full.startswith(rendered.prompt):
        start = tok.token_at_char(rendered.full, full_ids, offsets, len(rendered.prompt), allow_whitespace_seam=True)
        if start is None:
            raise Unscorable("a token spans the prompt/response seam (BPE merge); the response start is ambiguous")
        method = "offsets"
    else:
        raise Unscorable(
            "the chat template renders the prompt differently inside the whole conversation, so the prompt is "
            "not a prefix of it"
        )
    end = len(full_ids)
    if not include_eot:
        if rendered.content_end is None:
            raise Unscorable("the template altered the response text, so its end (before end-of-turn) cannot be found")
        end = tok.token_at_char(rendered.full, full_ids, offsets, rendered.content_end, allow_whitespace_seam=False)
        if end is None:
            raise Unscorable("a token spans the response/end-of-turn seam; the response end is ambiguous")
    if offsets is not None and rendered.content_start is not None:
        # The separator a template puts before the response (the space after "Assistant:") is scored only
        # when merged into the response's first token (" The"); as a token of its own (gemma splits " 2" into
        # " " + "2") it belongs to the template, not the response.
        while start < end - 1:
            a, b = offsets[start]
            if a == b or b > rendered.content_start or rendered.full[a:b].strip():
                break
            start += 1
    if start == 0:
        raise Unscorable("the response starts at the first token, which no model predicts (no BOS, no prompt)")
    if end <= start:
        raise Unscorable("the response has no tokens")
    truncated = False
    if max_length is not None and end > max_length:
        if start >= max_length:
            raise Unscorable(f"the prompt alone ({start} tokens) fills the model's context of {max_length} tokens")
        end, truncated = max_length, True
    return ResponseSpan(tuple(full_ids[:end]), start, method, truncated)
