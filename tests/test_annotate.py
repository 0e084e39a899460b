from collections import Counter

import pytest

from cdr.data import RawRow
from cdr.errors import RowError
from cdr.pipelines.annotate import AnnotateOptions, choose_preferences, parse_candidates, prompt_id
from cdr.pipelines.runner import ChunkContext


def ctx(reports=None):
    reports = [] if reports is None else reports
    return ChunkContext(
        report=lambda err, skip_row=True: reports.append((err, skip_row)),
        note=lambda *a: None,
        counts=Counter(),
        advance=lambda n: None,
    )


def parse(data, reports=None):
    return parse_candidates(RawRow(0, "line 1", data), "prompt", "responses", ctx(reports))


def test_best_worst_and_ties_and_margin():
    assert choose_preferences([0.1, 0.5, -0.2], AnnotateOptions(), "p") == ([(1, 2)], None)
    assert choose_preferences([0.3, 0.3], AnnotateOptions(), "p") == ([], "tied")
    assert choose_preferences([0.3, 0.3], AnnotateOptions(keep_ties=True), "p") == ([(0, 1)], None)
    assert choose_preferences([0.3, 0.1], AnnotateOptions(min_margin=0.5), "p") == ([], "below_margin")
    assert choose_preferences([0.3, None, None], AnnotateOptions(), "p") == ([], "unscorable")
    assert choose_preferences([None, 0.2, 0.9], AnnotateOptions(), "p") == ([(2, 1)], None)


def test_best_random_is_seeded_per_prompt():
    scores = [0.9, 0.1, 0.2, 0.3, 0.4, 0.5]
    opts = AnnotateOptions(strategy="best-random", seed=3)
    picks = {choose_preferences(scores, opts, f"prompt-{i}")[0][0] for i in range(40)}
    assert all(a == 0 for a, _ in picks) and len({b for _, b in picks}) > 2  # best vs a varying other
    assert choose_preferences(scores, opts, "x") == choose_preferences(scores, opts, "x")  # same prompt, same pick


def test_all_pairs_above_margin():
    pairs, _ = choose_preferences([0.0, 1.0, 0.5], AnnotateOptions(strategy="all-pairs"), "p")
    assert sorted(pairs) == [(1, 0), (1, 2), (2, 0)]
    pairs, _ = choose_preferences([0.0, 1.0, 0.6], AnnotateOptions(strategy="all-pairs", min_margin=0.5), "p")
    assert sorted(pairs) == [(1, 0), (2, 0)]


def test_prompt_id_is_the_same_for_string_and_message_prompts():
    a = parse({"prompt": "Hi?", "responses": ["a", "b"]})
    b = parse({"prompt": [{"role": "user", "content": "Hi?"}], "responses": ["a", "b"]})
    assert prompt_id(a.prompt_dicts) == prompt_id(b.prompt_dicts)
    assert len(prompt_id(a.prompt_dicts)) == 64


def test_two_column_and_message_candidates():
    row = parse({"prompt": "Hi?", "response_a": "a", "response_b": {"role": "assistant", "content": "b"}, "id": 7})
    assert row.candidates == ("a", "b") and row.extra == {"id": 7}


@pytest.mark.parametrize(
    "data, field, kind",
    [
        ({"prompt": "Hi?", "responses": ["only one"]}, "responses[0]", "too few candidates"),
        ({"prompt": "Hi?", "responses": ["a", ""]}, "responses[1]", "empty text"),
        ({"prompt": "Hi?", "responses": ["a", 3]}, "responses[1]", "wrong type"),
        ({"prompt": "Hi?", "responses": "a"}, "responses", "wrong type"),
        ({"prompt": [{"role": "system", "content": "Be nice."}], "responses": ["a", "b"]}, "prompt", "no user turn"),
        ({"prompt": "Hi?", "response_a": "a"}, "response_b", "missing field"),
        ({"responses": ["a", "b"]}, "prompt", "missing field"),
        ({"prompt": "Hi?", "responses": ["same", "same "]}, "responses", "too few candidates"),
    ],
)
def test_bad_candidate_rows(data, field, kind):
    with pytest.raises(RowError) as info:
        parse(data)
    assert (info.value.field, info.value.kind) == (field, kind)
    assert info.value.location == "line 1"


def test_duplicates_are_dropped_and_reported():
    reports = []
    row = parse({"prompt": "Hi?", "responses": ["a", "b", "a", "c"]}, reports)
    assert row.candidates == ("a", "b", "c") and row.indices == (0, 1, 3)
    ((err, skip_row),) = reports
    assert err.kind == "duplicate candidates" and err.field == "responses[2]" and not skip_row
