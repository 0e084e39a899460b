import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdr.data import Fields, conversation_from_row, count_rows, iter_rows
from cdr.errors import CdrError, RowError

GOOD = {"prompt": "Hi?", "response": "Hello."}


def write(path, lines: list[bytes]):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_jsonl_bad_lines_keep_line_numbers(tmp_path):
    path = write(
        tmp_path / "in.jsonl",
        [
            json.dumps(GOOD).encode(),
            b"",  # blank lines are not rows but keep the numbering honest
            b'{"prompt": "unterminated',
            b'{"prompt": "caf\xe9", "response": "x"}',  # latin-1 byte, not UTF-8
            b"[1, 2]",
            json.dumps(GOOD).encode(),
        ],
    )
    rows = list(iter_rows(path))
    assert [r.location for r in rows] == ["line 1", "line 3", "line 4", "line 5", "line 6"]
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0].error is None and rows[4].error is None
    assert "not valid JSON" in str(rows[1].error) and "line 3" in str(rows[1].error)
    assert "not valid UTF-8" in str(rows[2].error)
    assert "expected a JSON object, got list" in str(rows[3].error)
    assert count_rows(path) == 5


@pytest.mark.parametrize(
    "row, field, fragment",
    [
        ({"prompt": "Hi?"}, "response", "missing"),
        ({"response": "x"}, "prompt", "missing"),
        ({"other": 1}, "messages", "expected 'messages', or 'prompt' and 'response'"),
        ({"prompt": "Hi?", "response": 5}, "response", "got int"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "messages[0].role", "must be 'assistant'"),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 7}]},
            "messages[1].content",
            "got int",
        ),
    ],
)
def test_row_errors_name_location_and_field(tmp_path, row, field, fragment):
    path = write(tmp_path / "in.jsonl", [json.dumps(GOOD).encode(), json.dumps(row).encode()])
    raw = list(iter_rows(path))[1]
    with pytest.raises(RowError) as info:
        conversation_from_row(raw, Fields())
    assert info.value.location == "line 2" and info.value.field == field
    assert fragment in info.value.message
    assert str(info.value).startswith(f"line 2, field '{field}'")


def test_custom_field_names(tmp_path):
    path = write(tmp_path / "in.jsonl", [json.dumps({"q": [{"role": "user", "content": "Hi"}], "a": "Yo"}).encode()])
    conv = conversation_from_row(next(iter_rows(path)), Fields(prompt="q", response="a"))
    assert conv.response == "Yo" and conv.prompt[0].content == "Hi"


def test_parquet_rows(tmp_path):
    path = tmp_path / "in.parquet"
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    table = pa.table({"prompt": ["Hi?", None], "response": ["Hello.", None], "messages": [None, msgs]})
    pq.write_table(table, path)
    rows = list(iter_rows(path))
    assert [r.location for r in rows] == ["row 1", "row 2"]
    assert conversation_from_row(rows[1], Fields()).response == "A"
    assert count_rows(path) == 2


def test_csv_rows_keep_text_and_parse_message_cells(tmp_path):
    path = tmp_path / "in.csv"
    msgs = json.dumps([{"role": "user", "content": "Q, with comma"}, {"role": "assistant", "content": "A"}])
    path.write_text('prompt,response,messages\n"12",Hello,\n,,"' + msgs.replace('"', '""') + '"\n', encoding="utf-8")
    rows = list(iter_rows(path))
    assert count_rows(path) == len(rows) == 2
    assert rows[0].data["prompt"] == "12"  # a numeric-looking prompt stays a string
    assert conversation_from_row(rows[0], Fields()).response == "Hello"
    assert conversation_from_row(rows[1], Fields()).prompt[0].content == "Q, with comma"


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(CdrError, match="cannot tell the format"):
        list(iter_rows(tmp_path / "in.txt"))
    with pytest.raises(CdrError, match="does not exist"):
        list(iter_rows(tmp_path / "missing.jsonl"))
