"""``cdr score``: rows in, the same rows plus reward, per-model log-probs and provenance out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdr.data import Fields, RawRow, conversation_from_row
from cdr.errors import RowError
from cdr.pipelines.runner import ChunkContext, RunSummary, run_job
from cdr.reward import DensityRatio, RewardResult

SUMMARY = ("scored", "skipped", "unscorable", "truncated")


COLUMN_NAMES = {"domain": "cdr_domain", "error": "cdr_error"}  # the result fields whose column is not their name


def reward_columns(result: RewardResult) -> dict[str, Any]:
    return {COLUMN_NAMES.get(name, name): value for name, value in result.fields_dict().items()}


def provenance_columns(provenance: dict[str, Any]) -> dict[str, Any]:
    return {f"cdr_{k}": v for k, v in provenance.items()}


def count_result(result: RewardResult, location: str, ctx: ChunkContext) -> None:
    if result.error:
        ctx.counts["unscorable"] += 1
        ctx.note(location, "unscorable", result.error)
    else:
        ctx.counts["scored"] += 1
        ctx.counts["truncated"] += int(result.truncated)


@dataclass(frozen=True)
class ScoreJob:
    """What ``cdr score`` does to a chunk of rows, independent of the engine that runs it (one process, or
    Ray actors that each build their own reward): picklable, so it can travel to a worker."""

    fields: Fields = Fields()
    summary_order = SUMMARY
    desc = "scoring"
    result_key = "scored"  # a run where no row was scored failed (exit status 3)

    def key(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """What identifies a run for resume: the job's options and what produces the rewards."""
        return {"command": "score", "fields": self.fields.__dict__, "provenance": provenance}

    def processor(self, reward: DensityRatio) -> Callable[[list[RawRow], ChunkContext], list[dict[str, Any]]]:
        provenance = reward.provenance
        fields = self.fields

        def process(chunk: list[RawRow], ctx: ChunkContext) -> list[dict[str, Any]]:
            valid = []
            for raw in chunk:
                try:
                    valid.append((raw, conversation_from_row(raw, fields)))
                except RowError as err:
                    ctx.report(err)
            results = (
                reward.score(
                    [c for _, c in valid], rows=[raw.data for raw, _ in valid], on_progress=lambda n: ctx.advance(n / 2)
                )
                if valid
                else []
            )
            rows = []
            for (raw, _), result in zip(valid, results):
                count_result(result, raw.location, ctx)
                rows.append({**(raw.data or {}), **reward_columns(result), **provenance_columns(provenance)})
            return rows

        return process


def score_file(
    input_path: str | Path,
    output_path: str | Path,
    reward: DensityRatio,
    *,
    fields: Fields = Fields(),
    **run_options: Any,
) -> RunSummary:
    """Score every row of ``input_path`` into ``output_path``, resuming an interrupted run of the same command.

    ``run_options`` go to ``run_rows``: input_format, output_format, on_error, chunk_rows, overwrite, progress.
    """
    job = ScoreJob(fields)
    return run_job(job, input_path, output_path, reward, **run_options)
