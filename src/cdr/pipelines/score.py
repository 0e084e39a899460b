"""``cdr score``: rows in, the same rows plus reward, per-model log-probs and provenance out."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cdr.data import Fields, RawRow, conversation_from_row, count_rows, detect_format, iter_rows
from cdr.errors import CdrError, RowError
from cdr.output import ResumableOutput
from cdr.reward import DensityRatio

SHOWN_ERRORS = 20


@dataclass
class ScoreSummary:
    output: Path
    rows: int
    scored: int
    skipped: int
    unscorable: int
    truncated: int
    seconds: float
    errors_file: Path | None
    resumed_from: int = 0

    def render(self) -> str:
        lines = [
            f"rows: {self.rows}  scored: {self.scored}  skipped (malformed): {self.skipped}  "
            f"unscorable: {self.unscorable}  truncated: {self.truncated}",
            f"output: {self.output}",
        ]
        if self.resumed_from:
            lines.append(f"resumed after row {self.resumed_from}")
        if self.errors_file:
            lines.append(f"row reports: {self.errors_file}")
        return "\n".join(lines)


def check_paths(input_path, output_path, input_format=None, output_format=None) -> None:
    """Fail fast, before any model is loaded, on paths that cannot work."""
    detect_format(input_path, input_format)
    detect_format(output_path, output_format)
    if not Path(input_path).is_file():
        raise CdrError(f"input file '{input_path}' does not exist")


def output_row(data: dict[str, Any], result, provenance: dict[str, Any]) -> dict[str, Any]:
    row = dict(data)
    row.update(
        reward=result.reward,
        strong_logprob=result.strong_logprob,
        weak_logprob=result.weak_logprob,
        strong_tokens=result.strong_tokens,
        weak_tokens=result.weak_tokens,
        truncated=result.truncated,
        cdr_error=result.error,
    )
    row.update({f"cdr_{k}": v for k, v in provenance.items()})
    return row


def score_file(
    input_path: str | Path,
    output_path: str | Path,
    reward: DensityRatio,
    *,
    fields: Fields = Fields(),
    input_format: str | None = None,
    output_format: str | None = None,
    on_error: str = "skip",
    chunk_rows: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ScoreSummary:
    """Score every row of ``input_path`` into ``output_path``, resuming an interrupted run of the same command."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    start = time.time()
    check_paths(input_path, output_path, input_format, output_format)
    st = os.stat(input_path)
    key = {
        "input": str(Path(input_path).resolve()),
        "input_size": st.st_size,
        "input_mtime_ns": st.st_mtime_ns,
        "fields": fields.__dict__,
        "on_error": on_error,
        "provenance": reward.provenance,
    }
    out = ResumableOutput(output_path, key, output_format, overwrite)
    counts = {"scored": 0, "skipped": 0, "unscorable": 0, "truncated": 0, **out.state.counts}
    resumed_from = out.rows_done
    if out.complete:
        log(f"{output_path} is already complete; pass --overwrite to score again")
        return _summary(out, counts, start, resumed_from)
    if resumed_from:
        log(f"resuming {output_path} after row {resumed_from}")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=count_rows(input_path, input_format), initial=resumed_from, unit="row", desc="scoring",
                   dynamic_ncols=True, file=sys.stderr)
    shown = 0

    def say(msg: str) -> None:
        if bar:
            bar.write(msg, file=sys.stderr)
        else:
            log(msg)

    def report(err: RowError) -> None:
        nonlocal shown
        shown += 1
        if shown <= SHOWN_ERRORS:
            say(f"skipped {err}")
        elif shown == SHOWN_ERRORS + 1:
            say(f"... more row reports in {out.errors}")

    chunk: list[RawRow] = []
    done = resumed_from

    def flush() -> None:
        nonlocal done, chunk
        valid, errors = [], []
        for raw in chunk:
            try:
                valid.append((raw, conversation_from_row(raw, fields)))
            except RowError as err:
                if on_error == "fail":
                    raise
                counts["skipped"] += 1
                errors.append({"location": err.location, "field": err.field, "error": err.message})
                report(err)
        passes = 0  # each row is two model passes (strong, weak); the bar counts whole rows

        def on_progress(n: int) -> None:
            nonlocal passes
            before = passes // 2
            passes += n
            bar.update(min(passes // 2, len(valid)) - before)

        results = reward.score([c for _, c in valid], on_progress=on_progress if bar else None) if valid else []
        rows = []
        for (raw, _), result in zip(valid, results):
            if result.error:
                counts["unscorable"] += 1
                errors.append({"location": raw.location, "field": None, "error": result.error})
            else:
                counts["scored"] += 1
                counts["truncated"] += int(result.truncated)
            rows.append(output_row(raw.data or {}, result, reward.provenance))
        done += len(chunk)
        out.append(rows, errors, done, counts)
        chunk = []
        if bar:
            bar.n = done
            bar.refresh()

    try:
        for raw in iter_rows(input_path, input_format):
            if raw.index < resumed_from:
                continue
            chunk.append(raw)
            if len(chunk) >= chunk_rows:
                flush()
        if chunk:
            flush()
    finally:
        if bar:
            bar.close()
    out.finish()
    return _summary(out, counts, start, resumed_from)


def _summary(out: ResumableOutput, counts: dict[str, int], start: float, resumed_from: int) -> ScoreSummary:
    return ScoreSummary(
        output=out.path,
        rows=out.rows_done,
        scored=counts["scored"],
        skipped=counts["skipped"],
        unscorable=counts["unscorable"],
        truncated=counts["truncated"],
        seconds=time.time() - start,
        errors_file=out.errors if out.errors.exists() else None,
        resumed_from=resumed_from,
    )
