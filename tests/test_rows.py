"""The small shared pieces of the row loop: the run key, the row reports, the result fields."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter

import pytest

from cdr.conversation import ConversationError
from cdr.errors import CdrError, RowError
from cdr.output import RunKey, check_same_run
from cdr.pipelines.runner import SHOWN_ERRORS, RowReports, skipped_kinds
from cdr.pipelines.score import reward_columns
from cdr.reward import RESULT_FIELDS, RewardResult


def test_run_key_is_the_input_as_it_is_the_row_options_then_the_settings(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\n')
    key = RunKey.of(src, "skip", None, {"command": "score", "fields": ("messages",)}).as_json()
    st = src.stat()
    assert list(key) == [
        "input", "input_size", "input_mtime_ns", "input_sha256", "on_error", "limit", "command", "fields"
    ]  # fmt: skip
    assert key["input"] == str(src.resolve()) and key["input_size"] == st.st_size
    assert key["input_sha256"] == hashlib.sha256(b'{"a": 1}\n').hexdigest()
    assert key["input_mtime_ns"] == st.st_mtime_ns and key["fields"] == ["messages"]  # as it reads back from JSON


def test_a_run_with_other_settings_is_refused_naming_what_changed(tmp_path):
    check_same_run(tmp_path, {"a": 1, "b": 2}, {"a": 1, "b": 2})
    with pytest.raises(CdrError) as err:
        check_same_run(tmp_path / "out.jsonl", {"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0})
    assert str(err.value) == (
        f"'{tmp_path / 'out.jsonl'}' belongs to a run with different settings (b, c changed); "
        "pass --overwrite to start again, or choose another output"
    )


def test_row_reports_count_skipped_rows_per_kind_and_show_the_first_ones():
    said: list[str] = []
    reports = RowReports("skip", say=said.append, more_in="out.errors.jsonl")
    for i in range(SHOWN_ERRORS + 2):
        reports.report(RowError(f"line {i + 1}", "prompt", "missing", "missing field"))
    reports.report(RowError("line 99", "k", "appears twice", "duplicate key"), skip_row=False)
    reports.note("line 100", "unscorable", "too long")
    assert reports.counts == Counter({"skipped": SHOWN_ERRORS + 2, "skipped: missing field": SHOWN_ERRORS + 2})
    assert skipped_kinds(reports.counts) == {"missing field": SHOWN_ERRORS + 2}
    assert said[0] == "skipped line 1, field 'prompt': missing"
    assert said[SHOWN_ERRORS:] == ["... more row reports in out.errors.jsonl"]
    errors = reports.take()
    assert errors[-1] == {"location": "line 100", "field": None, "kind": "unscorable", "error": "too long"}
    assert len(errors) == SHOWN_ERRORS + 4 and reports.take() == []


def test_row_reports_raise_under_on_error_fail():
    reports = RowReports("fail")
    err = RowError("line 3", None, "not valid JSON", "bad JSON")
    with pytest.raises(RowError) as raised:
        reports.context().report(err)
    assert raised.value is err and reports.counts == Counter() and reports.errors == []


def test_a_conversation_error_becomes_the_rows_report():
    err = RowError.from_conversation_error("row 4", ConversationError("messages[1].role", "bad", "bad role"))
    assert str(err) == "row 4, field 'messages[1].role': bad"
    assert err.as_dict() == {"location": "row 4", "field": "messages[1].role", "kind": "bad role", "error": "bad"}


def test_the_result_fields_are_declared_once():
    held = [f.name for f in dataclasses.fields(RewardResult) if f.name != "details"]
    assert sorted(held) == sorted(RESULT_FIELDS)
    result = RewardResult(1.5, -2.0, -3.5, 4, 4, error=None, domain="math")
    assert list(reward_columns(result).items()) == [
        ("reward", 1.5),
        ("strong_logprob", -2.0),
        ("weak_logprob", -3.5),
        ("strong_tokens", 4),
        ("weak_tokens", 4),
        ("truncated", False),
        ("cdr_domain", "math"),
        ("cdr_error", None),
    ]


def test_the_services_reward_item_has_the_result_fields():
    pytest.importorskip("pydantic")
    from cdr.serve.protocol import RewardItem

    assert tuple(RewardItem.model_fields) == RESULT_FIELDS
