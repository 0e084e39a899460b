"""--engine ray on a real local Ray cluster (2 CPUs): the same rewards as one process, resume by shard after
kill -9 without recomputing or duplicating finished shards, and the same row reports.

The tiny random pair keeps these fast; the rewards mean nothing, only their equality does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cdr.output import read_output
from conftest import run_cdr, write_jsonl

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


def score_rows(n: int) -> list[dict]:
    topics = ["tea", "rust", "the moon", "taxes", "a cat", "jazz", "bread", "rain"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        rows.append(
            {"id": i, "prompt": f"Tell me about {t} ({i}).", "response": f"{t.capitalize()} is nice. " * (1 + i % 3)}
        )
    return rows


def pair_args(tiny_strong, tiny_weak) -> list[str]:
    return ["--strong", str(tiny_strong), "--weak", str(tiny_weak), "--cache", "none", "-q"]


def test_ray_score_equals_single_process_and_keeps_row_reports(tmp_path, tiny_strong, tiny_weak_fast):
    rows = score_rows(22)
    rows[5] = {"id": 5, "prompt": "no response here"}  # a malformed row: reported, not scored
    data = write_jsonl(tmp_path / "in.jsonl", rows[:9] + ["{not json"] + rows[9:])
    local = run_cdr("score", str(data), "-o", str(tmp_path / "local.jsonl"), *pair_args(tiny_strong, tiny_weak_fast))
    assert local.returncode == 0, local.stderr
    distributed = run_cdr(
        "score",
        str(data),
        "-o",
        str(tmp_path / "ray_out"),
        "--engine",
        "ray",
        "--num-actors",
        "2",
        "--batch-rows",
        "3",
        "--shard-rows",
        "5",
        *pair_args(tiny_strong, tiny_weak_fast),
        env=RAY_ENV,
    )
    assert distributed.returncode == 0, distributed.stderr
    a = read_output(tmp_path / "local.jsonl")
    b = read_output(tmp_path / "ray_out")
    assert [r["id"] for r in a] == [r["id"] for r in b]  # same rows, in input order
    assert len(a) == 21
    for x, y in zip(a, b):
        assert x["reward"] == pytest.approx(y["reward"], abs=1e-5)
        assert {k: v for k, v in x.items() if k.startswith("cdr_") and k != "cdr_error"} == {
            k: v for k, v in y.items() if k.startswith("cdr_") and k != "cdr_error"
        }
        assert set(x) == set(y)
    # the same row reports, with the same line numbers, and the same summary line
    local_errors = [json.loads(line) for line in open(tmp_path / "local.jsonl.errors.jsonl")]
    ray_errors = [json.loads(line) for line in open(tmp_path / "ray_out" / "errors.jsonl")]
    assert ray_errors == local_errors
    assert {e["location"] for e in ray_errors} == {"line 6", "line 10"}
    assert "scored: 21  skipped: 2" in distributed.stdout
    assert len(list((tmp_path / "ray_out").glob("part-*.parquet"))) == 5  # 23 rows in shards of 5


def test_ray_annotate_and_eval_match_single_process(tmp_path, tiny_strong, tiny_weak_fast):
    cands = [
        {"prompt": f"Question {i}?", "responses": [f"Answer {i}.", f"Reply {i}, longer.", f"No {i}"]} for i in range(7)
    ]
    data = write_jsonl(tmp_path / "cands.jsonl", cands)
    args = pair_args(tiny_strong, tiny_weak_fast)
    assert run_cdr("annotate", str(data), "-o", str(tmp_path / "pairs.jsonl"), *args).returncode == 0
    r = run_cdr(
        "annotate",
        str(data),
        "-o",
        str(tmp_path / "pairs_ray"),
        "--engine",
        "ray",
        "--shard-rows",
        "3",
        *args,
        env=RAY_ENV,
    )
    assert r.returncode == 0, r.stderr
    assert "length report" in r.stdout
    a, b = read_output(tmp_path / "pairs.jsonl"), read_output(tmp_path / "pairs_ray")
    assert [(x["prompt_id"], x["chosen"], x["rejected"]) for x in a] == [
        (x["prompt_id"], x["chosen"], x["rejected"]) for x in b
    ]

    r = run_cdr("eval", "mini", "--limit", "6", "--output-dir", str(tmp_path / "ev"), "--bootstrap", "50", *args)
    assert r.returncode == 0, r.stderr
    r = run_cdr(
        "eval",
        "mini",
        "--limit",
        "6",
        "--output-dir",
        str(tmp_path / "ev_ray"),
        "--bootstrap",
        "50",
        "--engine",
        "ray",
        "--num-actors",
        "2",
        "--shard-rows",
        "2",
        *args,
        env=RAY_ENV,
    )
    assert r.returncode == 0, r.stderr
    x = json.loads((tmp_path / "ev" / "results.json").read_text())
    y = json.loads((tmp_path / "ev_ray" / "results.json").read_text())
    assert x["extra_results"] == y["extra_results"] and x["provenance"] == y["provenance"]
    assert x["variants"]["mean_diff"]["accuracy"] == y["variants"]["mean_diff"]["accuracy"]
    for f in ("results.md", "scores.jsonl", "sections.png"):
        assert (tmp_path / "ev_ray" / f).exists()


def test_ray_eval_of_an_ensemble_of_pairs_matches_single_process(tmp_path, tiny_strong, tiny_weak_fast):
    """--extra-pairs on Ray: each actor builds the whole ensemble from the configuration it is sent."""
    args = [*pair_args(tiny_strong, tiny_weak_fast), "--extra-pairs", f"weak={tiny_strong},weak_prompt=empty"]
    common = ["eval", "mini", "--limit", "4", "--bootstrap", "50", *args]
    assert run_cdr(*common, "-o", str(tmp_path / "ev")).returncode == 0
    ray_args = ["--engine", "ray", "--num-actors", "2", "--shard-rows", "2"]
    r = run_cdr(*common, "-o", str(tmp_path / "ev_ray"), *ray_args, env=RAY_ENV)
    assert r.returncode == 0, r.stderr
    rows = [[json.loads(x) for x in (tmp_path / d / "scores.jsonl").read_text().splitlines()] for d in ("ev", "ev_ray")]
    assert [r["rewards"] for r in rows[0]] == [r["rewards"] for r in rows[1]] and len(rows[0]) == 4
    y = json.loads((tmp_path / "ev_ray" / "results.json").read_text())
    assert y["provenance"]["extra_pairs"][0]["weak_prompt"] == "empty"


def test_ray_eval_rewardbench2_matches_single_process(tmp_path, tiny_strong, tiny_weak_fast):
    args = [*pair_args(tiny_strong, tiny_weak_fast), "--benchmark", "rewardbench2", "--bootstrap", "20"]
    r = run_cdr("eval", "sample", "--limit", "8", "-o", str(tmp_path / "ev"), *args)
    assert r.returncode == 0, r.stderr
    ray_args = ["--engine", "ray", "--num-actors", "2", "--shard-rows", "3"]
    r = run_cdr("eval", "sample", "--limit", "8", "-o", str(tmp_path / "ev_ray"), *args, *ray_args, env=RAY_ENV)
    assert r.returncode == 0, r.stderr
    x, y = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("ev", "ev_ray"))
    assert x["benchmark"] == y["benchmark"] == "rewardbench2" and x["num_prompts"] == y["num_prompts"] == 8
    assert x["subsets"] == pytest.approx(y["subsets"]) and x["provenance"] == y["provenance"]
    boards = [json.loads((tmp_path / d / "leaderboard.json").read_text()) for d in ("ev", "ev_ray")]
    assert boards[0] == pytest.approx(boards[1])


def test_ray_run_killed_midway_resumes_without_recomputing_or_duplicating(tmp_path, tiny_strong, tiny_weak_fast):
    data = write_jsonl(tmp_path / "in.jsonl", score_rows(40))
    out = tmp_path / "ray_out"
    args = [
        sys.executable,
        "-m",
        "cdr.cli",
        "score",
        str(data),
        "-o",
        str(out),
        "--engine",
        "ray",
        "--batch-rows",
        "2",
        "--shard-rows",
        "4",
        *pair_args(tiny_strong, tiny_weak_fast),
    ]
    # its own session, so that kill -9 takes the driver and the local Ray cluster it started
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=RAY_ENV, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("part-*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.json")}
    assert 3 <= len(done_before) < 10, "the kill should land mid-run"
    parquet_before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet") if p.with_suffix(".json").exists()}

    r = run_cdr(*args[3:], env=RAY_ENV)
    assert r.returncode == 0, r.stderr
    assert f"resuming {out}: {len(done_before)} of 10 shards already done" in r.stderr
    assert f"resumed after row {4 * len(done_before)}" in r.stdout
    for name, mtime in done_before.items():  # finished shards were not recomputed or rewritten
        assert (out / name).stat().st_mtime_ns == mtime
    for name, data_bytes in parquet_before.items():
        assert (out / name).read_bytes() == data_bytes
    rows = read_output(out)
    assert [r["id"] for r in rows] == list(range(40))  # every row once, in order
    assert not list(out.glob(".part-*"))  # no temporary files left behind

    local = run_cdr("score", str(data), "-o", str(tmp_path / "local.jsonl"), *pair_args(tiny_strong, tiny_weak_fast))
    assert local.returncode == 0
    for x, y in zip(read_output(tmp_path / "local.jsonl"), rows):
        assert x["reward"] == pytest.approx(y["reward"], abs=1e-5)


def test_ray_refuses_other_settings_and_bad_options(tmp_path, tiny_strong, tiny_weak_fast):
    data = write_jsonl(tmp_path / "in.jsonl", score_rows(4))
    out = tmp_path / "o"
    args = ["score", str(data), "-o", str(out), "--engine", "ray", *pair_args(tiny_strong, tiny_weak_fast)]
    assert run_cdr(*args, env=RAY_ENV).returncode == 0
    r = run_cdr(*args, "--variant", "sum", env=RAY_ENV)
    assert r.returncode == 2 and "different settings (provenance changed)" in r.stderr
    r = run_cdr(*args, "--num-actors", "0")
    assert r.returncode == 2 and "num-actors must be at least 1" in r.stderr and "Traceback" not in r.stderr
    r = run_cdr(
        "score", str(data), "-o", str(tmp_path / "x.jsonl"), "--engine", "ray", *pair_args(tiny_strong, tiny_weak_fast)
    )
    assert r.returncode == 2 and "directory of Parquet shards" in r.stderr


def test_partial_shard_files_of_a_killed_run_are_removed_and_nothing_else(tmp_path):
    """A kill while a shard was being written leaves '.part-NNNNN.parquet.tmpPID'; the next run (holding the
    lock) deletes exactly those."""
    from cdr.pipelines.ray_runner import _remove_partial_shards

    leftover = tmp_path / ".part-00003.parquet.tmp4242"
    leftover.write_bytes(b"half a parquet file")
    keep = [tmp_path / "part-00003.parquet", tmp_path / ".part-notes.tmp1", tmp_path / "mine.parquet.tmp9"]
    for path in keep:
        path.write_text("x")
    _remove_partial_shards(tmp_path)
    assert not leftover.exists() and all(path.exists() for path in keep)
    _remove_partial_shards(tmp_path / "not-yet-created")  # a first run: nothing to do
