"""Routers: which domain of a recipe a prompt belongs to. Each answers a batch of prompts at once.

- ``RulesRouter``: the first domain (in the recipe's order) with a keyword (whole word, any case) or a
  regular expression matching the last user turn.
- ``LLMRouter``: zero-shot, with no answer to parse: the log-likelihood of each domain's name as the
  answer to a classification prompt, under any model cdr can score with; the most likely name wins.
- ``ColumnRouter``: a precomputed domain per input row.
- ``CallableRouter``: a Python function ``f(messages) -> domain name``.

A router answers None when it has no answer (no rule matched, an empty column, an unscorable prompt); the
recipe's fallback domain is used then.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cdr.conversation import Conversation, Message
from cdr.errors import CdrError
from cdr.recipes.recipe import Recipe


class Router(Protocol):
    def route(self, prompts: Sequence[Sequence[Message]], rows: Sequence[dict | None]) -> list[str | None]: ...


def last_user_turn(prompt: Sequence[Message]) -> str:
    return next((m.content for m in reversed(prompt) if m.role == "user"), "")


class RulesRouter:
    def __init__(self, rules: Sequence[tuple[str, Sequence[str], Sequence[str]]]):
        self.rules = []
        for domain, keywords, patterns in rules:
            # (?<!\w)...(?!\w) rather than \b...\b: keywords such as "c++" end in a non-word character
            alternatives = [r"(?<!\w)" + re.escape(k) + r"(?!\w)" for k in keywords] + list(patterns)
            self.rules.append((domain, re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)))

    def route(self, prompts, rows=None) -> list[str | None]:
        out = []
        for prompt in prompts:
            text = last_user_turn(prompt)
            out.append(next((domain for domain, rx in self.rules if rx.search(text)), None))
        return out


class LLMRouter:
    """Scores ``log p(NAME | classification prompt)`` for each domain name with ``scorer`` (a ``ModelScorer``)."""

    def __init__(self, scorer, domains: dict[str, str], max_chars: int = 2000, include_eot: bool = True):
        self.scorer = scorer
        self.domains = domains  # name -> description
        self.max_chars = max_chars
        self.include_eot = include_eot  # the name then end of turn: "CHAT" cannot win as the start of "CHATTY"

    def classification_prompt(self, text: str) -> list[Message]:
        names = list(self.domains)
        listing = "\n".join(f"- {name}: {description}" for name, description in self.domains.items())
        choices = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        return [
            Message("system", f"Sort the user's request into exactly one category:\n{listing}"),
            Message(
                "user",
                f'Request:\n"""\n{text[: self.max_chars]}\n"""\n\n'
                f"Which category is this request? Answer with the category name only: {choices}.",
            ),
        ]

    def route(self, prompts, rows=None) -> list[str | None]:
        names = list(self.domains)
        convs = [
            Conversation(tuple(self.classification_prompt(last_user_turn(p))) + (Message("assistant", name),))
            for p in prompts
            for name in names
        ]
        scored = self.scorer.logprobs(convs, self.scorer.renderer, self.include_eot)
        out = []
        for i in range(len(prompts)):
            options = scored[i * len(names) : (i + 1) * len(names)]
            totals = [(x.total, name) for x, name in zip(options, names) if not isinstance(x, Exception)]
            out.append(max(totals, key=lambda t: t[0])[1] if totals else None)
        return out


class ColumnRouter:
    def __init__(self, column: str):
        self.column = column

    def route(self, prompts, rows=None) -> list[str | None]:
        rows = rows if rows is not None else [None] * len(prompts)
        out = []
        for row in rows:
            value = (row or {}).get(self.column)
            out.append(str(value) if value not in (None, "") else None)
        return out


class CallableRouter:
    def __init__(self, fn: Callable[[list[dict[str, str]]], Any], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", repr(fn))

    def route(self, prompts, rows=None) -> list[str | None]:
        out = []
        for prompt in prompts:
            try:
                value = self.fn([m.as_dict() for m in prompt])
            except Exception as exc:  # the user's code: one line naming it, not a traceback
                raise CdrError(f"router {self.name} failed: {type(exc).__name__}: {exc}") from None
            if value is not None and not isinstance(value, str):
                raise CdrError(f"router {self.name} returned {value!r}; expected a domain name (a string) or None")
            out.append(value)
        return out


def import_callable(target: str) -> Callable:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CdrError(f"router callable '{target}' cannot be imported: {exc}") from None
    if not callable(obj):
        raise CdrError(f"router callable '{target}' is not callable")
    return obj


def build_router(
    recipe: Recipe, scorer_for: Callable[[str], Any] | None = None, allow_python: bool = False
) -> Router | None:
    """The recipe's router. ``scorer_for(model)`` returns the scorer (a ``ModelScorer``) an LLM router scores
    with, for the recipe's router model ('strong', 'weak' or any model spec): a ``DensityRatio`` passes its
    own, lending its models. A ``python`` router imports and calls code the recipe file names, so it is
    refused unless ``allow_python`` (the reward's ``allow_python_router`` option, flag ``--allow-python-router``)."""
    spec = recipe.router
    if spec.kind == "none":
        return None
    if spec.kind == "rules":
        return RulesRouter(spec.rules)
    if spec.kind == "column":
        return ColumnRouter(spec.column)
    if spec.kind == "python":
        if not allow_python:
            raise CdrError(
                f"recipe '{recipe.name}' has a python router ({spec.callable}), which imports and runs that "
                "code; pass --allow-python-router (allow_python_router: true in a config) if you trust it"
            )
        return CallableRouter(import_callable(spec.callable), spec.callable)
    if scorer_for is None:
        needs = "the reward's models" if spec.model in ("strong", "weak") else "a scorer (scorer_for)"
        raise CdrError(f"an LLM router on the '{spec.model}' model needs {needs}")
    domains = {name: d.description for name, d in recipe.domains.items()}
    return LLMRouter(scorer_for(spec.model), domains, spec.max_chars)


def route(
    recipe: Recipe,
    router: Router | None,
    prompts: Sequence[Sequence[Message]],
    rows: Sequence[dict | None] | None = None,
) -> list[str | None]:
    """Each prompt's domain: the router's answer when it names a domain, else the fallback. Each distinct
    prompt is routed once (an LLM router scores every domain name per prompt)."""
    from cdr.recipes.context import prompt_key

    if not recipe.customizes:
        return [None] * len(prompts)
    if router is None:
        return [recipe.fallback] * len(prompts)
    rows = list(rows) if rows is not None else [None] * len(prompts)

    def key(i: int) -> str:
        column = (rows[i] or {}).get(router.column) if isinstance(router, ColumnRouter) else None
        return prompt_key(prompts[i]) + "\x00" + repr(column)

    first: dict[str, int] = {}
    for i in range(len(prompts)):
        first.setdefault(key(i), i)
    answers = router.route([prompts[i] for i in first.values()], [rows[i] for i in first.values()])
    if isinstance(router, CallableRouter):
        unknown = sorted({a for a in answers if a is not None and a not in recipe.domains})
        if unknown:
            raise CdrError(
                f"router {router.name} returned {unknown[0]!r}, not one of the recipe's domains "
                f"({', '.join(recipe.domains)})"
            )
    by_key = {k: (a if a in recipe.domains else recipe.fallback) for k, a in zip(first, answers)}
    return [by_key[key(i)] for i in range(len(prompts))]
