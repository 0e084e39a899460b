"""``cdr sample`` on a tiny random policy: prompt formats, seeding, resume after kill -9, --annotate."""

import json

import pytest

from cdr.data import RawRow
from cdr.errors import RowError
from cdr.pipelines.sample import prompt_messages
from conftest import ROOT, cdr_in_process, kill_9_after, run_cdr, write_jsonl

SHARED = ROOT.parent / "shared" / "data"


def first_row(path):
    with open(path) as f:
        return json.loads(f.readline())


# The shapes of the benchmark prompt files users already have (texts here are ours).
SHAPES = [
    (
        {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it rhyme."]},
        "Write a haiku about rain.",
    ),  # MT-Bench: strings, first turn used
    (
        {"question_id": "ab12", "category": "arena-hard-v0.1", "turns": [{"content": "Explain ABC notation."}]},
        "Explain ABC notation.",
    ),  # Arena-Hard: {"content": ...}
    (
        {"dataset": "helpful_base", "instruction": "Name three rivers.", "output": "x", "generator": "y"},
        "Name three rivers.",
    ),  # AlpacaEval
]


@pytest.mark.parametrize("row, expected", SHAPES)
def test_benchmark_prompt_shapes(row, expected):
    assert prompt_messages(RawRow(0, "line 1", row)) == [{"role": "user", "content": expected}]


@pytest.mark.parametrize(
    "path, expected_start",
    [
        ("mt_bench/question.jsonl", "Compose an engaging travel blog post"),
        ("arena_hard_v0.1/question.jsonl", "Use ABC notation"),
        ("alpaca_eval/alpaca_eval_gpt4_1106_preview_outputs.jsonl", "What are the names of some famous actors"),
    ],
)
def test_real_prompt_files(path, expected_start):
    if not (SHARED / path).exists():
        pytest.skip(f"{SHARED / path} is not beside this checkout (the shapes are tested above)")
    messages = prompt_messages(RawRow(0, "line 1", first_row(SHARED / path)))
    assert len(messages) == 1 and messages[0]["role"] == "user"
    assert messages[0]["content"].startswith(expected_start)


def test_plain_formats_and_errors():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert prompt_messages(RawRow(0, "line 1", {"messages": msgs})) == msgs
    assert prompt_messages(RawRow(0, "line 1", {"prompt": "Hi"})) == [{"role": "user", "content": "Hi"}]
    with pytest.raises(RowError, match="must end with a user turn"):
        prompt_messages(RawRow(0, "line 3", {"messages": msgs + [{"role": "assistant", "content": "Yo"}]}))
    with pytest.raises(RowError) as info:
        prompt_messages(RawRow(0, "line 4", {"question": "Hi"}))
    assert info.value.kind == "missing field" and info.value.location == "line 4"


def prompts(n):
    return [{"question_id": i, "prompt": f"Say something about the number {i}."} for i in range(n)]


def sample_args(policy, out, *extra):
    return [
        "sample",
        "--policy",
        str(policy),
        "-o",
        str(out),
        "-n",
        "3",
        "--max-new-tokens",
        "6",
        "--seed",
        "5",
        *extra,
    ]


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_sample_writes_candidates_reproducibly(tmp_path, tiny_strong):
    src = write_jsonl(tmp_path / "p.jsonl", prompts(5))
    a = cdr_in_process(*sample_args(tiny_strong, tmp_path / "a.jsonl"), str(src))
    assert a.returncode == 0, a.stderr
    rows = read_jsonl(tmp_path / "a.jsonl")
    assert [r["question_id"] for r in rows] == list(range(5))
    assert all(len(r["responses"]) == 3 and r["prompt"][0]["role"] == "user" for r in rows)
    assert rows[0]["cdr_sampling"] == {"n": 3, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 6, "seed": 5}
    b = cdr_in_process(*sample_args(tiny_strong, tmp_path / "b.jsonl"), str(src))
    assert b.returncode == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()  # same seed, same samples
    c = cdr_in_process(*sample_args(tiny_strong, tmp_path / "c.jsonl")[:-1], "6", str(src))
    assert c.returncode == 0, c.stderr
    assert read_jsonl(tmp_path / "c.jsonl")[0]["responses"] != rows[0]["responses"]  # another seed differs


def test_killed_sampling_run_resumes_identically(tmp_path, tiny_strong):
    src = write_jsonl(tmp_path / "p.jsonl", prompts(40))
    ref = cdr_in_process(*sample_args(tiny_strong, tmp_path / "ref.jsonl", "--chunk-rows", "2"), str(src))
    assert ref.returncode == 0, ref.stderr
    out, state = tmp_path / "out.jsonl", tmp_path / "out.jsonl.cdr-state.json"
    for kill_after in (2, 18):
        kill_9_after([*sample_args(tiny_strong, out, "--chunk-rows", "2"), str(src)], state, kill_after)
    final = run_cdr(*sample_args(tiny_strong, out, "--chunk-rows", "2"), str(src))
    assert final.returncode == 0 and "resuming" in final.stderr
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


def test_sample_and_annotate_in_one_run(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "p.jsonl", prompts(6))
    out = tmp_path / "pairs.jsonl"
    proc = cdr_in_process(
        *sample_args(
            tiny_strong,
            out,
            "--annotate",
            "--limit",
            "4",
            "--strong",
            str(tiny_strong),
            "--weak",
            str(tiny_weak),
            "--cache",
            "none",
            "--max-new-tokens",
            "10",
        ),
        str(src),
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(tmp_path / "pairs.jsonl.candidates.jsonl")) == 4
    pairs = read_jsonl(out)
    assert pairs and all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert "length report" in proc.stdout
