"""``cdr annotate`` end to end in subprocesses on tiny random models."""

import json

import pytest

from conftest import cdr_in_process, kill_9_after, run_cdr, write_jsonl


def candidate_rows(n):
    out = []
    for i in range(n):
        answers = [f"Answer {j} to question {i}. " * (1 + (i + j) % 4) for j in range(4)]
        if i % 4 == 0:
            out.append(
                {
                    "id": i,
                    "prompt": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": f"Question {i}?"},
                    ],
                    "responses": answers,
                }
            )
        elif i % 4 == 1:
            out.append({"id": i, "prompt": f"Question {i}?", "response_a": answers[0], "response_b": answers[1]})
        else:
            out.append({"id": i, "prompt": f"Question {i}?", "responses": answers[: 2 + i % 3]})
    return out


def pair_args(tiny_strong, tiny_weak, cache="none"):
    return ["--strong", str(tiny_strong), "--weak", str(tiny_weak), "--cache", cache]


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_annotate_writes_trl_pairs_and_length_report(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "in.jsonl", candidate_rows(8))
    out = tmp_path / "pairs.jsonl"
    proc = cdr_in_process("annotate", str(src), "-o", str(out), *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 0, proc.stderr
    pairs = read_jsonl(out)
    assert 1 <= len(pairs) <= 8
    for p in pairs:
        assert p["prompt"][-1]["role"] == "user"
        assert p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
        assert p["score_chosen"] > p["score_rejected"]
        assert p["score_chosen"] == max(s for s in p["scores"] if s is not None)
        assert p["score_rejected"] == min(s for s in p["scores"] if s is not None)
        assert len(p["prompt_id"]) == 64 and p["cdr_strategy"] == "best-worst"
        assert p["cdr_strong"] == str(tiny_strong) and "id" in p
    assert "length report" in proc.stdout and "chosen is longer in" in proc.stdout
    report = json.loads((tmp_path / "pairs.jsonl.length_report.json").read_text())
    assert report["pairs"] == len(pairs) and 0 <= report["share_chosen_longer"] <= 1
    assert (tmp_path / "pairs.jsonl.length_report.png").stat().st_size > 1000


def test_dataset_and_parquet_outputs_load_with_datasets(tmp_path, tiny_strong, tiny_weak):
    import datasets

    src = write_jsonl(tmp_path / "in.jsonl", candidate_rows(4))
    assert (
        cdr_in_process("annotate", str(src), "-o", str(tmp_path / "ds"), *pair_args(tiny_strong, tiny_weak)).returncode
        == 0
    )
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert {"prompt", "chosen", "rejected", "prompt_id", "score_chosen", "score_rejected"} <= set(ds.column_names)
    assert ds[0]["chosen"][0]["role"] == "assistant"
    proc = cdr_in_process("annotate", str(src), "-o", str(tmp_path / "p.parquet"), *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 0, proc.stderr
    pq = datasets.load_dataset("parquet", data_files=str(tmp_path / "p.parquet"), split="train")
    assert pq.num_rows == ds.num_rows and pq[0]["prompt"] == ds[0]["prompt"]


@pytest.mark.parametrize("strategy", ["best-random", "all-pairs"])
def test_kill_9_then_resume_identical(tmp_path, tiny_strong, tiny_weak_fast, strategy):
    rows = [json.dumps(r) for r in candidate_rows(60)]
    rows.insert(10, json.dumps({"prompt": "Q?", "responses": ["one"]}))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    common = [str(src), "--strategy", strategy, "--chunk-rows", "2", *pair_args(tiny_strong, tiny_weak_fast)]
    assert cdr_in_process("annotate", *common, "-o", str(tmp_path / "ref.jsonl")).returncode == 0
    out, state = tmp_path / "out.jsonl", tmp_path / "out.jsonl.cdr-state.json"
    for kill_after in (4, 23, 47):
        kill_9_after(["annotate", *common, "-o", str(out)], state, kill_after)
    assert not out.exists()
    final = run_cdr("annotate", *common, "-o", str(out))
    assert final.returncode == 0, final.stderr
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert "too few candidates 1" in final.stdout


def test_bad_rows_counted_by_kind_and_fail_mode(tmp_path, tiny_strong, tiny_weak):
    rows = [
        {"prompt": "Q?", "responses": ["a", "b"]},
        {"prompt": "Q?", "responses": ["only"]},
        {"prompt": "Q?", "responses": ["a", ""]},
        {"prompt": [{"role": "system", "content": "x"}], "responses": ["a", "b"]},
        {"prompt": "Q?", "responses": ["a", "b", "a"]},
        {"prompt": "Q?", "responses": ["a", None]},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    proc = cdr_in_process("annotate", str(src), "-o", str(tmp_path / "o.jsonl"), *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 0, proc.stderr
    assert "skipped by kind: empty text 1, no user turn 1, too few candidates 1, wrong type 1" in proc.stdout
    assert "duplicates_dropped: 1" in proc.stdout
    for fragment in (
        "line 2, field 'responses[0]': expected 2 or more",
        "line 3, field 'responses[1]'",
        "line 4, field 'prompt': the prompt has no user turn",
        "line 5, field 'responses[2]': duplicates responses[0]",
        "line 6, field 'responses[1]': expected a string, got NoneType",
    ):
        assert fragment in proc.stderr
    fail = cdr_in_process(
        "annotate", str(src), "-o", str(tmp_path / "f.jsonl"), "--on-error", "fail", *pair_args(tiny_strong, tiny_weak)
    )
    assert fail.returncode == 2 and "line 2, field 'responses[0]'" in fail.stderr and "Traceback" not in fail.stderr


def test_cache_makes_a_second_strategy_free(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "in.jsonl", candidate_rows(6))
    cache = str(tmp_path / "cache.sqlite")
    first = cdr_in_process(
        "annotate", str(src), "-o", str(tmp_path / "a.jsonl"), *pair_args(tiny_strong, tiny_weak, cache)
    )
    assert first.returncode == 0 and ", 0 computed" not in first.stdout
    second = cdr_in_process(
        "annotate",
        str(src),
        "-o",
        str(tmp_path / "b.jsonl"),
        "--strategy",
        "all-pairs",
        *pair_args(tiny_strong, tiny_weak, cache),
    )
    assert second.returncode == 0, second.stderr
    assert "log-prob cache: " in second.stdout and ", 0 computed" in second.stdout
