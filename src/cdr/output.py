"""Crash-safe, resumable output.

Rows are appended to a journal (``OUT.cdr-partial.jsonl``) and fsynced chunk by chunk; a small state file
(``OUT.cdr-state.json``, replaced atomically) records, for every finished chunk, how many input rows are
done, where the chunk ends in the journal and in the row reports, and a sha256 of its bytes in both. On a
resume the journal is checked chunk by chunk against those records: bytes past the last recorded chunk
(a run killed mid-chunk, even by ``kill -9``) are cut off, and a chunk that is missing, short or does not
match its checksum (a truncated, deleted or edited journal) is computed again, with everything after it,
with a warning naming it. So the output holds exactly the rows of the input, each once, never a damaged
line. When the run finishes, the journal becomes the output (renamed for JSONL, converted for
Parquet/CSV/dataset) in one atomic replace.

While a run writes an output it holds an exclusive lock (``OUT.cdr-lock``, ``flock``): a second run on the
same output is refused instead of interleaving its rows with the first one's.

What cdr may delete: only its own files for this output, recognised by name (the journal, the state, the
row reports, the lock) and, for a dataset directory, by the ``cdr-output.json`` marker cdr writes into
it. ``--overwrite`` never deletes anything up front: the old output is replaced atomically when the new
one is complete, and a directory cdr did not write is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdr.data import detect_format
from cdr.errors import CdrError

logger = logging.getLogger(__name__)

STATE_FORMAT = 2
MARKER = "cdr resumable output"
DATASET_MARKER = "cdr-output.json"  # written into a dataset directory cdr publishes
RAY_STATE = "cdr-ray.json"  # the state file of a directory of Parquet shards that --engine ray writes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the file itself was fsynced
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader (or a crash) sees the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# --- strict JSON -------------------------------------------------------------------------------------------


def _finite(value: Any, path: str, found: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        found.append(f"{path} ({'NaN' if value != value else 'Infinity' if value > 0 else '-Infinity'})")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


def strict_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every NaN/Infinity replaced by null (strict JSON parsers reject them), and the row's
    ``cdr_error`` saying which fields were replaced and why."""
    found: list[str] = []
    clean = _finite(record, "", found)
    if found:
        why = "not a finite number, written as null: " + ", ".join(found)
        clean["cdr_error"] = f"{clean['cdr_error']}; {why}" if clean.get("cdr_error") else why
    return clean


def encode_lines(records: list[dict[str, Any]]) -> bytes:
    return "".join(
        json.dumps(strict_record(r), ensure_ascii=False, default=str, allow_nan=False) + "\n" for r in records
    ).encode("utf-8")


# --- the lock ------------------------------------------------------------------------------------------------


class OutputLock:
    """An exclusive ``flock`` on ``path`` (created if needed, removed on release), refusing at once when
    another process holds it. ``what`` names the output in the message."""

    def __init__(self, path: Path, what: Path):
        import fcntl

        self.path = path
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = os.read(fd, 64).decode(errors="replace").strip()
                except OSError:
                    holder = ""
                os.close(fd)
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise CdrError(
                    f"'{what}' is being written by another cdr run{pid}; wait for it to finish, "
                    "or choose another output"
                ) from None
            try:  # the holder may have removed the file between our open and our lock: lock the new one then
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it, so no one locks a file about to vanish
        finally:
            os.close(self.fd)
            self.fd = None


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".cdr-lock")


def check_lock_free(output: Path) -> None:
    """Fail now if another run holds ``output``'s lock (before any model is loaded)."""
    path = lock_path(output)
    if not path.exists():
        return
    OutputLock(path, output).release()


# --- output paths -------------------------------------------------------------------------------------------


def companion_paths(output: Path) -> dict[str, Path]:
    """The files cdr keeps beside an output: the only ones, besides the output, it may ever remove."""
    return {
        "journal": output.with_name(output.name + ".cdr-partial.jsonl"),
        "errors": output.with_name(output.name + ".errors.jsonl"),
        "state": output.with_name(output.name + ".cdr-state.json"),
        "lock": lock_path(output),
    }


def is_cdr_dataset_dir(path: Path) -> bool:
    return (path / DATASET_MARKER).is_file()


def check_output_target(output: Path, fmt: str) -> None:
    """Refuse outputs cdr must never replace: a directory it did not write, or one where a file belongs."""
    if output.is_dir():
        if fmt != "dataset":
            raise CdrError(f"output '{output}' is a directory; give a file name ending in .jsonl, .parquet or .csv")
        if any(output.iterdir()) and not is_cdr_dataset_dir(output):
            raise CdrError(
                f"output '{output}' is a directory cdr did not write (it has no {DATASET_MARKER}); "
                "cdr never replaces such a directory, even with --overwrite: choose another output"
            )


def check_not_input(input_path: str | Path, output: Path) -> None:
    """The output (or a file cdr keeps beside it) may never be the input: also through links."""
    src = Path(input_path)
    for name, p in {"output": output, **companion_paths(output)}.items():
        same = False
        try:
            same = p.exists() and src.exists() and os.path.samefile(src, p)
        except OSError:  # cannot stat one of them: the resolved-path comparison below still applies
            pass
        if same or p.resolve() == src.resolve():
            what = f"output '{output}'" if name == "output" else f"{name} file of output '{output}' ('{p}')"
            raise CdrError(f"the {what} is the input file '{input_path}'; choose another output")


# --- the run's identity --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunKey:
    """What a run must share with the run that wrote an output to resume it: the input file's content (its size
    and sha256), --on-error, --limit and the pipeline's own ``settings`` (its options and what produces the
    rewards). Both engines store it, as ``as_json()``, in their state file.

    The input's path and mtime are stored too, but only to say where it was: a half-done run whose folder was
    copied or moved (``cp -r``, rsync without times, a git checkout) resumes when the input's bytes are the same,
    and an input edited in place is refused even when its size and mtime were put back."""

    input: str
    input_size: int
    input_mtime_ns: int
    input_sha256: str
    on_error: str
    limit: int | None
    settings: dict[str, Any]

    @classmethod
    def of(cls, input_path: str | Path, on_error: str, limit: int | None, settings: dict[str, Any]) -> RunKey:
        st = os.stat(input_path)
        # hashing reads the input once more; the run reads and scores all of it, which costs far more
        return cls(
            str(Path(input_path).resolve()),
            st.st_size,
            st.st_mtime_ns,
            file_sha(Path(input_path)),
            on_error,
            limit,
            settings,
        )

    def as_json(self) -> dict[str, Any]:
        """One flat object, the settings last, as the state file holds it."""
        return json_key(
            {
                "input": self.input,
                "input_size": self.input_size,
                "input_mtime_ns": self.input_mtime_ns,
                "input_sha256": self.input_sha256,
                "on_error": self.on_error,
                "limit": self.limit,
                **self.settings,
            }
        )


def json_key(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` as it reads back from a state file (tuples as lists, other objects as their text), so that a
    stored key and a new one compare equal when they are the same."""
    return json.loads(json.dumps(key, default=str))


# where the input lies: compared only for a state written before cdr stored the input's sha256
_INPUT_PLACE = ("input", "input_mtime_ns")


def check_same_run(
    output: Path, stored: dict[str, Any], key: dict[str, Any], log: Callable[[str], None] | None = None
) -> bool:
    """Refuse to resume an output that a run with other settings wrote, naming the settings that changed.

    The input is the same when its bytes are (size and sha256), wherever it lies now; a state from before cdr
    stored the sha256 still needs the same path and mtime. Returns True when the input was found at another
    path or with another mtime (the caller then records the new place in its state), after saying so in ``log``."""
    by_content = "input_sha256" in stored
    ignored = set(_INPUT_PLACE) if by_content else {"input_sha256"}
    changed = sorted(k for k in set(key) | set(stored) if k not in ignored and key.get(k) != stored.get(k))
    if changed:
        edited = "; the input file's content is not what the run started from" if "input_sha256" in changed else ""
        raise CdrError(
            f"'{output}' belongs to a run with different settings ({', '.join(changed)} changed{edited}); "
            "pass --overwrite to start again, or choose another output"
        )
    moved = by_content and any(key.get(k) != stored.get(k) for k in _INPUT_PLACE)
    if moved and log is not None:
        was = stored.get("input")
        where = f"now '{key.get('input')}', was '{was}'" if was != key.get("input") else "its mtime changed"
        log(f"cdr: the input has the same content as when '{output}' was started ({where}); resuming")
    return moved


# --- the resumable output ------------------------------------------------------------------------------------


@dataclass
class RunState:
    key: dict[str, Any]
    rows_done: int = 0
    journal_bytes: int = 0
    errors_bytes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    # one record per finished chunk: rows done after it, where it ends in the journal and in the row
    # reports, the sha256 of its bytes in each, and what it added to the counts
    chunks: list[dict[str, Any]] = field(default_factory=list)
    published: dict[str, Any] | None = None  # set just before the journal becomes the output
    cdr: str = MARKER
    format: int = STATE_FORMAT


def _log(msg: str) -> None:
    logger.warning(msg) if msg.startswith("cdr: warning") else logger.info(msg)


class ResumableOutput:
    def __init__(
        self,
        output: str | Path,
        key: dict[str, Any],
        fmt: str | None = None,
        overwrite: bool = False,
        log: Callable[[str], None] | None = None,
        input_path: str | Path | None = None,
    ):
        self.path = Path(output)
        self.log = log or _log
        self.format = detect_format(self.path, fmt, output=True)
        paths = companion_paths(self.path)
        self.journal, self.errors, self.state_path = paths["journal"], paths["errors"], paths["state"]
        if input_path is not None:
            check_not_input(input_path, self.path)
        check_output_target(self.path, self.format)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock: OutputLock | None = OutputLock(paths["lock"], self.path)
        try:
            key = json_key(key)
            if overwrite:  # only cdr's own files; the old output stays until the new one replaces it
                for p in (self.journal, self.errors, self.state_path):
                    p.unlink(missing_ok=True)
            self.state = self._load_state(key, overwrite)
            if not self.state.complete:
                self._verify()
        except BaseException:
            self.close()
            raise

    # -- state -------------------------------------------------------------------------------------------------

    def _load_state(self, key: dict[str, Any], overwrite: bool) -> RunState:
        if not self.state_path.exists():
            if self.path.exists() and not overwrite and not (self.path.is_dir() and not any(self.path.iterdir())):
                raise CdrError(
                    f"'{self.path}' already exists and was not written by an unfinished cdr run; "
                    "pass --overwrite to replace it"
                )
            if self.errors.exists():
                if not overwrite:
                    raise CdrError(
                        f"'{self.errors}' already exists and was not written by an unfinished cdr run; "
                        "pass --overwrite to replace it"
                    )
                self.errors.unlink()
            return RunState(key)
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict) or raw.get("cdr") != MARKER:
                raise TypeError
            if raw.get("format") != STATE_FORMAT:
                raise CdrError(
                    f"'{self.state_path}' was written by another version of cdr (state format "
                    f"{raw.get('format')}, this one reads {STATE_FORMAT}); pass --overwrite to start again"
                )
            state = RunState(**raw)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            raise CdrError(
                f"'{self.state_path}' is damaged or not a cdr state file; pass --overwrite to start again"
            ) from None
        if check_same_run(self.path, state.key, key, self.log):
            state.key = key  # the input moved (same bytes): the state says where it is now
        if state.published and not state.complete and not self.journal.exists() and self.path.exists():
            # killed between publishing the output and recording that
            if self.format != "jsonl" or self.path.is_file() and file_sha(self.path) == state.published["sha256"]:
                state.complete = True
                self.state = state
                self._save_state()
            else:
                raise CdrError(
                    f"'{self.path}' is not the output this run published (its checksum differs) and the "
                    "journal is gone; pass --overwrite to start again"
                )
        if state.complete and not self.path.exists():
            self.log(f"cdr: {self.path} was finished before but is gone now; computing it again")
            return RunState(key)
        return state

    def _verify(self) -> None:
        """Check the journal and the row reports chunk by chunk against the state; cut off what no chunk
        records, and compute again (from the first bad chunk on) what is missing or damaged."""
        s = self.state
        good, problem = 0, None
        j_size = self.journal.stat().st_size if self.journal.exists() else None
        e_size = self.errors.stat().st_size if self.errors.exists() else None
        j_end = e_end = 0
        with _maybe_open(self.journal) as jf, _maybe_open(self.errors) as ef:
            for c in s.chunks:
                problem = _check_part(
                    jf, j_size, j_end, c["journal"], c["journal_sha256"], self.journal
                ) or _check_part(ef, e_size, e_end, c["errors"], c["errors_sha256"], self.errors)
                if problem:
                    break
                j_end, e_end = c["journal"], c["errors"]
                good += 1
        if good < len(s.chunks):
            first_row = s.chunks[good - 1]["rows"] if good else 0
            self.log(f"cdr: warning: {problem}; rows {first_row + 1}-{s.rows_done} are computed again")
            s.chunks = s.chunks[:good]
            s.rows_done = first_row
            counts: dict[str, int] = {}
            for c in s.chunks:
                for k, v in c["counts"].items():
                    counts[k] = counts.get(k, 0) + v
            s.counts = {k: v for k, v in counts.items()}
        s.journal_bytes, s.errors_bytes = j_end, e_end
        s.published = None
        self._truncate(self.journal, j_end)
        self._truncate(self.errors, e_end)
        self._save_state()

    @staticmethod
    def _truncate(path: Path, size: int) -> None:
        if size == 0:
            path.unlink(missing_ok=True)
        elif path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())

    @property
    def rows_done(self) -> int:
        return self.state.rows_done

    @property
    def complete(self) -> bool:
        return self.state.complete

    def append(
        self, rows: list[dict[str, Any]], errors: list[dict[str, Any]], rows_done: int, counts: dict[str, int]
    ) -> None:
        """Durably record a finished chunk: its output rows, its error reports, and the new position."""
        s = self.state
        j_data, e_data = encode_lines(rows), encode_lines(errors)
        s.journal_bytes = self._append_bytes(self.journal, j_data, s.journal_bytes)
        s.errors_bytes = self._append_bytes(self.errors, e_data, s.errors_bytes)
        delta = {k: v - s.counts.get(k, 0) for k, v in counts.items() if v != s.counts.get(k, 0)}
        s.chunks.append(
            {
                "rows": rows_done,
                "journal": s.journal_bytes,
                "journal_sha256": _sha(j_data),
                "errors": s.errors_bytes,
                "errors_sha256": _sha(e_data),
                "counts": delta,
            }
        )
        s.rows_done = rows_done
        s.counts = dict(counts)
        self._save_state()

    @staticmethod
    def _append_bytes(path: Path, data: bytes, size: int) -> int:
        if not data:
            return size
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if size == 0:  # a new file: make its name durable too
            fsync_dir(path.parent)
        return size + len(data)

    def _save_state(self) -> None:
        atomic_write_text(self.state_path, json.dumps(self.state.__dict__, separators=(",", ":")))

    def finish(self) -> None:
        """Publish the journal as the output file, atomically."""
        if not self.journal.exists():
            self.journal.write_bytes(b"")
        check_output_target(self.path, self.format)  # nothing became a foreign directory meanwhile
        self.state.published = {"sha256": file_sha(self.journal)}
        self._save_state()
        if self.format == "jsonl":
            os.replace(self.journal, self.path)
        else:
            tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            _remove_own_tmp(tmp)
            _convert_jsonl(self.journal, tmp, self.format)
            if self.format == "dataset":
                (tmp / DATASET_MARKER).write_text(json.dumps({"cdr": MARKER, "state": self.state_path.name}))
            old = None
            if self.path.is_dir():  # our own dataset directory from an earlier run (checked above)
                old = self.path.with_name(f".{self.path.name}.old{os.getpid()}")
                _remove_own_tmp(old)
                os.replace(self.path, old)
            os.replace(tmp, self.path)
            if old is not None:
                shutil.rmtree(old)
            self.journal.unlink()
        fsync_dir(self.path.parent)
        self.state.complete = True
        self._save_state()

    def close(self) -> None:
        """Release the lock (the files stay: a later run resumes from them)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ResumableOutput:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _maybe_open:
    def __init__(self, path: Path):
        self.path = path
        self.f = None

    def __enter__(self):
        if self.path.exists():
            self.f = open(self.path, "rb")
        return self.f

    def __exit__(self, *exc):
        if self.f:
            self.f.close()


def _check_part(f, size: int | None, start: int, end: int, sha: str, path: Path) -> str | None:
    """None if bytes [start, end) of the open file ``f`` match ``sha``, else what is wrong."""
    if end == start:
        return None
    if f is None:
        return f"'{path}' is missing"
    if size < end:
        return f"'{path}' is shorter ({size} bytes) than its finished chunks ({end} bytes)"
    f.seek(start)
    if _sha(f.read(end - start)) != sha:
        return f"'{path}' bytes {start}-{end} do not match their checksum (the file was changed or damaged)"
    return None


def _remove_own_tmp(path: Path) -> None:
    """A temporary file or directory of cdr's own naming (``.NAME.tmpPID`` / ``.NAME.oldPID``)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _convert_jsonl(src: Path, dst: Path, fmt: str) -> None:
    import pyarrow as pa

    with open(src, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    # Rows may differ in their columns; from_pylist would take the first row's keys only.
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "dataset":
        import datasets

        table = pa.table({c: [r.get(c) for r in rows] for c in columns})
        datasets.Dataset(table).save_to_disk(str(dst))
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        def cell(v):
            return json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v

        data = {c: [cell(r.get(c)) for r in rows] for c in columns}
        pacsv.write_csv(pa.table(data) if columns else pa.table({}), dst)
    else:
        import pyarrow.parquet as pq

        pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in columns}), dst)


def read_shards(out_dir: str | Path) -> list[dict[str, Any]]:
    """A Ray output directory back as rows, in input order (finished shards only: those with a completion
    mark ``part-NNNNN.json`` beside their ``part-NNNNN.parquet``)."""
    import pyarrow.parquet as pq

    out = []
    for mark in sorted(Path(out_dir).glob("part-*.json")):
        parquet = mark.with_suffix(".parquet")
        if parquet.exists():
            out.extend(pq.read_table(parquet).to_pylist())
    return out


def read_output(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Read a finished output back as rows (nested columns decoded from CSV's JSON text)."""
    path = Path(path)
    if (path / RAY_STATE).exists():
        return read_shards(path)
    fmt = detect_format(path, fmt, output=True)
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if fmt == "dataset":
        import datasets

        return datasets.load_from_disk(str(path)).to_list()
    import csv

    def cell(v: str) -> Any:
        if v[:1] in "[{":
            try:
                return json.loads(v)
            except json.JSONDecodeError:
                return v
        return v

    with open(path, newline="", encoding="utf-8") as f:
        return [{k: cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_if_changed(path: Path, text: str) -> None:
    """Write an input file a pipeline derives (selected rows, expanded demo rows), leaving an identical file
    alone (a resume recognises it by its bytes; leaving it keeps its mtime, so tools that go by times, such as
    make or rsync, see no change either)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
