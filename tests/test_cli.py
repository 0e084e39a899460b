"""The real ``cdr`` command in subprocesses, on tiny random models: outputs, resume after kill -9, bad rows."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import cdr_in_process, kill_9_after, run_cdr, write_jsonl

TOPICS = ["France", "Japan", "Peru", "Kenya", "Norway", "Chile", "Egypt", "India"]


def rows(n):
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        if i % 3 == 0:
            out.append(
                {
                    "id": i,
                    "messages": [
                        {"role": "user", "content": f"Tell me about {topic}."},
                        {"role": "assistant", "content": f"{topic} is a country. " * (1 + i % 5)},
                    ],
                }
            )
        else:
            out.append(
                {
                    "id": i,
                    "prompt": f"What is the capital of {topic}? ({i})",
                    "response": "I believe it is the city on the river. " * (1 + i % 4),
                }
            )
    return out


def pair_args(tiny_strong, tiny_weak):
    # no log-prob cache: each run must compute its numbers, or comparisons between runs prove nothing
    return ["--strong", str(tiny_strong), "--weak", str(tiny_weak), "--cache", "none"]


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_score_jsonl_adds_reward_and_provenance(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "in.jsonl", rows(6))
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 0, proc.stderr
    assert "rows: 6  scored: 6  skipped: 0  unscorable: 0" in proc.stdout
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == list(range(6))
    for inp, r in zip(rows(6), out):
        assert {k: r[k] for k in inp} == inp  # the input row, untouched
        assert isinstance(r["reward"], float) and r["strong_tokens"] > 0 and r["weak_tokens"] > 0
        assert r["cdr_strong"] == str(tiny_strong) and len(r["cdr_weak_sha256"]) == 64
        assert r["cdr_rendering"] == "own" and r["cdr_variant"] == "mean_diff" and r["cdr_error"] is None
    # a finished run is not redone
    again = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *pair_args(tiny_strong, tiny_weak))
    assert again.returncode == 0 and "already complete" in again.stderr


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_score_other_formats(tmp_path, tiny_strong, tiny_weak, fmt):
    src = write_jsonl(tmp_path / "in.jsonl", rows(4))
    ref = tmp_path / "ref.jsonl"
    assert cdr_in_process("score", str(src), "-o", str(ref), *pair_args(tiny_strong, tiny_weak)).returncode == 0
    out = tmp_path / f"out.{fmt}"
    proc = cdr_in_process("score", str(src), "-o", str(out), "--variant", "sum", *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 0, proc.stderr
    if fmt == "parquet":
        table = pq.read_table(out).to_pylist()
        # and Parquet in: score the Parquet output again as input
        again = cdr_in_process(
            "score", str(out), "-o", str(tmp_path / "again.jsonl"), *pair_args(tiny_strong, tiny_weak)
        )
        assert again.returncode == 0, again.stderr
        assert len(read_jsonl(tmp_path / "again.jsonl")) == 4
    else:
        import csv

        table = list(csv.DictReader(open(out, encoding="utf-8")))
    for r, ref_row in zip(table, read_jsonl(ref)):
        assert float(r["reward"]) == pytest.approx(ref_row["strong_logprob"] - ref_row["weak_logprob"], abs=1e-4)


def test_kill_9_then_resume_gives_identical_output(tmp_path, tiny_strong, tiny_weak_fast):
    data = rows(90)
    lines = [json.dumps(r) for r in data]
    lines.insert(30, '{"prompt": "broken')  # a malformed row whose report must survive the kills too
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    common = [str(src), *pair_args(tiny_strong, tiny_weak_fast), "--chunk-rows", "1"]

    reference = tmp_path / "reference.jsonl"
    assert cdr_in_process("score", *common, "-o", str(reference)).returncode == 0

    out = tmp_path / "out.jsonl"
    state = tmp_path / "out.jsonl.cdr-state.json"
    kills = [kill_9_after(["score", *common, "-o", str(out)], state, k) for k in (2, 35, 60)]
    assert kills[0] < 91 and not out.exists()  # killed mid-run, nothing published yet

    final = run_cdr("score", *common, "-o", str(out))
    assert final.returncode == 0, final.stderr
    assert "resuming" in final.stderr
    assert out.read_bytes() == reference.read_bytes()
    assert (tmp_path / "out.jsonl.errors.jsonl").read_bytes() == (
        tmp_path / "reference.jsonl.errors.jsonl"
    ).read_bytes()
    assert "rows: 91  scored: 90  skipped: 1" in final.stdout


def test_malformed_rows_reported_with_line_numbers(tmp_path, tiny_strong, tiny_weak):
    lines = [
        json.dumps({"prompt": "Hi?", "response": "Hello."}),
        '{"prompt": "Hi?", "response": ',
        json.dumps({"prompt": "Hi?"}),
        json.dumps({"prompt": "Hi?", "response": ["not", "text"]}),
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": "x"}]}),
        json.dumps({"prompt": "Hi?", "response": ""}),
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(("\n".join(lines) + "\n").encode() + b'{"prompt": "caf\xe9", "response": "x"}\n')
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 0, proc.stderr
    expected = [
        "line 2: not valid JSON",
        "line 3, field 'response': missing",
        "line 4, field 'response': expected a string, got list",
        "line 5, field 'messages[0].role': expected one of system, user, assistant, got 'robot'",
        "line 6, field 'messages[0].role': the last message is the scored response and must be 'assistant'",
        "line 7, field 'response': expected non-empty text",
        "line 8: not valid UTF-8",
    ]
    for fragment in expected:
        assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "rows: 8  scored: 1  skipped: 7" in proc.stdout
    assert (
        "skipped by kind: bad JSON 1, bad role 2, empty text 1, missing field 1, not UTF-8 1, wrong type 1"
        in proc.stdout
    )
    reports = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert [r["location"] for r in reports] == [f"line {i}" for i in range(2, 9)]
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 1


def test_on_error_fail_stops_with_the_row(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"prompt": "Hi?", "response": "Hello."}, {"prompt": "Hi?", "response": 3}]
    )
    proc = cdr_in_process(
        "score", str(src), "-o", str(tmp_path / "out.jsonl"), "--on-error", "fail", *pair_args(tiny_strong, tiny_weak)
    )
    assert proc.returncode == 2
    assert "cdr: error: line 2, field 'response': expected a string, got int" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_user_errors_are_one_line(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "o.jsonl"), "--strong", "no-such-model")
    assert proc.returncode == 2 and "neither a packaged model" in proc.stderr and "Traceback" not in proc.stderr
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"strong: {tiny_strong}\nweak: {tiny_weak}\nvarient: sum\n")
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "o.jsonl"), "--config", str(cfg))
    assert proc.returncode == 2 and "line 3: unknown key 'varient'" in proc.stderr
    proc = cdr_in_process(
        "score", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl"), *pair_args(tiny_strong, tiny_weak)
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_config_file_and_flags(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"strong: {tiny_strong}\nweak: {tiny_weak}\nvariant: sum\nrendering: shared\ncache: none\n")
    proc = cdr_in_process(
        "score", str(src), "-o", str(tmp_path / "o.jsonl"), "--config", str(cfg), "--variant", "mean_diff"
    )
    assert proc.returncode == 0, proc.stderr
    r = read_jsonl(tmp_path / "o.jsonl")[0]
    assert r["cdr_variant"] == "mean_diff" and r["cdr_rendering"] == "shared"  # the flag wins over the file
    assert r["reward"] == pytest.approx(r["strong_logprob"] / r["strong_tokens"] - r["weak_logprob"] / r["weak_tokens"])


def test_speed_flags_reach_the_config(tmp_path):
    import argparse

    from cdr.cli import add_reward_options, reward_config

    parser = argparse.ArgumentParser()
    add_reward_options(parser)
    default = reward_config(parser.parse_args([]))
    assert (default.overlap, default.strong_options.prompt_sharing, default.weak_options.prompt_sharing) == (
        False,
        True,
        True,
    )
    config = reward_config(parser.parse_args(["--overlap", "--no-prompt-sharing"]))
    assert config.overlap is True and config.strong_options.prompt_sharing is False
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("overlap: true\nprompt_sharing: false\n")
    from_file = reward_config(parser.parse_args(["--config", str(cfg)]))
    assert (
        from_file.overlap is True and from_file.weak_options.prompt_sharing is False
    )  # absent flags do not override the file


def test_hub_model_offline_is_a_clear_error(tmp_path, tiny_weak):
    """The hub loading path is real code; offline it must fail with a message, not a traceback."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdr.cli",
            "score",
            str(src),
            "-o",
            str(tmp_path / "o.jsonl"),
            "--strong",
            "cdr-test-org/no-such-model",
            "--weak",
            str(tiny_weak),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "could not load the tokenizer of 'cdr-test-org/no-such-model'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_reader_that_leaves_early_is_not_an_error():
    """`cdr models | head -1`: the pipe closes under cdr's output. Like any Unix filter, cdr stops quietly
    (exit status 141, SIGPIPE's), without a 'Broken pipe' error line."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before cdr writes a byte
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cdr.cli", "models"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
