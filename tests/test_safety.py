"""Issue #20: cdr never destroys or silently corrupts a user's data (docs/guarantees.md).

Each test names the finding it covers. The CLI tests run the real ``main`` (in process, or in a subprocess
where a second process or kill -9 is the point) on tiny random models; none mocks what it checks.
"""

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from cdr.errors import CdrError
from cdr.output import ResumableOutput
from conftest import cdr_in_process, kill_9_after, write_jsonl
from test_cli import pair_args, read_jsonl, rows

KEY = {"input": "x", "provenance": {"variant": "mean"}}


def tree(path):
    """Every file under ``path`` with its bytes: what must survive a refused command unchanged."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- 1. the output may never be the input ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "dotted"])
@pytest.mark.parametrize("command", ["score", "annotate"])
def test_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, tiny_strong, tiny_weak, how, command):
    src = write_jsonl(tmp_path / "s.jsonl", rows(3))
    before = src.read_bytes()
    out = {"same": src, "dotted": tmp_path / "." / "sub" / ".." / "s.jsonl"}.get(how, tmp_path / "link.jsonl")
    (tmp_path / "sub").mkdir()
    if how == "symlink":
        out.symlink_to(src)
    elif how == "hardlink":
        os.link(src, out)
    proc = cdr_in_process(command, str(src), "-o", str(out), "--overwrite", *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 2, proc.stderr
    assert "is the input file" in proc.stderr and "Traceback" not in proc.stderr
    assert src.read_bytes() == before
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_file_cdr_keeps_beside_the_output_may_not_be_the_input(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "o.jsonl.errors.jsonl", rows(2))
    before = src.read_bytes()
    proc = cdr_in_process(
        "score", str(src), "-o", str(tmp_path / "o.jsonl"), "--overwrite", *pair_args(tiny_strong, tiny_weak)
    )
    assert proc.returncode == 2 and "errors file of output" in proc.stderr
    assert src.read_bytes() == before


# --- 2. --overwrite never deletes a directory cdr did not write ------------------------------------------------


@pytest.mark.parametrize("target", ["v", "v/sub/.."])
def test_overwrite_never_deletes_a_foreign_directory(tmp_path, tiny_strong, tiny_weak, target):
    src = write_jsonl(tmp_path / "one.jsonl", rows(1))
    (tmp_path / "v" / "sub").mkdir(parents=True)
    (tmp_path / "v" / "precious.txt").write_text("x\n")
    (tmp_path / "v" / "sub" / "deep.txt").write_text("y\n")
    before = tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        proc = cdr_in_process(
            "score", str(src), "-o", str(tmp_path / target), *extra, *pair_args(tiny_strong, tiny_weak)
        )
        assert proc.returncode == 2, proc.stderr
        assert "cdr did not write" in proc.stderr and "pass --overwrite" not in proc.stderr
        assert tree(tmp_path) == before


def test_overwrite_with_dot_dot_deletes_nothing(tmp_path, tiny_strong, tiny_weak, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    src = write_jsonl(work / "one.jsonl", rows(1))
    (tmp_path / "precious.txt").write_text("x\n")
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    proc = cdr_in_process("score", str(src), "-o", "..", "--overwrite", *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 2 and "cdr did not write" in proc.stderr
    assert tree(tmp_path) == before


def test_overwrite_replaces_cdrs_own_dataset_directory_only_when_the_new_one_is_complete(tmp_path):
    import datasets

    out = ResumableOutput(tmp_path / "pairs", KEY)
    out.append([{"score": 1.0}], [], 1, {})
    out.finish()
    out.close()
    assert (tmp_path / "pairs" / "cdr-output.json").is_file()
    again = ResumableOutput(tmp_path / "pairs", KEY, overwrite=True)
    assert datasets.load_from_disk(str(tmp_path / "pairs"))[0] == {"score": 1.0}  # still there mid-run
    again.append([{"score": 2.0}], [], 1, {})
    again.finish()
    again.close()
    assert datasets.load_from_disk(str(tmp_path / "pairs"))[0] == {"score": 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs", "pairs.cdr-state.json"]


def test_overwrite_keeps_a_foreign_file_until_the_new_output_is_complete(tmp_path):
    (tmp_path / "out.jsonl").write_text("precious\n")
    out = ResumableOutput(tmp_path / "out.jsonl", KEY, overwrite=True)
    out.append([{"i": 0}], [], 1, {})
    assert (tmp_path / "out.jsonl").read_text() == "precious\n"  # a crash now loses nothing
    out.finish()
    out.close()
    assert (tmp_path / "out.jsonl").read_text() == '{"i": 0}\n'


def test_ray_overwrite_removes_only_its_own_shard_files(tmp_path):
    from cdr.pipelines.ray_runner import STATE, _load_state

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "part-notes.txt").write_text("mine\n")
    (foreign / "keep.txt").write_text("mine too\n")
    before = tree(foreign)
    with pytest.raises(CdrError, match="cdr did not write") as err:
        _load_state(foreign, {"k": 1}, overwrite=True)
    assert "pass --overwrite" not in str(err.value)
    assert tree(foreign) == before

    own = tmp_path / "own"
    _load_state(own, {"k": 1}, overwrite=False)
    for name in ("part-00000.parquet", "part-00000.json", "errors.jsonl"):
        (own / name).write_text("shard\n")
    (own / "part-notes.txt").write_text("a user's file in cdr's directory\n")
    _load_state(own, {"k": 2}, overwrite=True)
    assert sorted(p.name for p in own.iterdir()) == sorted([STATE, "part-notes.txt"])


# --- 3. one writer per output ------------------------------------------------------------------------------------


def test_a_second_writer_is_refused(tmp_path):
    from cdr.output import lock_path

    first = ResumableOutput(tmp_path / "out.jsonl", KEY)
    with pytest.raises(CdrError, match=f"being written by another cdr run \\(pid {os.getpid()}\\)"):
        ResumableOutput(tmp_path / "out.jsonl", KEY)
    first.append([{"i": 0}], [], 1, {})
    first.close()
    assert not lock_path(tmp_path / "out.jsonl").exists()  # released and removed
    second = ResumableOutput(tmp_path / "out.jsonl", KEY)  # free again: resumes
    assert second.rows_done == 1
    second.close()


def test_two_score_runs_on_one_output(tmp_path, tiny_strong, tiny_weak_fast):
    src = write_jsonl(tmp_path / "in.jsonl", rows(24))
    out = tmp_path / "out.jsonl"
    args = ["score", str(src), "-o", str(out), "--chunk-rows", "1", "-q", *pair_args(tiny_strong, tiny_weak_fast)]
    first = subprocess.Popen(
        [sys.executable, "-m", "cdr.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    state = tmp_path / "out.jsonl.cdr-state.json"
    deadline = time.time() + 300
    while not state.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = cdr_in_process(*args)
    stdout, stderr = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr
    assert "is being written by another cdr run (pid" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, stderr
    assert [r["id"] for r in read_jsonl(out)] == list(range(24))


def test_ray_output_lock_is_checked_before_ray_starts(tmp_path):
    from cdr.output import OutputLock, lock_path
    from cdr.pipelines.ray_runner import run_rows_ray
    from cdr.pipelines.score import ScoreJob

    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    held = OutputLock(lock_path(tmp_path / "scored"), tmp_path / "scored")
    try:
        with pytest.raises(CdrError, match="being written by another cdr run"):
            run_rows_ray(src, tmp_path / "scored", ScoreJob(), config=None, key={})
    finally:
        held.release()


# --- 4. resume checks the journal --------------------------------------------------------------------------------


def three_chunks(path):
    out = ResumableOutput(path, KEY)
    out.append([{"i": 0}, {"i": 1}], [], 2, {"scored": 2})
    out.append([{"i": 2}, {"i": 3}], [{"location": "line 5", "error": "bad"}], 5, {"scored": 4, "skipped": 1})
    out.append([{"i": 4}], [], 6, {"scored": 5, "skipped": 1})
    out.close()
    return out


def resume_logged(path):
    said = []
    again = ResumableOutput(path, KEY, log=said.append)
    return again, " ".join(said)


def test_journal_truncated_mid_line_recomputes_the_cut_chunks(tmp_path):
    out = three_chunks(tmp_path / "out.jsonl")
    data = out.journal.read_bytes()
    cut = data.index(b'{"i": 3}') + 4
    out.journal.write_bytes(data[:cut])
    again, said = resume_logged(tmp_path / "out.jsonl")
    assert "shorter" in said and "rows 3-6 are computed again" in said
    assert again.rows_done == 2 and again.state.counts == {"scored": 2}
    assert again.journal.read_bytes() == b'{"i": 0}\n{"i": 1}\n'  # no NUL bytes, no half line
    assert not again.errors.exists()
    again.close()


def test_deleted_journal_is_noticed_and_recomputed(tmp_path):
    out = three_chunks(tmp_path / "out.jsonl")
    out.journal.unlink()
    again, said = resume_logged(tmp_path / "out.jsonl")
    assert "is missing" in said and again.rows_done == 0 and again.state.counts == {}
    again.close()


def test_garbage_inside_the_journal_is_never_carried_into_the_output(tmp_path):
    out = three_chunks(tmp_path / "out.jsonl")
    data = bytearray(out.journal.read_bytes())
    at = data.index(b'{"i": 2}') + 6
    data[at] = ord("9")  # same length, different content
    out.journal.write_bytes(bytes(data))
    again, said = resume_logged(tmp_path / "out.jsonl")
    assert "do not match their checksum" in said and again.rows_done == 2
    again.append([{"i": 2}, {"i": 3}], [{"location": "line 5", "error": "bad"}], 5, {"scored": 4, "skipped": 1})
    again.append([{"i": 4}], [], 6, {"scored": 5, "skipped": 1})
    again.finish()
    again.close()
    assert [r["i"] for r in read_jsonl(tmp_path / "out.jsonl")] == [0, 1, 2, 3, 4]


def test_damaged_row_reports_are_recomputed_too(tmp_path):
    out = three_chunks(tmp_path / "out.jsonl")
    out.errors.write_text("garbage\n")
    again, said = resume_logged(tmp_path / "out.jsonl")
    assert "errors.jsonl" in said and again.rows_done == 2
    again.close()


def test_damaged_state_is_refused_with_a_message(tmp_path):
    out = three_chunks(tmp_path / "out.jsonl")
    out.state_path.write_text('{"key": ')
    with pytest.raises(CdrError, match="is damaged or not a cdr state file; pass --overwrite"):
        ResumableOutput(tmp_path / "out.jsonl", KEY)


def test_cli_resume_after_a_truncated_journal_gives_the_full_output(tmp_path, tiny_strong, tiny_weak_fast):
    src = write_jsonl(tmp_path / "in.jsonl", rows(12))
    common = [str(src), *pair_args(tiny_strong, tiny_weak_fast), "--chunk-rows", "1"]
    reference = tmp_path / "reference.jsonl"
    assert cdr_in_process("score", *common, "-o", str(reference)).returncode == 0
    out = tmp_path / "out.jsonl"
    done = kill_9_after(["score", *common, "-o", str(out)], tmp_path / "out.jsonl.cdr-state.json", 6)
    assert done < 12
    journal = tmp_path / "out.jsonl.cdr-partial.jsonl"
    data = journal.read_bytes()
    journal.write_bytes(data[: data.index(b"\n", len(data) // 3) - 10])  # mid-line, inside a finished chunk
    final = cdr_in_process("score", *common, "-o", str(out))
    assert final.returncode == 0, final.stderr
    assert "are computed again" in final.stderr
    assert out.read_bytes() == reference.read_bytes()


def test_a_copied_half_done_run_resumes_where_it_stopped(tmp_path, tiny_strong, tiny_weak_fast):
    """A run's folder copied elsewhere without its times (cp -r, rsync -r, a git checkout) still resumes: the input
    is recognised by its bytes, not by its path and mtime."""
    import shutil

    first, copy = tmp_path / "first", tmp_path / "copy"
    first.mkdir()
    src = write_jsonl(first / "in.jsonl", rows(12))
    models = [*pair_args(tiny_strong, tiny_weak_fast), "--chunk-rows", "1"]
    reference = tmp_path / "reference.jsonl"
    assert cdr_in_process("score", str(src), *models, "-o", str(reference)).returncode == 0
    done = kill_9_after(
        ["score", str(src), *models, "-o", str(first / "out.jsonl")], first / "out.jsonl.cdr-state.json", 5
    )
    assert 5 <= done < 12
    shutil.copytree(first, copy, copy_function=shutil.copy)  # new paths, new mtimes, the same bytes
    assert (copy / "in.jsonl").stat().st_mtime_ns != src.stat().st_mtime_ns
    final = cdr_in_process("score", str(copy / "in.jsonl"), *models, "-o", str(copy / "out.jsonl"))
    assert final.returncode == 0, final.stderr
    assert "the input has the same content" in final.stderr and f"was '{src}'" in final.stderr
    assert f"resuming {copy / 'out.jsonl'} after row {done}" in final.stderr  # nothing finished is done again
    assert (copy / "out.jsonl").read_bytes() == reference.read_bytes()
    state = json.loads((copy / "out.jsonl.cdr-state.json").read_text())
    assert state["key"]["input"] == str((copy / "in.jsonl").resolve())  # the state says where the input is now


def test_an_input_edited_in_place_is_refused_even_with_its_size_and_mtime_put_back(
    tmp_path, tiny_strong, tiny_weak_fast
):
    src = write_jsonl(tmp_path / "in.jsonl", rows(12))
    models = [*pair_args(tiny_strong, tiny_weak_fast), "--chunk-rows", "1"]
    out = tmp_path / "out.jsonl"
    kill_9_after(["score", str(src), *models, "-o", str(out)], tmp_path / "out.jsonl.cdr-state.json", 3)
    st = src.stat()
    data = src.read_bytes()
    src.write_bytes(data.replace(b"0", b"1", 1))  # one character of a row: same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    (tmp_path / "out.jsonl.cdr-lock").unlink()  # the killed run's lock: the next run takes it over anyway
    before = tree(tmp_path)
    again = cdr_in_process("score", str(src), *models, "-o", str(out))
    assert again.returncode == 2
    assert "input_sha256 changed; the input file's content is not what the run started from" in again.stderr
    error = [line for line in again.stderr.splitlines() if not line.startswith("cdr: loaded")]
    assert len(error) == 1 and "Traceback" not in again.stderr
    assert tree(tmp_path) == before  # the half-done output, its journal and state: untouched


def test_a_state_from_before_input_hashes_still_needs_the_same_path_and_mtime(tmp_path):
    from cdr.output import check_same_run

    old = {"input": "/a/in.jsonl", "input_size": 10, "input_mtime_ns": 1, "on_error": "skip"}
    new = {**old, "input_sha256": "ab", "input": "/b/in.jsonl"}
    with pytest.raises(CdrError, match=r"\(input changed\)"):
        check_same_run(tmp_path, old, new)
    assert check_same_run(tmp_path, old, {**old, "input_sha256": "ab"}) is False  # same place: resumes as before


def test_ray_state_of_a_moved_input_is_resumed_and_updated(tmp_path):
    """The Ray engine's state check (no Ray needed): same bytes elsewhere resume, other bytes are refused."""
    from cdr.output import RunKey
    from cdr.pipelines.ray_runner import STATE, _load_state

    a, b = write_jsonl(tmp_path / "a.jsonl", rows(2)), tmp_path / "b.jsonl"
    b.write_bytes(a.read_bytes())
    out = tmp_path / "out"
    first = _load_state(out, RunKey.of(a, "skip", None, {"m": 1}).as_json(), overwrite=False)
    said = []
    moved = _load_state(out, RunKey.of(b, "skip", None, {"m": 1}).as_json(), overwrite=False, log=said.append)
    assert moved["key"]["input"] == str(b.resolve()) != first["key"]["input"]
    assert json.loads((out / STATE).read_text())["key"]["input"] == str(b.resolve())
    assert len(said) == 1 and "same content" in said[0]
    b.write_bytes(a.read_bytes().replace(b"0", b"1", 1))
    with pytest.raises(CdrError, match="input_sha256 changed"):
        _load_state(out, RunKey.of(b, "skip", None, {"m": 1}).as_json(), overwrite=False)


def test_ray_shard_that_fails_its_checksum_is_recomputed(tmp_path):
    from collections import Counter

    from cdr.pipelines.ray_runner import Shard, _write_shard, shard_problem

    shard = Shard(0, 0, 2, ())
    _write_shard(tmp_path, shard, [{"reward": 1.0}, {"reward": 2.0}], [], Counter({"scored": 2}))
    assert shard_problem(tmp_path, shard) is None
    parquet = tmp_path / "part-00000.parquet"
    data = bytearray(parquet.read_bytes())
    data[len(data) // 2] ^= 1
    parquet.write_bytes(bytes(data))
    assert "does not match its checksum" in shard_problem(tmp_path, shard)
    (tmp_path / "part-00000.json").write_text("{")
    assert "completion mark" in shard_problem(tmp_path, shard)


# --- 5. the log-prob cache verifies what it reads ----------------------------------------------------------------

CONVS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": a}]
    for a in ("Paris.", "Berlin, surely.", "Paris, the city of light.")
]


def test_a_flipped_bit_in_the_cache_is_a_miss_not_a_wrong_reward(tmp_path, tiny_strong, tiny_weak):
    from cdr import DensityRatio

    path = tmp_path / "c.sqlite"
    truth = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache=str(path)).score(CONVS)
    db = sqlite3.connect(path)
    for key, value in db.execute("SELECT key, logprobs FROM logprobs").fetchall():
        flipped = bytearray(value)
        flipped[0] ^= 1
        db.execute("UPDATE logprobs SET logprobs = ? WHERE key = ?", (bytes(flipped), key))
    db.commit()
    db.close()
    again = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache=str(path))
    got = again.score(CONVS)
    assert [r.reward for r in got] == [r.reward for r in truth]
    assert again.cache.corrupt == 2 * len(CONVS) and again.cache.hits == 0
    third = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache=str(path))  # rewritten: hits again
    assert [r.reward for r in third.score(CONVS)] == [r.reward for r in truth] and third.cache.hits == 2 * len(CONVS)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_cache_file_is_named_and_the_run_carries_on(tmp_path, tiny_strong, tiny_weak, damage):
    src = write_jsonl(tmp_path / "in.jsonl", rows(3))
    cache = tmp_path / "c.sqlite"
    base = ["score", str(src), "--strong", str(tiny_strong), "--weak", str(tiny_weak)]
    ref = cdr_in_process(*base, "-o", str(tmp_path / "ref.jsonl"), "--cache", "none")
    assert ref.returncode == 0
    assert cdr_in_process(*base, "-o", str(tmp_path / "warm.jsonl"), "--cache", str(cache)).returncode == 0
    # the entries into the main file first: whether the in-process run's connection was closed (and its
    # write-ahead log folded in) depends on garbage collection, and a truncated near-empty file opens fine
    with contextlib.closing(sqlite3.connect(cache)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"c.sqlite{suffix}").unlink(missing_ok=True)
    size = cache.stat().st_size
    assert size >= 3 * 4096, size  # the entries' pages are in the file, so cutting it in half damages them
    cache.write_bytes(os.urandom(size) if damage == "garbage" else cache.read_bytes()[: size // 2])
    proc = cdr_in_process(*base, "-o", str(tmp_path / "out.jsonl"), "--cache", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"cdr: warning: the log-prob cache '{cache}' cannot be used" in proc.stderr
    assert "log-prob cache: not used" in proc.stdout
    assert [r["reward"] for r in read_jsonl(tmp_path / "out.jsonl")] == [
        r["reward"] for r in read_jsonl(tmp_path / "ref.jsonl")
    ]


# --- 6. strict JSON out ------------------------------------------------------------------------------------------


def strict_loads(line):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


def test_nan_and_infinity_are_written_as_null_with_the_reason():
    from cdr.output import encode_lines

    line = encode_lines([{"reward": float("nan"), "x": [1.0, float("-inf")], "cdr_error": None}]).decode()
    row = strict_loads(line)
    assert row["reward"] is None and row["x"] == [1.0, None]
    assert row["cdr_error"] == "not a finite number, written as null: reward (NaN), x[1] (-Infinity)"


def test_cli_output_is_strict_json(tmp_path, tiny_strong, tiny_weak):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "Hi?", "response": "Hello.", "weight": NaN, "top": Infinity}\n')
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 0, proc.stderr
    (row,) = [strict_loads(line) for line in open(tmp_path / "out.jsonl")]
    assert row["weight"] is None and row["top"] is None and isinstance(row["reward"], float)
    assert "weight (NaN), top (Infinity)" in row["cdr_error"]


# --- 7. exit status ----------------------------------------------------------------------------------------------


def test_a_run_where_every_row_failed_exits_non_zero(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "in.jsonl", ['{"prompt": "x"}', "not json", '{"response": 3}'])
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 3, proc.stdout
    assert "rows: 3  scored: 0  skipped: 3" in proc.stdout
    assert "no row produced a result: all 3 rows were skipped or unscorable (exit status 3" in proc.stdout
    again = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *pair_args(tiny_strong, tiny_weak))
    assert again.returncode == 3 and "already complete" in again.stderr  # the same verdict on a rerun
    src2 = write_jsonl(tmp_path / "in2.jsonl", [{"prompt": "Hi?", "response": "Hello."}, "not json"])
    some = cdr_in_process("score", str(src2), "-o", str(tmp_path / "out2.jsonl"), *pair_args(tiny_strong, tiny_weak))
    assert some.returncode == 0 and "no row produced" not in some.stdout


def test_an_annotate_run_where_no_row_was_scored_exits_non_zero(tmp_path, tiny_strong, tiny_weak):
    # one malformed row (a single candidate) and one whose candidates are all unscorable (the prompt alone
    # fills --max-length): nothing was annotated, so the run failed
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"prompt": "x", "responses": ["only one"]}, {"prompt": "a long prompt " * 20, "responses": ["A.", "B."]}],
    )
    proc = cdr_in_process(
        "annotate",
        str(src),
        "-o",
        str(tmp_path / "pairs.jsonl"),
        "--max-length",
        "8",
        *pair_args(tiny_strong, tiny_weak),
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "skipped: 1" in proc.stdout and "unscorable: 1" in proc.stdout and "no row produced a result" in proc.stdout


# --- 8. deep nesting is a malformed row --------------------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_a_deeply_nested_row_is_a_malformed_row(tmp_path, tiny_strong, tiny_weak, on_error):
    deep = '{"prompt": "Hi?", "response": "Hello.", "x": ' + "[" * 10000 + "]" * 10000 + "}"
    medium = '{"prompt": "Hi?", "response": "Hello.", "x": ' + "[" * 500 + "]" * 500 + "}"
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Hi?", "response": "Hello."}, deep, medium])
    proc = cdr_in_process(
        "score", str(src), "-o", str(tmp_path / "out.jsonl"), "--on-error", on_error, *pair_args(tiny_strong, tiny_weak)
    )
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    if on_error == "fail":
        assert proc.returncode == 2 and "cdr: error: line 2: nested deeper than 100 levels" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert "rows: 3  scored: 1  skipped: 2" in proc.stdout
        assert "line 2: nested deeper than 100 levels" in proc.stderr and "line 3: nested deeper" in proc.stderr


# --- 9. one-line errors, checked before any model loads -----------------------------------------------------------

NO_MODEL = ["--strong", "no-such-model", "--weak", "no-such-model"]  # an error about these means a check came too late


def read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").write_text("")
    except OSError:
        return ro
    (ro / "probe").unlink()  # root ignores permissions: use a read-only place of the system instead
    for candidate in ("/sys", "/proc/sys"):
        try:
            with open(os.path.join(candidate, "cdr-probe"), "w"):
                pass
        except OSError:
            return candidate
    pytest.skip("no read-only directory available")


def test_unwritable_output_is_reported_before_the_models_load(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows(1))
    ro = read_only_dir(tmp_path)
    proc = cdr_in_process("score", str(src), "-o", f"{ro}/sub/out.jsonl", *NO_MODEL)
    assert proc.returncode == 2 and "is not writable" in proc.stderr and "no-such-model" not in proc.stderr
    (tmp_path / "afile").write_text("")
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "afile" / "out.jsonl"), *NO_MODEL)
    assert proc.returncode == 2 and "is a file, not a directory" in proc.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-length", "-5"], "max_length (--max-length) must be a whole number >= 1, got -5"),
        (["--threads", "0"], "threads (--threads) must be a whole number >= 1, got 0"),
        (["--chunk-rows", "0"], "chunk_rows (--chunk-rows) must be a whole number >= 1, got 0"),
        (["--concurrency", "0"], "concurrency (--concurrency) must be a whole number >= 1"),
    ],
)
def test_bad_flags_are_reported_before_the_models_load(tmp_path, flags, message):
    src = write_jsonl(tmp_path / "in.jsonl", rows(1))
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *flags, *NO_MODEL)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def recipe_file(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: !foo bar\n", "r.yaml, line 1: 'name': cannot read this value (!foo)"),
        ("name: x\nseed: !!int abc\n", "r.yaml, line 2: 'seed': cannot read this value"),
        ("name: x\nextends: paper\ndomains: [a, b]\n", "r.yaml, line 3: 'domains': expected a mapping"),
    ],
)
def test_recipe_mistakes_are_one_line(tmp_path, text, message):
    from cdr.recipes import load_recipe

    with pytest.raises(CdrError) as err:
        load_recipe(recipe_file(tmp_path, text))
    assert message in str(err.value)


def score_with_python_router(tmp_path, module: str, code: str, output: str, src, pair: list[str]):
    """`cdr score --allow-python-router` with a recipe routing through ``module:pick`` (written from ``code``)."""
    (tmp_path / f"{module}.py").write_text(code)
    recipe = recipe_file(
        tmp_path,
        f"name: x\nfallback: A\nrouter: {{kind: python, callable: '{module}:pick'}}\n"
        "domains:\n  A: {criteria: Be brief.}\n  B: {criteria: Be long.}\n",
    )
    sys.path.insert(0, str(tmp_path))
    try:
        return cdr_in_process(
            "score", str(src), "-o", str(tmp_path / output), "--recipe", str(recipe), "--allow-python-router", *pair
        )
    finally:
        sys.path.remove(str(tmp_path))


def test_a_failing_python_router_is_one_line(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    proc = score_with_python_router(
        tmp_path,
        "myrouting",
        "def pick(messages):\n    raise KeyError('topic')\n",
        "out.jsonl",
        src,
        pair_args(tiny_strong, tiny_weak),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cdr: error: router myrouting:pick failed: KeyError: 'topic'" in proc.stderr


# --- 10. a recipe runs no code unless asked --------------------------------------------------------------------


def test_a_python_router_needs_an_explicit_opt_in(tmp_path, tiny_strong, tiny_weak):
    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    for target in ("sys:exit", "this:s"):
        recipe = recipe_file(
            tmp_path,
            f"name: x\nfallback: A\nrouter: {{kind: python, callable: '{target}'}}\n"
            "domains:\n  A: {criteria: Be brief.}\n  B: {criteria: Be long.}\n",
        )
        modules = set(sys.modules)
        proc = cdr_in_process(
            "score",
            str(src),
            "-o",
            str(tmp_path / "out.jsonl"),
            "--recipe",
            str(recipe),
            *pair_args(tiny_strong, tiny_weak),
        )
        assert proc.returncode == 2, proc.stderr
        assert "pass --allow-python-router" in proc.stderr and target in proc.stderr
        assert "this" not in set(sys.modules) - modules  # its import code never ran
    proc = score_with_python_router(
        tmp_path,
        "okrouting",
        "def pick(messages):\n    return 'B'\n",
        "ok.jsonl",
        src,
        pair_args(tiny_strong, tiny_weak),
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["cdr_domain"] for r in read_jsonl(tmp_path / "ok.jsonl")] == ["B", "B"]


# --- 11. smaller ---------------------------------------------------------------------------------------------------


def test_format_error_names_real_flags(tmp_path):
    src = write_jsonl(tmp_path / "in.txt", rows(1))
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *NO_MODEL)
    assert proc.returncode == 2 and "(or --input-format)" in proc.stderr and "--format)" not in proc.stderr
    proc = cdr_in_process(
        "score", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.txt"), "--input-format", "jsonl", *NO_MODEL
    )
    assert proc.returncode == 2 and "(or --output-format)" in proc.stderr


def test_a_directory_as_input_is_called_a_directory(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    proc = cdr_in_process("score", str(tmp_path / "d.jsonl"), "-o", str(tmp_path / "out.jsonl"), *NO_MODEL)
    assert proc.returncode == 2 and "is a directory, not a file" in proc.stderr and "does not exist" not in proc.stderr


def test_duplicate_keys_are_reported(tmp_path, tiny_strong, tiny_weak):
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"prompt": "Hi?", "response": "first", "response": "Hello."}\n{"prompt": "Hi?", "response": "Yo."}\n'
    )
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *pair_args(tiny_strong, tiny_weak))
    assert proc.returncode == 0, proc.stderr
    assert "line 1, field 'response': appears twice in the row; the last value is used" in proc.stderr
    assert [r["response"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["Hello.", "Yo."]
    (report,) = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert report["kind"] == "duplicate key" and report["location"] == "line 1"
    assert "rows: 2  scored: 2  skipped: 0" in proc.stdout
