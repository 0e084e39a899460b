"""Recipe + domain -> the conversation each model scores: criteria, exemplar turns, then the real conversation.

Exemplar blocks are rendered as earlier turns (user: the block's request, assistant: its good answer), so the
scored response reads as the next good answer; each block's bad answer and explanation go in the system
message after the criteria. The blocks are chosen per prompt from a hash of the prompt and the recipe's
seed: every candidate response of one prompt sees the same context (fair, and cacheable), and the choice
does not depend on row order, batch size or machine.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from cdr.conversation import Conversation, Message
from cdr.recipes.recipe import Context, Domain, Exemplar, Recipe


@dataclass(frozen=True)
class Customized:
    """What each model scores for one conversation, and the domain it was routed to (None: no recipe)."""

    strong: Conversation
    weak: Conversation
    domain: str | None


def prompt_key(prompt: Sequence[Message]) -> str:
    return json.dumps([m.as_dict() for m in prompt], ensure_ascii=False, sort_keys=True)


def select_exemplars(recipe: Recipe, domain: Domain, prompt: Sequence[Message]) -> tuple[Exemplar, ...]:
    k = min(recipe.exemplars, len(domain.exemplars))
    if k == 0:
        return ()
    digest = hashlib.sha256(f"{recipe.seed}\x00{domain.name}\x00{prompt_key(prompt)}".encode()).hexdigest()
    picked = sorted(random.Random(digest).sample(range(len(domain.exemplars)), k))  # file order, for readability
    return tuple(domain.exemplars[i] for i in picked)


def contrast_text(exemplars: Sequence[Exemplar]) -> str:
    if len(exemplars) == 1:
        e = exemplars[0]
        return f"In the example conversation, a bad answer would have been:\n{e.bad}\nWhy it is worse: {e.explanation}"
    parts = ["In the example conversations, bad answers would have been:"]
    for i, e in enumerate(exemplars, 1):
        parts.append(f"Example {i}: {e.bad}\nWhy it is worse: {e.explanation}")
    return "\n\n".join(parts)


def with_context(conversation: Conversation, context: Context | None, exemplars: Sequence[Exemplar]) -> Conversation:
    """The conversation with ``context`` in front: a system message (criteria, contrast), then exemplar turns.

    A system message the conversation already has follows the recipe's text in the same system message."""
    if context is None:
        return conversation
    shown = exemplars if context.exemplars != "none" else ()
    system = [context.criteria] if context.criteria else []
    if context.contrast and shown:
        system.append(contrast_text(shown))
    messages = list(conversation.messages)
    if messages[0].role == "system":
        system.append(messages.pop(0).content)
    turns: list[Message] = []
    for e in shown:
        turns += [Message("user", e.prompt), Message("assistant", e.good if context.exemplars == "good" else e.bad)]
    head = [Message("system", "\n\n".join(system))] if system else []
    return Conversation(tuple(head + turns + messages))


def customize(recipe: Recipe, conversation: Conversation, domain_name: str | None) -> Customized:
    if not recipe.customizes or domain_name is None:
        return Customized(conversation, conversation, None)
    domain = recipe.domains[domain_name]
    exemplars = select_exemplars(recipe, domain, conversation.prompt)
    strong = with_context(conversation, domain.strong_context(recipe.use_criteria), exemplars)
    if recipe.placement == "both":
        weak = strong
    elif recipe.placement == "strong":
        weak = conversation
    else:
        weak = with_context(conversation, domain.weak, exemplars)
    return Customized(strong, weak, domain_name)
