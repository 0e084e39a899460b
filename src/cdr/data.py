"""Input rows: JSONL, Parquet or CSV, streamed, each row tagged with where it came from.

JSONL is read line by line so that one bad line (invalid JSON, non-UTF-8 bytes) is reported with its
line number instead of failing the whole file; Parquet and CSV go through pyarrow in batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdr.conversation import Conversation, ConversationError
from cdr.errors import CdrError, RowError

FORMATS = ("jsonl", "parquet", "csv")


def detect_format(path: str | Path, explicit: str | None = None, output: bool = False) -> str:
    """The file format from ``explicit`` or the extension. An output path without one is a ``datasets``
    dataset directory (``save_to_disk``)."""
    allowed = FORMATS + (("dataset",) if output else ())
    if explicit:
        if explicit not in allowed:
            raise CdrError(f"format must be one of {', '.join(allowed)}, got {explicit!r}")
        return explicit
    suffix = Path(path).suffix.lower()
    if output and suffix == "":
        return "dataset"
    fmt = {
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".ndjson": "jsonl",
        ".parquet": "parquet",
        ".pq": "parquet",
        ".csv": "csv",
    }.get(suffix)
    if fmt is None:
        flag = "--output-format" if output else "--input-format"
        raise CdrError(
            f"cannot tell the format of '{path}' from its extension; use .jsonl, .parquet or .csv (or {flag})"
        )
    return fmt


@dataclass(frozen=True)
class RawRow:
    """``data`` is the parsed row, or None with ``error`` set when the row could not be parsed at all."""

    index: int  # 0-based position among the file's rows (blank JSONL lines are not rows)
    location: str  # 'line 7' or 'row 7', for messages
    data: dict[str, Any] | None
    error: RowError | None = None
    notes: tuple[RowError, ...] = ()  # problems the row survives (a duplicate key: the last value is used)


MAX_DEPTH = 100  # JSON nesting a row may have (a conversation needs 4); deeper is a malformed row


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, list):
            continue
        if d > limit:
            return True
        stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return False


def parse_json_row(text: str, where: str) -> tuple[Any, RowError | None, tuple[RowError, ...]]:
    """One JSON row: (value, error, notes). Malformed, too deeply nested or non-object rows get an error;
    a key given twice in one object is a note (the last value wins, as in every JSON reader)."""
    duplicates: list[str] = []

    def pairs(items):
        obj: dict[str, Any] = {}
        for k, v in items:
            if k in obj and k not in duplicates:
                duplicates.append(k)
            obj[k] = v
        return obj

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        return None, RowError(where, None, f"not valid JSON: {exc.msg} at column {exc.colno}", "bad JSON"), ()
    except RecursionError:
        return None, RowError(where, None, f"nested deeper than {MAX_DEPTH} levels", "bad JSON"), ()
    if not isinstance(data, dict):
        return None, RowError(where, None, f"expected a JSON object, got {type(data).__name__}", "bad JSON"), ()
    if _depth_exceeds(data, MAX_DEPTH):
        return None, RowError(where, None, f"nested deeper than {MAX_DEPTH} levels", "bad JSON"), ()
    notes = tuple(
        RowError(where, k, "appears twice in the row; the last value is used", "duplicate key") for k in duplicates
    )
    return data, None, notes


def count_rows(path: str | Path, fmt: str | None = None) -> int:
    fmt = detect_format(path, fmt)
    if fmt == "jsonl":
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)  # quoted cells may span lines: count records


def iter_rows(path: str | Path, fmt: str | None = None, batch_rows: int = 1024) -> Iterator[RawRow]:
    fmt = detect_format(path, fmt)
    if Path(path).is_dir():
        raise CdrError(f"input '{path}' is a directory, not a file")
    if not Path(path).exists():
        raise CdrError(f"input file '{path}' does not exist")
    if fmt == "jsonl":
        yield from _iter_jsonl(path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                yield RawRow(index, f"row {index + 1}", row)
                index += 1
    else:
        yield from _iter_csv(path, batch_rows)


def _iter_jsonl(path: str | Path, offset: int = 0, first_line: int = 1, first_index: int = 0) -> Iterator[RawRow]:
    """Rows from byte ``offset`` on (which must start a line: line number ``first_line``, row ``first_index``)."""
    index = first_index
    with open(path, "rb") as f:
        f.seek(offset)
        for lineno, raw in enumerate(f, start=first_line):
            if not raw.strip():
                continue
            where = f"line {lineno}"
            data, error, notes = None, None, ()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                error = RowError(where, None, f"not valid UTF-8 (byte {exc.start} of the line)", "not UTF-8")
            else:
                data, error, notes = parse_json_row(text, where)
            yield RawRow(index, where, data, error, notes)
            index += 1


def _iter_csv(path: str | Path, batch_rows: int) -> Iterator[RawRow]:
    import csv

    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), None)
    if not header:
        return
    # Every column as a string: a prompt that looks like a number stays text.
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in header}, strings_can_be_null=False)
    try:
        reader = pacsv.open_csv(path, convert_options=convert, read_options=pacsv.ReadOptions(block_size=1 << 22))
    except pa.ArrowInvalid as exc:
        raise CdrError(f"{path}: cannot read as CSV: {exc}") from None
    index = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            raise CdrError(f"{path}: CSV error after row {index}: {exc}") from None
        for row in batch.to_pylist():
            yield RawRow(index, f"row {index + 1}", row)
            index += 1


@dataclass(frozen=True)
class Fields:
    """Column names for conversations: ``messages`` (whole conversation) or ``prompt`` + ``response``."""

    messages: str = "messages"
    prompt: str = "prompt"
    response: str = "response"


def conversation_from_row(row: RawRow, fields: Fields) -> Conversation:
    """The row's conversation, or a RowError naming the row and field."""
    if row.error is not None:
        raise row.error
    data = row.data or {}
    try:
        if data.get(fields.messages) not in (None, ""):  # an empty CSV cell is no conversation
            return Conversation.from_messages(_maybe_json(data[fields.messages]), field=fields.messages)
        if data.get(fields.prompt) in (None, "") and data.get(fields.response) in (None, ""):
            raise ConversationError(
                fields.messages,
                f"missing: expected '{fields.messages}', or '{fields.prompt}' and '{fields.response}'",
                "missing field",
            )
        for name in (fields.prompt, fields.response):
            if data.get(name) is None:
                raise ConversationError(name, "missing", "missing field")
        return Conversation.from_prompt_response(
            _maybe_json(data[fields.prompt]), data[fields.response], fields.prompt, fields.response
        )
    except ConversationError as exc:
        raise RowError.from_conversation_error(row.location, exc) from None


def _maybe_json(value: Any) -> Any:
    """CSV cells hold message lists as JSON text."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
