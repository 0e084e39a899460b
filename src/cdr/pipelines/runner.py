"""The resumable row loop shared by the pipelines: read rows in chunks, process, journal, report.

A pipeline supplies ``process(chunk, ctx)`` that turns a chunk of input rows into output rows; the
runner owns everything around it: resume (``cdr.output``), the progress bar, malformed-row reports
(skipped or fatal per ``on_error``, counted per kind) and the final summary.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cdr.data import RawRow, count_rows, detect_format, iter_rows
from cdr.errors import CdrError, RowError
from cdr.output import ResumableOutput, RunKey, check_lock_free, check_not_input, check_output_target

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
        raise CdrError(f"cannot write output '{output_path}': directory '{probe}' is not writable ({exc.strerror})") from None


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


def report_notes(chunk: list[RawRow], ctx: "ChunkContext") -> None:
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
            lines.append(f"no row produced a result: all {self.rows} rows were skipped or unscorable "
                         f"(exit status {EXIT_NO_RESULTS}; the row reports say why)")
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
    log = log or (lambda msg: print(msg, file=sys.stderr))
    start = time.time()
    check_paths(input_path, output_path, input_format, output_format)
    if on_error not in ("skip", "fail"):
        raise CdrError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise CdrError(f"--chunk-rows must be a whole number >= 1, got {chunk_rows!r}")
    if limit is not None and limit < 0:
        raise CdrError(f"--limit must be >= 0, got {limit}")
    key = RunKey.of(input_path, on_error, limit, key).as_json()
    out = ResumableOutput(output_path, key, output_format, overwrite, log=log, input_path=input_path)
    try:
        return _run(out, input_path, process, summary_order, input_format, on_error, chunk_rows, progress, desc,
                    limit, log, result_key, output_path, start)
    finally:
        out.close()


def _run(out, input_path, process, summary_order, input_format, on_error, chunk_rows, progress, desc, limit, log,
         result_key, output_path, start) -> RunSummary:
    counts: Counter = Counter(out.state.counts)
    resumed_from = out.rows_done

    def summary() -> RunSummary:
        kinds = {k.removeprefix("skipped: "): v for k, v in counts.items() if k.startswith("skipped: ")}
        return RunSummary(out.path, out.rows_done, counts, time.time() - start,
                          out.errors if out.errors.exists() else None, resumed_from, summary_order, kinds,
                          result_key=result_key)

    if out.complete:
        log(f"{output_path} is already complete; pass --overwrite to run again")
        return summary()
    if resumed_from:
        log(f"resuming {output_path} after row {resumed_from}")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = count_rows(input_path, input_format)
        bar = tqdm(total=min(total, limit) if limit is not None else total, initial=resumed_from, unit="row", desc=desc,
                   dynamic_ncols=True, file=sys.stderr)
    shown = 0

    def say(msg: str) -> None:
        if bar:
            bar.write(msg, file=sys.stderr)
        else:
            log(msg)

    done = resumed_from
    chunk: list[RawRow] = []

    def flush() -> None:
        nonlocal done, chunk, shown
        errors: list[dict[str, Any]] = []

        def report(err: RowError, skip_row: bool = True) -> None:
            nonlocal shown
            if on_error == "fail":
                raise err
            if skip_row:
                counts["skipped"] += 1
                counts[f"skipped: {err.kind}"] += 1
            errors.append({"location": err.location, "field": err.field, "kind": err.kind, "error": err.message})
            shown += 1
            if shown <= SHOWN_ERRORS:
                say(f"skipped {err}" if skip_row else str(err))
            elif shown == SHOWN_ERRORS + 1:
                say(f"... more row reports in {out.errors}")

        progressed = 0.0

        def advance(rows: float) -> None:
            nonlocal progressed
            if bar:
                before = int(progressed)
                progressed = min(progressed + rows, len(chunk))
                bar.update(int(progressed) - before)

        def note(location: str, kind: str, message: str) -> None:
            errors.append({"location": location, "field": None, "kind": kind, "error": message})

        ctx = ChunkContext(report, note, counts, advance)
        report_notes(chunk, ctx)
        rows = process(chunk, ctx)
        done += len(chunk)
        out.append(rows, errors, done, dict(counts))
        chunk = []
        if bar:
            bar.n = done
            bar.refresh()

    try:
        for raw in iter_rows(input_path, input_format):
            if limit is not None and raw.index >= limit:
                break
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
    return summary()
