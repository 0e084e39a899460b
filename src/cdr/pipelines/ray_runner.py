"""The row loop on Ray (``--engine ray``, extra ``[ray]``): the same pipeline jobs as ``runner.py``, spread
over an actor pool, written as Parquet shards, resumed shard by shard.

How the work is split:

- The driver cuts the input into shards of ``shard_rows`` consecutive rows, each shard into pieces of
  ``batch_rows`` rows (for JSONL it records the byte offset of each piece, so a worker seeks straight to
  its rows), and skips the shards an earlier run of the same command finished.
- Ray Data: one item per pending piece -> ``map_batches`` with ``PairActor``, a callable class that loads
  both models of the pair once per actor (``num_actors`` of them, each with ``cpus_per_actor`` /
  ``gpus_per_actor``), reads its piece's rows from the input (a shared filesystem on a multi-node
  cluster) and runs the pipeline's own ``processor`` on them. So the output columns, provenance, row
  reports and counts are exactly those of the single-process run, and no other stage competes with the
  actors for CPUs (a separate read stage can starve when the actors hold every core).
- The driver collects the output rows and, when every row of a shard is accounted for, writes
  ``part-NNNNN.parquet`` and then ``part-NNNNN.json`` (counts and row reports), each atomically
  (temporary file + rename). The ``.json`` file is the shard's completion mark: after a crash, a killed
  driver or a lost node, the same command skips the marked shards and recomputes only the others, so
  nothing is duplicated and a finished shard is never recomputed.

Both models sit in one actor (rather than a strong pool and a weak pool joined by row id): the pair's
rows never leave the actor between the two passes, there is no join, and the actor's log-prob cache and
prompt sharing work as in one process. The price is that both models must fit on one actor's device.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cdr.data import RawRow, count_rows, iter_rows
from cdr.errors import CdrError, RowError
from cdr.output import RAY_STATE as STATE
from cdr.output import OutputLock, RunKey, atomic_write_text, check_lock_free, check_same_run, file_sha, lock_path
from cdr.pipelines.runner import (
    RowReports,
    RunSummary,
    check_input,
    check_writable,
    progress_bar,
    report_notes,
    skipped_kinds,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: a local cluster on this machine; else ray.init(address=...)
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_rows: int = 16  # rows per actor call (one pipeline chunk inside the actor)
    shard_rows: int = 1024  # rows per output shard (the unit of resume)

    def __post_init__(self) -> None:
        for name in ("num_actors", "batch_rows", "shard_rows"):
            if getattr(self, name) < 1:
                raise CdrError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise CdrError("cpus-per-actor must be > 0 and gpus-per-actor >= 0")


@dataclass(frozen=True)
class Piece:
    """A run of consecutive input rows: what one actor call reads and scores."""

    shard: int
    start: int  # first row index (0-based, as RawRow.index)
    stop: int  # one past the last row
    offset: int = 0  # JSONL: byte offset of the first row's line
    first_line: int = 1  # JSONL: its line number


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int
    pieces: tuple[Piece, ...]

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_shards(path: str | Path, fmt: str, shard_rows: int, piece_rows: int, limit: int | None = None) -> list[Shard]:
    """Cut the input into shards of ``shard_rows`` rows, each in pieces of ``piece_rows`` rows. For JSONL one
    pass over the bytes records where each piece starts."""
    total = count_rows(path, fmt)
    if limit is not None:
        total = min(total, limit)
    starts: dict[int, tuple[int, int]] = {}  # first row of a piece -> (byte offset, line number)
    if fmt == "jsonl":
        index, offset = 0, 0
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    if index >= total:
                        break
                    if (index % shard_rows) % piece_rows == 0:
                        starts[index] = (offset, lineno)
                    index += 1
                offset += len(line)
    shards = []
    for k, a in enumerate(range(0, total, shard_rows)):
        b = min(a + shard_rows, total)
        pieces = tuple(Piece(k, i, min(i + piece_rows, b), *starts.get(i, (0, 1))) for i in range(a, b, piece_rows))
        shards.append(Shard(k, a, b, pieces))
    return shards


def read_piece(path: str, fmt: str, piece: Piece) -> list[RawRow]:
    """The rows of one piece. JSONL seeks to the piece; Parquet reads only the row groups it overlaps; CSV
    (no index to seek by) reads from the top, so prefer JSONL or Parquet for large inputs on Ray."""
    if fmt == "jsonl":
        from cdr.data import _iter_jsonl

        rows = []
        for raw in _iter_jsonl(path, piece.offset, piece.first_line, piece.start):
            if raw.index >= piece.stop:
                break
            rows.append(raw)
        return rows
    if fmt == "parquet":
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path)
        rows, first = [], 0
        for g in range(f.metadata.num_row_groups):
            n = f.metadata.row_group(g).num_rows
            if first < piece.stop and first + n > piece.start:
                for i, row in enumerate(f.read_row_group(g).to_pylist(), start=first):
                    if piece.start <= i < piece.stop:
                        rows.append(RawRow(i, f"row {i + 1}", row))
            first += n
        return rows
    return [raw for raw in iter_rows(path, fmt) if piece.start <= raw.index < piece.stop]


class PairActor:
    """One actor of the pool: builds the reward (both models) once; for each piece it is handed, reads the
    piece's rows and runs the pipeline job's processor on them. Returns, as JSON text, one record per output
    row and per row report, and one 'done' record per piece (rows covered, counts, provenance)."""

    def __init__(self, job, config, on_error: str, path: str, fmt: str):
        from cdr.reward import DensityRatio

        self.reward = DensityRatio(config=config)
        self.process = job.processor(self.reward)
        self.on_error = on_error
        self.path, self.fmt = path, fmt

    def __call__(self, batch):
        import pyarrow as pa

        columns = batch.to_pydict()
        out: dict[str, list] = {"shard": [], "part": [], "kind": [], "payload": []}
        for i in range(len(columns["shard"])):
            piece = Piece(*(int(columns[k][i]) for k in ("shard", "start", "stop", "offset", "first_line")))
            for kind, payload in self._run(piece):
                out["shard"].append(piece.shard)
                out["part"].append(piece.start)
                out["kind"].append(kind)
                out["payload"].append(json.dumps(payload, ensure_ascii=False, default=str))
        return pa.table(out)

    def _run(self, piece: Piece) -> list[tuple[str, Any]]:
        rows = read_piece(self.path, self.fmt, piece)
        reports = RowReports(self.on_error)
        try:
            ctx = reports.context()
            report_notes(rows, ctx)
            results = self.process(rows, ctx)
        except RowError as err:  # --on-error fail: the driver stops with this row's message
            return [("abort", str(err))]
        return (
            [("row", r) for r in results]
            + [("error", e) for e in reports.errors]
            + [("done", {"rows": len(rows), "counts": dict(reports.counts), "provenance": self.reward.provenance})]
        )


def _init_ray(options: RayOptions):
    try:
        import ray
    except ImportError:
        raise CdrError("--engine ray needs the [ray] extra: pip install 'cdr-annotate[ray]'") from None
    if not ray.is_initialized():
        if options.address:
            ray.init(address=options.address, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # cdr's own bar counts rows; Ray's per-operator bars are noise here
    ctx.print_on_execution_start = False
    # one operator only (the actor pool): Ray Data's per-operator reservation would hold back part of a small
    # cluster for operators that do not exist, and a 2-CPU machine could then not start 2 one-CPU actors
    ctx.op_resource_reservation_enabled = False
    return ray


SHARD_FILE = re.compile(r"part-\d{5}\.(parquet|json)|\.part-\d{5}\.parquet\.tmp\d+")


def _own_files(out_dir: Path) -> list[Path]:
    """The files of a Ray output directory cdr wrote (by name): the only ones it may remove there."""
    return [
        p
        for p in out_dir.iterdir()
        if p.is_file() and (SHARD_FILE.fullmatch(p.name) or p.name in (STATE, "errors.jsonl"))
    ]


def _read_state(state_path: Path) -> dict[str, Any]:
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("key"), dict):
            raise TypeError
        return state
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        raise CdrError(
            f"'{state_path}' is damaged or not a cdr state file; move the directory aside, or remove "
            f"'{state_path}' and pass --overwrite to start again"
        ) from None


def _check_out_dir(out_dir: Path) -> None:
    """A Ray output must be a new or empty directory, or one cdr's Ray engine wrote (it holds cdr-ray.json)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CdrError(f"with --engine ray the output is a directory of Parquet shards; '{out_dir}' is a file")
    if out_dir.is_dir() and not (out_dir / STATE).exists() and any(out_dir.iterdir()):
        raise CdrError(
            f"'{out_dir}' is a directory cdr did not write (it has no {STATE}); cdr never deletes or mixes "
            "into such a directory, even with --overwrite: choose another output"
        )


def _load_state(
    out_dir: Path, key: dict[str, Any], overwrite: bool, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    state_path = out_dir / STATE
    _check_out_dir(out_dir)
    if overwrite and state_path.exists():
        _read_state(state_path)  # cdr's own directory: remove only the files it wrote there
        for p in _own_files(out_dir):
            p.unlink()
    if state_path.exists():
        state = _read_state(state_path)
        if check_same_run(out_dir, state["key"], key, log or logger.info):
            state["key"] = key  # the input moved (same bytes): the state says where it is now
            _save_state(out_dir, state)
        return state
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {"key": key, "complete": False}
    _save_state(out_dir, state)
    return state


def _save_state(out_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(out_dir / STATE, json.dumps(state, indent=1))


def _write_shard(out_dir: Path, shard: Shard, rows: list[dict], errors: list[dict], counts: Counter) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = out_dir / f".{shard.name}.parquet.tmp{os.getpid()}"
    pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in columns}), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    sha = file_sha(tmp)
    os.replace(tmp, out_dir / f"{shard.name}.parquet")
    mark = {
        "shard": {"index": shard.index, "start": shard.start, "stop": shard.stop},
        "output_rows": len(rows),
        "parquet_sha256": sha,
        "counts": dict(counts),
        "errors": errors,
    }
    atomic_write_text(out_dir / f"{shard.name}.json", json.dumps(mark, ensure_ascii=False))


def _read_mark(out_dir: Path, shard: Shard) -> dict[str, Any] | None:
    try:
        mark = json.loads((out_dir / f"{shard.name}.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return mark if isinstance(mark, dict) else None


def shard_problem(out_dir: Path, shard: Shard) -> str | None:
    """None if the shard is finished and intact; else why it must be computed (again)."""
    mark_path, parquet = out_dir / f"{shard.name}.json", out_dir / f"{shard.name}.parquet"
    if not mark_path.exists():
        return "not finished" if not parquet.exists() else "not finished (no completion mark)"
    mark = _read_mark(out_dir, shard)
    if mark is None or mark.get("shard") != {"index": shard.index, "start": shard.start, "stop": shard.stop}:
        return f"its completion mark '{mark_path}' is damaged"
    if not parquet.exists():
        return f"'{parquet}' is missing"
    if mark.get("parquet_sha256") != file_sha(parquet):
        return f"'{parquet}' does not match its checksum (changed or damaged)"
    return None


def shard_done(out_dir: Path, shard: Shard) -> bool:
    return shard_problem(out_dir, shard) is None


def run_rows_ray(
    input_path: str | Path,
    output_dir: str | Path,
    job,
    config,
    options: RayOptions = RayOptions(),
    *,
    key: dict[str, Any],
    input_format: str | None = None,
    on_error: str = "skip",
    overwrite: bool = False,
    progress: bool = True,
    limit: int | None = None,
    log: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run ``job`` (a ScoreJob, AnnotateJob or EvalJob) over ``input_path`` on Ray, into ``output_dir``
    (Parquet shards). ``key`` identifies the run, as for ``run_rows``; ``config`` is the RewardConfig each
    actor builds its reward from."""
    start = time.time()
    fmt = check_input(input_path, input_format)
    if on_error not in ("skip", "fail"):
        raise CdrError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    out_dir = Path(output_dir)
    if out_dir.suffix in (".jsonl", ".json", ".parquet", ".csv"):
        raise CdrError(f"with --engine ray the output is a directory of Parquet shards; got '{out_dir}'")
    check_ray_output(input_path, out_dir)
    key = RunKey.of(
        input_path, on_error, limit, {"shard_rows": options.shard_rows, "batch_rows": options.batch_rows, **key}
    ).as_json()
    lock = OutputLock(lock_path(out_dir), out_dir)
    try:
        return _run_locked(
            input_path, fmt, out_dir, job, config, options, key, on_error, overwrite, progress, limit, log, start
        )
    finally:
        lock.release()


def _remove_partial_shards(out_dir: Path) -> None:
    """Shard files a killed run was still writing (``.part-NNNNN.parquet.tmpPID``, cdr's own naming): never
    read, and safe to delete because this run holds the output's lock."""
    if out_dir.is_dir():
        for path in out_dir.glob(".part-*.parquet.tmp*"):
            if SHARD_FILE.fullmatch(path.name):
                path.unlink(missing_ok=True)


def check_ray_output(input_path, out_dir: Path) -> None:
    """The checks of a Ray output that need no model and no cluster."""
    if Path(input_path).resolve() == out_dir.resolve():
        raise CdrError(f"the output '{out_dir}' is the input file; choose another output")
    _check_out_dir(out_dir)
    check_writable(out_dir / STATE)
    check_lock_free(out_dir)


def _run_locked(
    input_path, fmt, out_dir, job, config, options, key, on_error, overwrite, progress, limit, log, start
) -> RunSummary:
    state = _load_state(out_dir, key, overwrite, log)
    _remove_partial_shards(out_dir)
    shards = plan_shards(input_path, fmt, options.shard_rows, options.batch_rows, limit)
    pending = []
    for s in shards:
        problem = shard_problem(out_dir, s)
        if problem is not None:
            if problem not in ("not finished", "not finished (no completion mark)"):
                (log or logger.warning)(
                    f"cdr: warning: shard {s.name} (rows {s.start + 1}-{s.stop}): {problem}; it is computed again"
                )
            for p in (out_dir / f"{s.name}.json", out_dir / f"{s.name}.parquet"):
                p.unlink(missing_ok=True)
            pending.append(s)
    done_rows = sum(s.rows for s in shards if s not in pending)
    total_counts: Counter = Counter()
    for s in shards:
        if s not in pending:
            total_counts.update(_read_mark(out_dir, s)["counts"])
    if pending and done_rows:
        (log or logger.info)(f"resuming {out_dir}: {len(shards) - len(pending)} of {len(shards)} shards already done")
    if pending:
        state["complete"] = False
        _run_pending(
            pending,
            input_path,
            fmt,
            out_dir,
            job,
            config,
            options,
            on_error,
            state,
            total_counts,
            progress,
            total_rows=sum(s.rows for s in shards),
            done_rows=done_rows,
        )
    missing = [s.name for s in shards if not shard_done(out_dir, s)]
    if missing:
        raise CdrError(
            f"the Ray run ended with unfinished shards ({', '.join(missing[:5])}); run the same command again"
        )
    state["complete"] = True
    _save_state(out_dir, state)
    errors_file = _merge_errors(out_dir, shards)
    return RunSummary(
        out_dir,
        sum(s.rows for s in shards),
        total_counts,
        time.time() - start,
        errors_file,
        done_rows,
        tuple(job.summary_order),
        skipped_kinds(total_counts),
        result_key=getattr(job, "result_key", None),
    )


def _run_pending(
    pending: list[Shard],
    input_path,
    fmt: str,
    out_dir: Path,
    job,
    config,
    options: RayOptions,
    on_error: str,
    state: dict,
    total_counts: Counter,
    progress: bool,
    total_rows: int,
    done_rows: int,
) -> None:
    ray = _init_ray(options)
    actor_config = config.replace(threads=config.strong_options.threads or max(1, int(options.cpus_per_actor)))
    items = [asdict(p) for s in pending for p in s.pieces]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    constructor = {
        "job": job,
        "config": actor_config,
        "on_error": on_error,
        "path": str(Path(input_path).resolve()),
        "fmt": fmt,
    }
    ds = ds.map_batches(
        PairActor,
        fn_constructor_kwargs=constructor,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=options.num_actors),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
    )
    assembly = ShardAssembly(pending)
    bar = progress_bar(total_rows, done_rows, job.desc) if progress else None
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            cols = batch.to_pydict()
            for shard, part, kind, payload in zip(cols["shard"], cols["part"], cols["kind"], cols["payload"]):
                value = json.loads(payload)
                if kind == "abort":
                    raise CdrError(value)
                if kind == "row":
                    assembly.rows[shard][part].append(value)
                elif kind == "error":
                    assembly.errors[shard].append(value)
                else:  # done: every row of this piece is in
                    if state.get("provenance") != value["provenance"]:
                        state["provenance"] = value["provenance"]
                        _save_state(out_dir, state)
                    if bar:
                        bar.update(value["rows"])
                    if assembly.piece_done(shard, value["rows"], value["counts"]):
                        s, rows, errors, counts = assembly.take(shard)
                        _write_shard(out_dir, s, rows, errors, counts)
                        total_counts.update(counts)
    finally:
        if bar:
            bar.close()


class ShardAssembly:
    """The actors' records of the pending shards, gathered per shard (their pieces arrive in any order) until
    every row of a shard is accounted for."""

    def __init__(self, pending: list[Shard]):
        self.pending = {s.index: s for s in pending}
        self.rows: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))  # shard -> piece start -> rows
        self.errors: dict[int, list] = defaultdict(list)
        self.counts: dict[int, Counter] = defaultdict(Counter)
        self.covered: Counter = Counter()  # shard -> input rows done

    def piece_done(self, shard: int, rows: int, counts: dict[str, int]) -> bool:
        """Count a finished piece of ``shard`` in; True when that completes the shard."""
        self.counts[shard].update(counts)
        self.covered[shard] += rows
        return self.covered[shard] == self.pending[shard].rows

    def take(self, shard: int) -> tuple[Shard, list[dict], list[dict], Counter]:
        """A complete shard with its output rows in input order, its row reports in row order and its counts."""
        pieces = self.rows.pop(shard, {})
        rows = [r for first in sorted(pieces) for r in pieces[first]]
        errors = sorted(self.errors.pop(shard, []), key=lambda e: _location_order(e["location"]))
        return self.pending[shard], rows, errors, self.counts.pop(shard)


def run_identity(config) -> dict[str, Any]:
    """What produces the rewards, computed on the driver without loading a model (the actors load them):
    the options, the weights' fingerprints and the recipe's hash. Part of the resume key."""
    from cdr.models import resolve_model
    from cdr.recipes import load_recipe

    options = {k: v for k, v in config.flat().items() if k not in ("threads", "recipe")}
    recipe = load_recipe(config.recipe)
    return {
        **options,
        "recipe": recipe.name,
        "recipe_sha256": recipe.sha256(),
        "strong_sha256": resolve_model(config.strong, "strong").fingerprint(),
        "weak_sha256": resolve_model(config.weak, "weak").fingerprint(),
    }


def run_provenance(out_dir: str | Path) -> dict[str, Any] | None:
    """The provenance the actors reported (what the output's cdr_* columns hold)."""
    path = Path(out_dir) / STATE
    return json.loads(path.read_text()).get("provenance") if path.exists() else None


def _location_order(location: str) -> int:
    try:
        return int(location.split()[-1])
    except (ValueError, IndexError):
        return 0


def _merge_errors(out_dir: Path, shards: list[Shard]) -> Path | None:
    """All shards' row reports in one ``errors.jsonl`` beside the shards (None when there are none)."""
    lines = []
    for s in shards:
        for e in _read_mark(out_dir, s)["errors"]:
            lines.append(json.dumps(e, ensure_ascii=False) + "\n")
    path = out_dir / "errors.jsonl"
    if not lines:
        path.unlink(missing_ok=True)
        return None
    atomic_write_text(path, "".join(lines))
    return path
