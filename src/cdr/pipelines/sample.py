"""``cdr sample``: prompts -> N sampled responses each, written as candidates for ``cdr annotate``.

Prompt rows may be plain (``prompt`` string or message list, or ``messages``) or one of the benchmark
formats users already have: MT-Bench and Arena-Hard (``turns``: the first turn is used) and
AlpacaEval (``instruction``). Each chunk of prompts is seeded from ``--seed`` and its first row index,
so a resumed run continues with exactly the samples an uninterrupted one would have produced.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cdr.conversation import ConversationError, validate_prompt
from cdr.data import RawRow
from cdr.errors import RowError
from cdr.generation import SamplingOptions, TransformersPolicy
from cdr.pipelines.runner import ChunkContext, RunSummary, run_rows

PROMPT_FIELDS = ("messages", "prompt", "turns", "instruction")


def prompt_messages(raw: RawRow) -> list[dict[str, str]]:
    if raw.error is not None:
        raise raw.error
    data = raw.data or {}
    name = next((f for f in PROMPT_FIELDS if data.get(f) not in (None, "", [])), None)
    if name is None:
        raise RowError(raw.location, "prompt", f"missing: expected one of {', '.join(PROMPT_FIELDS)}", "missing field")
    value = data[name]
    if name == "turns":  # MT-Bench: a list of strings; Arena-Hard: a list of {"content": ...}; take the first turn
        first = value[0] if isinstance(value, list) else value
        value = first.get("content") if isinstance(first, dict) else first
        name = "turns[0]"
    try:
        turns = validate_prompt(value, name)
    except ConversationError as exc:
        raise RowError.from_conversation_error(raw.location, exc) from None
    return [m.as_dict() for m in turns]


def chunk_seed(base: int, first_row: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}:{first_row}".encode()).digest()[:4], "little")


def sample_file(
    input_path: str | Path,
    output_path: str | Path,
    policy: TransformersPolicy,
    options: SamplingOptions = SamplingOptions(),
    **run_options: Any,
) -> RunSummary:
    chunk_rows = run_options.get("chunk_rows", 64)

    def process(chunk: list[RawRow], ctx: ChunkContext) -> list[dict[str, Any]]:
        prompts = []
        for raw in chunk:
            try:
                prompts.append((raw, prompt_messages(raw)))
            except RowError as err:
                ctx.report(err)
        if not prompts:
            return []
        samples = policy.generate([p for _, p in prompts], options, chunk_seed(options.seed, chunk[0].index))
        rows = []
        for (raw, prompt), responses in zip(prompts, samples):
            ctx.counts["prompts"] += 1
            ctx.counts["responses"] += len(responses)
            ctx.counts["empty_responses"] += sum(not r for r in responses)
            extra = {k: v for k, v in (raw.data or {}).items() if k not in PROMPT_FIELDS}
            rows.append(
                {
                    **extra,
                    "prompt": prompt,
                    "responses": responses,
                    "cdr_policy": policy.source.name,
                    "cdr_policy_sha256": policy.fingerprint,
                    "cdr_sampling": options.as_dict(),
                }
            )
        ctx.advance(len(chunk))
        return rows

    key = {"command": "sample", "policy": policy.fingerprint, "sampling": options.as_dict(), "chunk_rows": chunk_rows}
    return run_rows(
        input_path,
        output_path,
        process,
        key=key,
        summary_order=("prompts", "responses", "empty_responses", "skipped"),
        desc="sampling",
        **run_options,
    )
