"""The resumable row loop shared by the pipelines: read rows in chunks, process, journal, report.

A pipeline supplies ``process(chunk, ctx)`` that turns a chunk of input rows into output rows; the
runner owns everything around it: resume (``cdr.output``), the progress bar, malformed-row reports
(skipped or fatal per ``on_error``, counted per kind) and the final summary.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdr.data import RawRow, count_rows, detect_format, iter_rows
from cdr.errors import CdrError, RowError
from cdr.output import ResumableOutput, RunKey, check_lock_free, check_not_input, check_output_target

logger = logging.getLogger(__name__)

SHOWN_ERRORS = 20
EXIT_NO_RESULTS = 3  # the run finished, but no row produced a result


def check_input(input_path, input_format=None) -> str:
    """The input's format, or a one-line error if it is not a readable file."""
    fmt = detect_format(input_path, input_format)
    path = Path(input_path)
    if path.is_dir():
        raise CdrError(f"input '{input_path}' is a directory, not a file")
    if not path.exists():
        raise CdrError(f"input file '{input_path}' does not exist")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise CdrError(f"cannot read input file '{input_path}': {exc.strerror}") from None
    return fmt


def check_writable(output_path) -> None:
    """Fail now, not after the models loaded and the first chunk was scored, if the output's directory cannot
    be created or written."""
    path = Path(output_path).absolute()
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CdrError(f"cannot write output '{output_path}': '{probe}' is a file, not a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".cdr-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise CdrError(
            f"cannot write output '{output_path}': directory '{probe}' is not writable ({exc.strerror})"
        ) from None


def check_paths(input_path, output_path, input_format=None, output_format=None) -> None:
    """Fail fast, before any model is loaded, on paths that cannot work: an input that is not a readable
    file, an output that is the input, a directory cdr did not write, an unwritable place, or an output
    another run is writing."""
    check_input(input_path, input_format)
    out = Path(output_path)
    fmt = detect_format(out, output_format, output=True)
    check_not_input(input_path, out)
    check_output_target(out, fmt)
    check_writable(out)
    check_lock_free(out)


def report_notes(chunk: list[RawRow], ctx: ChunkContext) -> None:
    """Problems a row survives that the reader found (a duplicate key: the last value is used)."""
    for raw in chunk:
        for note in raw.notes:
            ctx.report(note, skip_row=False)


@dataclass
class ChunkContext:
    """Handed to ``process``: report a bad row (``report``: skipped, or with ``skip_row=False`` a problem the
    row survives, such as a dropped duplicate; either raises under --on-error fail), note a scored row's
    problem (``note``, e.g. unscorable), count outcomes, advance the progress bar by (fractions of) rows."""

    report: Callable[..., None]
    note: Callable[[str, str, str], None]
    counts: Counter
    advance: Callable[[float], None]


class RowReports:
    """A run's row reports and its counts of outcomes, as both engines and ``load_rewardbench`` keep them.

    A skipped row is counted as ``skipped`` and ``skipped: KIND``; under --on-error fail ``report`` raises
    the row's error instead. The reports gather in ``errors`` (``take`` hands over one chunk's); the first
    SHOWN_ERRORS are shown through ``say`` (nothing is shown when it is None), then one line naming
    ``more_in``, the file that holds them all."""

    def __init__(
        self,
        on_error: str,
        counts: Counter | None = None,
        say: Callable[[str], None] | None = None,
        more_in: Path | None = None,
    ):
        self.on_error = on_error
        self.counts: Counter = Counter() if counts is None else counts
        self.say = say
        self.more_in = more_in
        self.errors: list[dict[str, Any]] = []
        self.shown = 0

    def report(self, err: RowError, skip_row: bool = True) -> None:
        if self.on_error == "fail":
            raise err
        if skip_row:
            self.counts["skipped"] += 1
            self.counts[f"skipped: {err.kind}"] += 1
        self.errors.append(err.as_dict())
        self.shown += 1
        if self.say is None:
            return
        if self.shown <= SHOWN_ERRORS:
            self.say(f"skipped {err}" if skip_row else str(err))
        elif self.shown == SHOWN_ERRORS + 1 and self.more_in is not None:
            self.say(f"... more row reports in {self.more_in}")

    def note(self, location: str, kind: str, message: str) -> None:
        """A problem of a row that still has its output row (e.g. unscorable): reported, neither shown nor raised."""
        self.errors.append(RowError(location, None, message, kind).as_dict())

    def take(self) -> list[dict[str, Any]]:
        """The reports gathered since the last ``take``."""
        errors, self.errors = self.errors, []
        return errors

    def context(self, advance: Callable[[float], None] = lambda rows: None) -> ChunkContext:
        return ChunkContext(self.report, self.note, self.counts, advance)


def skipped_kinds(counts: Counter) -> dict[str, int]:
    """The skipped rows per kind, from the ``skipped: KIND`` counts."""
    return {k.removeprefix("skipped: "): v for k, v in counts.items() if k.startswith("skipped: ")}


def progress_bar(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="row", desc=desc, dynamic_ncols=True, file=sys.stderr)


class ChunkProgress:
    """``ChunkContext.advance`` for one chunk: moves the bar (if any) by the whole rows in the fractions
    ``process`` reports, never past the chunk's end (the runner sets the bar to the rows done after it)."""

    def __init__(self, bar, rows: int):
        self.bar, self.rows, self.done = bar, rows, 0.0

    def advance(self, rows: float) -> None:
        if self.bar:
            before = int(self.done)
            self.done = min(self.done + rows, self.rows)
            self.bar.update(int(self.done) - before)


@dataclass
class RunSummary:
    output: Path
    rows: int
    counts: Counter
    seconds: float
    errors_file: Path | None
    resumed_from: int = 0
    order: tuple[str, ...] = ()
    skipped_kinds: dict[str, int] = field(default_factory=dict)
    extra: str = ""  # a pipeline's own report (e.g. annotate's length report)
    result_key: str | None = None  # the count of rows that produced a result (None: rows not skipped)

    @property
    def failed(self) -> bool:
        """True when there were rows and not one of them produced a result (all malformed or unscorable)."""
        if self.rows == 0:
            return False
        produced = self.counts.get(self.result_key, 0) if self.result_key else self.rows - self.counts.get("skipped", 0)
        return produced <= 0

    @property
    def exit_status(self) -> int:
        return EXIT_NO_RESULTS if self.failed else 0

    def render(self) -> str:
        parts = [f"rows: {self.rows}"] + [f"{name}: {self.counts.get(name, 0)}" for name in self.order]
        lines = ["  ".join(parts)]
        if self.failed:
            lines.append(
                f"no row produced a result: all {self.rows} rows were skipped or unscorable "
                f"(exit status {EXIT_NO_RESULTS}; the row reports say why)"
            )
        if self.skipped_kinds:
            lines.append("skipped by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_kinds.items())))
        lines.append(f"output: {self.output}")
        if self.resumed_from:
            lines.append(f"resumed after row {self.resumed_from}")
        if self.errors_file:
            lines.append(f"row reports: {self.errors_file}")
        if self.extra:
            lines += ["", self.extra]
        return "\n".join(lines)


def run_job(job, input_path: str | Path, output_path: str | Path, reward, **run_options: Any) -> RunSummary:
    """``job`` (a ScoreJob, AnnotateJob or EvalJob) over ``input_path`` in this process: its processor, resume
    key, summary and description, as the Ray engine runs the same job on actors."""
    return run_rows(
        input_path,
        output_path,
        job.processor(reward),
        key=job.key(reward.provenance),
        summary_order=job.summary_order,
        desc=job.desc,
        result_key=getattr(job, "result_key", None),
        **run_options,
    )


def run_rows(
    input_path: str | Path,
    output_path: str | Path,
    process: Callable[[list[RawRow], ChunkContext], list[dict[str, Any]]],
    *,
    key: dict[str, Any],
    summary_order: tuple[str, ...],
    input_format: str | None = None,
    output_format: str | None = None,
    on_error: str = "skip",
    chunk_rows: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    desc: str = "rows",
    limit: int | None = None,
    log: Callable[[str], None] | None = None,
    result_key: str | None = None,
) -> RunSummary:
    say_rows = log or logger.warning  # a skipped row is a warning; what the run does is info
    log = log or logger.info
    start = time.time()
    check_paths(input_path, output_path, input_format, output_format)
    if on_error not in ("skip", "fail"):
        raise CdrError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise CdrError(f"chunk_rows (--chunk-rows) must be a whole number >= 1, got {chunk_rows!r}")
    if limit is not None and limit < 0:
        raise CdrError(f"--limit must be >= 0, got {limit}")
    key = RunKey.of(input_path, on_error, limit, key).as_json()
    out = ResumableOutput(output_path, key, output_format, overwrite, log=log, input_path=input_path)
    try:
        resumed_from = out.rows_done
        reports = RowReports(on_error, Counter(out.state.counts), say=say_rows, more_in=out.errors)
        if out.complete:
            log(f"{output_path} is already complete; pass --overwrite to run again")
        else:
            if resumed_from:
                log(f"resuming {output_path} after row {resumed_from}")
            _run(out, input_path, input_format, process, reports, chunk_rows, limit, desc if progress else None)
            out.finish()
        return RunSummary(
            out.path,
            out.rows_done,
            reports.counts,
            time.time() - start,
            out.errors if out.errors.exists() else None,
            resumed_from,
            summary_order,
            skipped_kinds(reports.counts),
            result_key=result_key,
        )
    finally:
        out.close()


def _run(
    out: ResumableOutput,
    input_path,
    input_format,
    process,
    reports: RowReports,
    chunk_rows: int,
    limit: int | None,
    desc: str | None,
) -> None:
    """Process the input rows ``out`` does not hold yet, chunk by chunk, appending each chunk's output rows
    and row reports to ``out``; with a progress bar unless ``desc`` is None."""
    bar = None
    if desc is not None:
        total = count_rows(input_path, input_format)
        bar = progress_bar(min(total, limit) if limit is not None else total, out.rows_done, desc)
        reports.say = lambda msg: bar.write(msg, file=sys.stderr)  # above the bar, not through it
    try:
        for chunk in _chunks(iter_rows(input_path, input_format), out.rows_done, limit, chunk_rows):
            ctx = reports.context(ChunkProgress(bar, len(chunk)).advance)
            report_notes(chunk, ctx)
            rows = process(chunk, ctx)
            out.append(rows, reports.take(), out.rows_done + len(chunk), dict(reports.counts))
            if bar:
                bar.n = out.rows_done
                bar.refresh()
    finally:
        if bar:
            bar.close()


def _chunks(rows: Iterator[RawRow], skip: int, limit: int | None, size: int) -> Iterator[list[RawRow]]:
    """Chunks of ``size`` consecutive rows (the last may be shorter), from row ``skip`` to before row ``limit``."""
    chunk: list[RawRow] = []
    for raw in rows:
        if limit is not None and raw.index >= limit:
            break
        if raw.index < skip:
            continue
        chunk.append(raw)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
