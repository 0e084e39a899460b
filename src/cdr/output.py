"""Crash-safe, resumable output.

Rows are appended to a journal (``OUT.cdr-partial.jsonl``) and fsynced chunk by chunk; a small state file
(``OUT.cdr-state.json``, replaced atomically) records how many input rows are done and how many journal
bytes belong to them. After a crash (even ``kill -9``) the journal is cut back to the recorded length and
the run continues from the recorded row: nothing lost, nothing duplicated. When the run finishes, the
journal becomes the output (renamed for JSONL, converted for Parquet/CSV) in one atomic replace.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdr.data import detect_format
from cdr.errors import CdrError
from cdr.models import atomic_write_text


@dataclass
class RunState:
    key: dict[str, Any]
    rows_done: int = 0
    journal_bytes: int = 0
    errors_bytes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    complete: bool = False


class ResumableOutput:
    def __init__(self, output: str | Path, key: dict[str, Any], fmt: str | None = None, overwrite: bool = False):
        self.path = Path(output)
        self.format = detect_format(self.path, fmt, output=True)
        self.journal = self.path.with_name(self.path.name + ".cdr-partial.jsonl")
        self.errors = self.path.with_name(self.path.name + ".errors.jsonl")
        self.state_path = self.path.with_name(self.path.name + ".cdr-state.json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = json.loads(json.dumps(key, default=str))
        if overwrite:
            if self.path.is_dir():
                shutil.rmtree(self.path)
            for p in (self.path, self.journal, self.errors, self.state_path):
                p.unlink(missing_ok=True)
        self.state = self._load_state(key)
        if not self.state.complete and self.state.journal_bytes and not self.journal.exists() and self.path.exists():
            # killed between publishing the output and recording that: the output is the whole journal
            self.state.complete = True
            self._save_state()
        self._truncate(self.journal, self.state.journal_bytes)
        self._truncate(self.errors, self.state.errors_bytes)

    def _load_state(self, key: dict[str, Any]) -> RunState:
        if not self.state_path.exists():
            if self.path.exists():
                raise CdrError(f"'{self.path}' already exists and was not written by an unfinished cdr run; "
                               "pass --overwrite to replace it")
            return RunState(key)
        try:
            state = RunState(**json.loads(self.state_path.read_text()))
        except (json.JSONDecodeError, TypeError):
            raise CdrError(f"'{self.state_path}' is damaged; pass --overwrite to start again") from None
        if state.key != key:
            changed = sorted(k for k in set(key) | set(state.key) if key.get(k) != state.key.get(k))
            raise CdrError(
                f"'{self.path}' belongs to a run with different settings ({', '.join(changed)} changed); "
                "pass --overwrite to start again, or choose another output"
            )
        return state

    @staticmethod
    def _truncate(path: Path, size: int) -> None:
        if size == 0:
            path.unlink(missing_ok=True)
        elif path.exists() and path.stat().st_size != size:
            with open(path, "r+b") as f:
                f.truncate(size)

    @property
    def rows_done(self) -> int:
        return self.state.rows_done

    @property
    def complete(self) -> bool:
        return self.state.complete

    def append(self, rows: list[dict[str, Any]], errors: list[dict[str, Any]], rows_done: int, counts: dict[str, int]) -> None:
        """Durably record a finished chunk: its output rows, its error reports, and the new position."""
        self.state.journal_bytes = self._append_lines(self.journal, rows, self.state.journal_bytes)
        self.state.errors_bytes = self._append_lines(self.errors, errors, self.state.errors_bytes)
        self.state.rows_done = rows_done
        self.state.counts = dict(counts)
        self._save_state()

    @staticmethod
    def _append_lines(path: Path, records: list[dict[str, Any]], size: int) -> int:
        if not records:
            return size
        data = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records).encode()
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return size + len(data)

    def _save_state(self) -> None:
        atomic_write_text(self.state_path, json.dumps(self.state.__dict__, indent=1))

    def finish(self) -> None:
        """Publish the journal as the output file, atomically."""
        if not self.journal.exists():
            self.journal.write_bytes(b"")
        if self.format == "jsonl":
            os.replace(self.journal, self.path)
        else:
            tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            if tmp.is_dir():
                shutil.rmtree(tmp)
            _convert_jsonl(self.journal, tmp, self.format)
            if self.path.is_dir():  # a dataset directory from an interrupted earlier publish
                shutil.rmtree(self.path)
            os.replace(tmp, self.path)
            self.journal.unlink()
        self.state.complete = True
        self._save_state()


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


def read_output(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Read a finished output back as rows (nested columns decoded from CSV's JSON text)."""
    path = Path(path)
    if (path / "cdr-ray.json").exists():  # a directory of Parquet shards from --engine ray
        from cdr.pipelines.ray_runner import read_shards

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
    alone: its mtime is part of the resume key, so rewriting it would restart the run."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
