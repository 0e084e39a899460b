"""``cdr annotate``: prompts with candidate responses -> preferences, (chosen, rejected) couples in TRL's
conversational format.

Every candidate is scored with the density ratio (through the log-prob cache, so another strategy or
margin costs nothing), then pairs are picked per prompt:

- ``best-worst`` (default, the SimPO recipe): highest vs lowest reward;
- ``best-random`` (the paper's release code): highest vs a random other, seeded per prompt so a resumed
  or re-chunked run picks the same one;
- ``all-pairs``: every pair whose reward difference is at least the margin.

A pair is written only if chosen scores strictly higher than rejected (ties are skipped, as
RewardBench counts them wrong) and by at least ``min_margin``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdr.conversation import Conversation, ConversationError, Message, validate_prompt
from cdr.data import RawRow
from cdr.errors import CdrError, RowError
from cdr.pipelines.runner import ChunkContext, RunSummary, run_job
from cdr.pipelines.score import provenance_columns
from cdr.reward import DensityRatio

STRATEGIES = ("best-worst", "best-random", "all-pairs")
SUMMARY = ("pairs", "skipped", "tied", "below_margin", "unscorable", "duplicates_dropped")
CANDIDATE_FIELDS = ("responses", "response_a", "response_b")


@dataclass(frozen=True)
class AnnotateOptions:
    strategy: str = "best-worst"
    min_margin: float = 0.0
    seed: int = 0
    keep_ties: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise CdrError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.min_margin < 0:
            raise CdrError(f"min_margin must be >= 0, got {self.min_margin}")


@dataclass(frozen=True)
class CandidateRow:
    prompt: tuple[Message, ...]
    candidates: tuple[str, ...]
    indices: tuple[int, ...]  # each candidate's position in the input row (after dropping duplicates)
    extra: dict[str, Any]

    @property
    def prompt_dicts(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.prompt]


def prompt_id(prompt: list[dict[str, str]]) -> str:
    """sha256 of the prompt's canonical JSON: equal prompts get equal ids across files and runs."""
    return hashlib.sha256(
        json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()


def parse_candidates(raw: RawRow, prompt_field: str, responses_field: str, ctx: ChunkContext) -> CandidateRow:
    """Validate one input row; duplicates are dropped and reported (``ctx.report`` raises under --on-error fail)."""
    if raw.error is not None:
        raise raw.error
    data = raw.data or {}
    where = raw.location
    prompt = data.get(prompt_field)
    if prompt in (None, ""):
        raise RowError(where, prompt_field, "missing: expected a prompt (a string or a message list)", "missing field")
    try:
        turns = tuple(validate_prompt(prompt, prompt_field))
    except ConversationError as exc:
        raise RowError.from_conversation_error(where, exc) from None

    if data.get(responses_field) is not None:
        field, values = responses_field, data[responses_field]
        if not isinstance(values, list):
            raise RowError(
                where, field, f"expected a list of candidate responses, got {type(values).__name__}", "wrong type"
            )
        names = [f"{field}[{i}]" for i in range(len(values))]
    elif data.get("response_a") is not None or data.get("response_b") is not None:
        names, values = ["response_a", "response_b"], [data.get("response_a"), data.get("response_b")]
    else:
        raise RowError(
            where,
            responses_field,
            f"missing: expected '{responses_field}' (a list) or 'response_a' and 'response_b'",
            "missing field",
        )
    texts: list[str] = []
    for name, value in zip(names, values):
        if isinstance(value, dict) and value.get("role") == "assistant":  # {"role": "assistant", "content": ...}
            value = value.get("content")
        if value is None and name.startswith("response_"):
            raise RowError(where, name, "missing", "missing field")
        if not isinstance(value, str):
            raise RowError(where, name, f"expected a string, got {type(value).__name__}", "wrong type")
        if not value.strip():
            raise RowError(where, name, "expected non-empty text, got an empty string", "empty text")
        texts.append(value)
    if len(texts) < 2:
        raise RowError(
            where,
            names[0] if names else responses_field,
            f"expected 2 or more candidate responses, got {len(texts)}",
            "too few candidates",
        )
    kept: dict[str, int] = {}
    for i, text in enumerate(texts):
        if text.strip() in kept:
            dropped = f"duplicates {names[kept[text.strip()]]}; dropped"
            ctx.report(RowError(where, names[i], dropped, "duplicate candidates"), skip_row=False)
            ctx.counts["duplicates_dropped"] += 1
        else:
            kept[text.strip()] = i
    if len(kept) < 2:
        raise RowError(where, responses_field, "fewer than 2 distinct candidate responses", "too few candidates")
    extra = {k: v for k, v in data.items() if k not in (prompt_field, responses_field, *CANDIDATE_FIELDS)}
    indices = tuple(kept.values())
    return CandidateRow(turns, tuple(texts[i] for i in indices), indices, extra)


def choose_preferences(
    scores: list[float | None], options: AnnotateOptions, pid: str
) -> tuple[list[tuple[int, int]], str | None]:
    """(chosen, rejected) index pairs into ``scores``, or ([], reason) when the prompt yields none."""
    scored = [i for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return [], "unscorable"
    ranked = sorted(scored, key=lambda i: (-scores[i], i))  # stable: ties keep input order
    if options.strategy == "all-pairs":
        preferences = [(a, b) for x, a in enumerate(ranked) for b in ranked[x + 1 :]]
    elif options.strategy == "best-worst":
        preferences = [(ranked[0], ranked[-1])]
    else:
        rng = random.Random(f"{options.seed}:{pid}")
        preferences = [(ranked[0], rng.choice(ranked[1:]))]
    kept, reason = [], None
    for a, b in preferences:
        margin = scores[a] - scores[b]
        if margin == 0 and not options.keep_ties:
            reason = reason or "tied"
        elif margin < options.min_margin:
            reason = "below_margin"
        else:
            kept.append((a, b))
    return kept, (None if kept else reason)


@dataclass(frozen=True)
class AnnotateJob:
    """What ``cdr annotate`` does to a chunk of rows, for any engine (see ``ScoreJob``)."""

    options: AnnotateOptions = AnnotateOptions()
    prompt_field: str = "prompt"
    responses_field: str = "responses"
    summary_order = SUMMARY
    desc = "annotating"
    # a row produced a result when its candidates were scored (a tie or a margin below the threshold is a
    # result too); a run where every row was malformed or unscorable failed (exit status 3)
    result_key = "scored_rows"

    @property
    def annotation(self) -> dict[str, Any]:
        o = self.options
        return {"strategy": o.strategy, "min_margin": o.min_margin, "seed": o.seed, "keep_ties": o.keep_ties}

    def key(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """What identifies a run for resume: the job's options and what produces the rewards."""
        return {
            "command": "annotate",
            "prompt_field": self.prompt_field,
            "responses_field": self.responses_field,
            "annotation": self.annotation,
            "provenance": provenance,
        }

    def processor(self, reward: DensityRatio) -> Callable[[list[RawRow], ChunkContext], list[dict[str, Any]]]:
        provenance = reward.provenance
        options, annotation = self.options, self.annotation
        prompt_field, responses_field = self.prompt_field, self.responses_field

        def process(chunk: list[RawRow], ctx: ChunkContext) -> list[dict[str, Any]]:
            rows: list[tuple[RawRow, CandidateRow]] = []
            for raw in chunk:
                try:
                    rows.append((raw, parse_candidates(raw, prompt_field, responses_field, ctx)))
                except RowError as err:
                    ctx.report(err)
            convs = [
                Conversation(row.prompt + (Message("assistant", text),)) for _, row in rows for text in row.candidates
            ]
            per_pass = len(chunk) / max(1, 2 * len(convs))
            source_rows = [raw.data for raw, row in rows for _ in row.candidates]  # for a recipe's column router
            results = (
                reward.score(convs, rows=source_rows, on_progress=lambda n: ctx.advance(n * per_pass)) if convs else []
            )
            out, at = [], 0
            for raw, row in rows:
                res = results[at : at + len(row.candidates)]
                at += len(row.candidates)
                scores = [r.reward for r in res]
                pid = prompt_id(row.prompt_dicts)
                for r in res:
                    if r.error:
                        ctx.note(raw.location, "unscorable", r.error)
                preferences, reason = choose_preferences(scores, options, pid)
                if reason:
                    ctx.counts[reason] += 1
                if reason != "unscorable":
                    ctx.counts["scored_rows"] += 1
                all_scores = [None] * (max(row.indices) + 1)
                for i, s in zip(row.indices, scores):
                    all_scores[i] = s
                for a, b in preferences:
                    ctx.counts["pairs"] += 1  # the summary's name for preferences written
                    out.append(
                        {
                            "prompt": row.prompt_dicts,
                            "chosen": [{"role": "assistant", "content": row.candidates[a]}],
                            "rejected": [{"role": "assistant", "content": row.candidates[b]}],
                            "prompt_id": pid,
                            "score_chosen": scores[a],
                            "score_rejected": scores[b],
                            "chosen_index": row.indices[a],
                            "rejected_index": row.indices[b],
                            "chosen_tokens": res[a].strong_tokens,
                            "rejected_tokens": res[b].strong_tokens,
                            "scores": all_scores,
                            "cdr_domain": res[a].domain,
                            **row.extra,
                            **provenance_columns(provenance),
                            **{f"cdr_{k}": v for k, v in annotation.items()},
                        }
                    )
            return out

        return process


def annotate_file(
    input_path: str | Path,
    output_path: str | Path,
    reward: DensityRatio,
    *,
    options: AnnotateOptions = AnnotateOptions(),
    prompt_field: str = "prompt",
    responses_field: str = "responses",
    length_report: bool = True,
    **run_options: Any,
) -> RunSummary:
    job = AnnotateJob(options, prompt_field, responses_field)
    summary = run_job(job, input_path, output_path, reward, **run_options)
    if length_report:
        from cdr.length_report import write_length_report

        summary.extra = write_length_report(summary.output)
    return summary
