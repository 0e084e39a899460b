"""Options declared once: a dataclass field carries its help text, its allowed values and its command-line
flag, and ``check`` validates a whole instance against them (TRL's config dataclasses, with the checks that
TRL leaves to argparse done here, so a YAML file, a Python call and a flag get the same one-line error).

A leaf module: it imports nothing from cdr but the error type.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import MISSING, field
from typing import Any

from cdr.errors import CdrError


def option(
    default: Any = MISSING,
    *,
    help: str,
    default_factory: Any = MISSING,
    choices: Sequence[str] | None = None,
    minimum: int | None = None,
    above: float | None = None,
    maximum: float | None = None,
    pattern: str | None = None,
    expected: str | None = None,
    name: str | None = None,
    flag: str | None = None,
    flag_help: str | None = None,
    per_side: bool = False,
    cli: bool = True,
) -> Any:
    """A dataclass field with what the CLI, the YAML loader and ``check`` need to know about it.

    ``minimum``: a whole number >= it. ``above``/``maximum``: a number > above (and <= maximum).
    ``pattern``: a string matching it in full (``expected`` says in words what matches). ``name``: the
    option's name in YAML, keyword arguments and its flag, when it is not the field's (``remote_timeout_s``
    for the openai backend's ``timeout_s``). ``flag``: a boolean whose default is True gets this flag, which
    turns it off (``no-prompt-sharing``; ``flag_help`` is that flag's help). ``per_side``: one option per model
    (``strong_url``, ``weak_url``), ``{side}`` in the help names the model. ``cli``: False keeps the option off
    the command line (YAML and Python only).
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "minimum": minimum,
        "above": above,
        "maximum": maximum,
        "pattern": pattern,
        "expected": expected,
        "name": name,
        "flag": flag,
        "flag_help": flag_help,
        "per_side": per_side,
        "cli": cli,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flat_name(f: dataclasses.Field, side: str | None = None) -> str:
    """The option's name in YAML and keyword arguments: ``batch_tokens``, ``strong_url`` (side 'strong')."""
    if f.metadata.get("per_side") and side:
        return f"{side}_{f.name}"
    return f.metadata.get("name") or f.name


def flag_of(f: dataclasses.Field, side: str | None = None) -> str:
    """The command-line flag of a field: ``--batch-tokens``, ``--strong-url``, ``--no-prompt-sharing``."""
    return "--" + (f.metadata.get("flag") or flat_name(f, side)).replace("_", "-")


def problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``f``, in words ('must be ...'), or None if it is fine."""
    meta = f.metadata
    if value is None and f.default is None:
        return None
    if meta.get("choices") is not None:
        return None if value in meta["choices"] else f"must be one of {', '.join(meta['choices'])}"
    if meta.get("minimum") is not None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= meta["minimum"]
        return None if ok else f"must be a whole number >= {meta['minimum']}"
    if meta.get("above") is not None:
        top = meta.get("maximum")
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value > meta["above"]
            and (top is None or value <= top)
        )
        bound = f"in ({meta['above']:g}, {top:g}]" if top is not None else f"a number > {meta['above']:g}"
        return None if ok else f"must be {bound}"
    if meta.get("pattern") is not None:
        ok = isinstance(value, str) and re.fullmatch(meta["pattern"], value) is not None
        return None if ok else f"must be {meta.get('expected') or 'a string matching ' + meta['pattern']}"
    if isinstance(f.default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if f.type in ("str", "str | None") and not isinstance(value, str):
        return "must be a string"
    return None


def check(obj: Any, side: str | None = None) -> None:
    """Raise a one-line ``CdrError`` naming the first option of ``obj`` whose value is not allowed:
    ``dtype (--dtype) must be one of auto, float32, ..., got 'fp16'``."""
    for f in dataclasses.fields(obj):
        if not f.metadata.get("help"):
            continue
        value = getattr(obj, f.name)
        wrong = problem(f, value)
        if wrong:
            if f.metadata.get("per_side") and side is None:  # a model's own options do not know which model
                flags = " or ".join(flag_of(f, s) for s in ("strong", "weak"))
                raise CdrError(f"{f.name} ({flags}) {wrong}, got {value!r}")
            raise CdrError(f"{flat_name(f, side)} ({flag_of(f, side)}) {wrong}, got {value!r}")
