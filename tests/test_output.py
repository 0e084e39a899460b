import json

import pyarrow.parquet as pq
import pytest

from cdr.errors import CdrError
from cdr.output import ResumableOutput, file_sha

KEY = {"input": "x", "provenance": {"variant": "mean"}}


def test_crash_between_journal_write_and_state_update_loses_nothing(tmp_path):
    out_path = tmp_path / "out.jsonl"
    out = ResumableOutput(out_path, KEY)
    out.append([{"i": 0}, {"i": 1}], [], rows_done=2, counts={"scored": 2})
    # Simulate kill -9 after the journal write of the next chunk but before its state update,
    # including a half-written last line.
    with open(out.journal, "ab") as f:
        f.write(b'{"i": 2}\n{"i": 3, "trunc')
    out.close()  # the process died: its lock went with it
    again = ResumableOutput(out_path, KEY)
    assert again.rows_done == 2 and again.state.counts == {"scored": 2}
    assert out.journal.read_text() == '{"i": 0}\n{"i": 1}\n'
    again.append([{"i": 2}, {"i": 3}], [{"location": "line 5", "error": "bad"}], rows_done=5, counts={"scored": 4})
    again.finish()
    assert [json.loads(line)["i"] for line in out_path.read_text().splitlines()] == [0, 1, 2, 3]
    assert json.loads(again.errors.read_text())["location"] == "line 5"
    assert not again.journal.exists()
    again.close()
    done = ResumableOutput(out_path, KEY)
    assert done.complete


def test_settings_change_refuses_to_resume(tmp_path):
    out = ResumableOutput(tmp_path / "out.jsonl", KEY)
    out.append([{"i": 0}], [], 1, {})
    out.close()
    with pytest.raises(CdrError, match="provenance changed"):
        ResumableOutput(tmp_path / "out.jsonl", {**KEY, "provenance": {"variant": "sum"}})
    fresh = ResumableOutput(tmp_path / "out.jsonl", {**KEY, "provenance": {"variant": "sum"}}, overwrite=True)
    assert fresh.rows_done == 0 and not fresh.journal.exists()


def test_existing_foreign_output_is_not_clobbered(tmp_path):
    (tmp_path / "out.jsonl").write_text("precious\n")
    with pytest.raises(CdrError, match="already exists"):
        ResumableOutput(tmp_path / "out.jsonl", KEY)
    assert (tmp_path / "out.jsonl").read_text() == "precious\n"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_finish_converts(tmp_path, fmt):
    out = ResumableOutput(tmp_path / f"out.{fmt}", KEY)
    rows = [
        {"prompt": "a", "reward": 1.5},
        {"prompt": "b", "reward": None, "messages": [{"role": "user", "content": "q"}]},
    ]
    out.append(rows, [], 2, {})
    out.finish()
    if fmt == "parquet":
        got = pq.read_table(tmp_path / "out.parquet").to_pylist()
        assert got == [{**rows[0], "messages": None}, rows[1]]  # columns of every row, not just the first
    else:
        text = (tmp_path / "out.csv").read_text()
        assert text.splitlines()[0] == '"prompt","reward","messages"'
        assert '""role"": ""user""' in text


def test_kill_between_publish_and_state_update_keeps_the_output(tmp_path):
    out = ResumableOutput(tmp_path / "out.jsonl", KEY)
    out.append([{"i": 0}], [], 1, {})
    import os

    out.state.published = {"sha256": file_sha(out.journal)}
    out._save_state()
    os.replace(out.journal, out.path)  # finish() got this far, then the process died
    out.close()
    again = ResumableOutput(tmp_path / "out.jsonl", KEY)
    assert again.complete
    assert (tmp_path / "out.jsonl").read_text() == '{"i": 0}\n'


def test_dataset_directory_output(tmp_path):
    import datasets

    out = ResumableOutput(tmp_path / "pairs", KEY)
    assert out.format == "dataset"
    out.append([{"prompt": [{"role": "user", "content": "q"}], "score": 1.0}], [], 1, {})
    out.finish()
    ds = datasets.load_from_disk(str(tmp_path / "pairs"))
    assert ds[0] == {"prompt": [{"role": "user", "content": "q"}], "score": 1.0}
