"""`cdr eval`: row checks, the (subset, id) key, sampling, variant derivation, outputs and resume."""

import json
import os
import shutil
from collections import Counter

import pytest

from cdr.errors import CdrError, RowError
from cdr.pipelines.evaluate import Selection, build_results, load_rewardbench, mini_path, stratified_sample
from cdr.rewardbench import ALL_VARIANTS, response_score
from conftest import cdr_in_process, eval_command, kill_9_after, run_cdr, write_jsonl


def rb_row(subset, rid, chosen="A good answer.", rejected="Bad.", prompt="Question?"):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "subset": subset, "id": rid}


def test_same_id_in_two_subsets_is_two_rows_but_a_repeated_key_is_reported(tmp_path):
    path = write_jsonl(
        tmp_path / "rb.jsonl",
        [
            rb_row("donotanswer", 3692),
            rb_row("hep-python", 3692),
            rb_row("hep-python", "3692"),
        ],
    )
    rows, problems = load_rewardbench(str(path), log=lambda _: None)
    assert [(r["subset"], r["id"]) for r in rows] == [("donotanswer", "3692"), ("hep-python", "3692")]
    assert problems == [
        {
            "location": "line 3",
            "field": "id",
            "kind": "duplicate key",
            "error": "duplicate (subset, id) = ('hep-python', '3692'), first at line 2",
        }
    ]


def test_malformed_rows_name_line_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "rb.jsonl",
        [
            rb_row("hep-go", 1),
            {"prompt": "Q", "chosen": "x", "subset": "hep-go", "id": 2},  # no rejected
            rb_row("hep-go", 3, chosen=["not", "text"]),
            "{not json",
            rb_row("hep-go", 5, prompt=[{"role": "robot", "content": "hi"}]),
        ],
    )
    rows, problems = load_rewardbench(str(path), log=lambda _: None)
    assert len(rows) == 1
    assert [(p["location"], p["field"], p["kind"]) for p in problems] == [
        ("line 2", "rejected", "missing field"),
        ("line 3", "chosen", "wrong type"),
        ("line 4", None, "bad JSON"),
        ("line 5", "prompt[0].role", "bad role"),
    ]
    with pytest.raises(RowError, match="line 2, field 'rejected'"):
        load_rewardbench(str(path), on_error="fail")


def test_selection_subsets_sample_limit():
    rows, _ = load_rewardbench("mini", Selection(subsets=("hep-go", "math-prm")))
    assert Counter(r["subset"] for r in rows) == {"hep-go": 10, "math-prm": 10}
    rows, _ = load_rewardbench("mini", Selection(limit=7))
    assert len(rows) == 7
    with pytest.raises(CdrError, match="not in the data: nope"):
        load_rewardbench("mini", Selection(subsets=("nope",)))
    with pytest.raises(CdrError, match="sample must be at least 1"):
        Selection(sample=0)


def test_stratified_sample_is_proportional_deterministic_and_in_file_order():
    rows = [{"subset": "big", "i": i} for i in range(90)] + [{"subset": "small", "i": 90 + i} for i in range(10)]
    picked = stratified_sample(rows, 20, seed=1)
    assert Counter(r["subset"] for r in picked) == {"big": 18, "small": 2}
    assert [r["i"] for r in picked] == sorted(r["i"] for r in picked)
    assert picked == stratified_sample(rows, 20, seed=1) and picked != stratified_sample(rows, 20, seed=2)
    tiny = stratified_sample(rows + [{"subset": "rare", "i": 100}], 5, seed=0)
    assert {r["subset"] for r in tiny} == {"big", "small", "rare"}  # every subset keeps at least one row


def side(strong, strong_n, weak, weak_n, chars):
    return {
        "strong_logprob": strong,
        "strong_tokens": strong_n,
        "weak_logprob": weak,
        "weak_tokens": weak_n,
        "chars": chars,
        "truncated": False,
    }


def record(subset, chosen, rejected, error=None):
    from cdr.pipelines.evaluate import score_record

    return score_record({"subset": subset, "id": "x"}, chosen, rejected, error)


def test_variants_ties_and_unscorable_rows_on_hand_made_numbers():
    good = side(-10.0, 5, -20.0, 4, 50)  # sum +10, mean +2, mean_diff -2 + 5 = +3; strong mean -2; weak mean -5
    bad = side(-12.0, 6, -15.0, 5, 60)  # sum +3, mean 0.5, mean_diff -2 + 3 = +1; strong mean -2 (tie); weak mean -3
    rec = record("hep-go", good, bad)
    assert rec["rewards"]["sum"] == [10.0, 3.0] and rec["rewards"]["mean_diff"] == [3.0, 1.0]
    assert rec["correct"] == {
        "sum": True,
        "mean": True,
        "mean_diff": True,
        "strong_sum": True,
        "strong_mean": False,
        "weak_sum": False,
        "weak_mean": False,
        "shorter": True,
        "longer": False,
    }
    broken = record("hep-go", side(None, None, None, None, 10), bad, error="strong chosen: too long")
    assert not any(broken["correct"][v] for v in ("sum", "mean", "mean_diff", "strong_sum", "weak_mean"))
    assert broken["correct"]["shorter"] is True  # length needs no model
    results = build_results([rec, broken], {"variant": "mean_diff", "strong": "s", "weak": "w"}, n_bootstrap=0)
    assert results["accuracy"] == pytest.approx(0.5) and results["extra_results"] == {"hep-go": 0.5}
    assert results["unscorable"] == 1 and set(results["variants"]) == set(ALL_VARIANTS)
    assert response_score("strong_mean", good) == -2.0


def eval_args(out, tiny_strong, tiny_weak, *extra):
    return eval_command("mini", out, tiny_strong, tiny_weak, *extra)


def test_eval_outputs_and_variants_equal_direct_scoring(tmp_path, tiny_strong, tiny_weak):
    from cdr import DensityRatio
    from cdr.pipelines.evaluate import conversations

    out = tmp_path / "ev"
    proc = cdr_in_process(*eval_args(out, tiny_strong, tiny_weak, "--sample", "30", "--chunk-rows", "8", "-q"))
    assert proc.returncode == 0, proc.stderr
    assert "| ratio, mean_diff |" in proc.stdout and "prefer longer" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    for name in ("accuracy", "num_prompts", "model", "ref_model", "sections", "extra_results", "variants"):
        assert name in results
    assert set(results["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert set(results["variants"]) == set(ALL_VARIANTS) and results["num_prompts"] == 30
    assert results["accuracy"] == results["variants"]["mean_diff"]["accuracy"]
    assert (out / "sections.png").stat().st_size > 10_000 and (out / "results.md").exists()
    scores = [json.loads(line) for line in (out / "scores.jsonl").open()]
    rows = [json.loads(line) for line in (out / "rows.jsonl").open()]
    assert [(s["subset"], s["id"]) for s in scores] == [(r["subset"], r["id"]) for r in rows]
    # every variant, derived from one pass per model, equals scoring the pair directly with that variant
    convs = [c for r in rows[:6] for c in conversations(r)]
    for variant in ("sum", "mean", "mean_diff"):
        direct = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", variant=variant).score(convs)
        derived = [x for s in scores[:6] for x in s["rewards"][variant]]
        # equal up to float32 noise: the batches (and so the padding) differ between the two runs
        assert derived == pytest.approx([d.reward for d in direct], rel=1e-6, abs=1e-6)


def test_eval_killed_mid_run_resumes_to_the_same_scores(tmp_path, tiny_strong, tiny_weak_fast):
    whole = tmp_path / "whole"
    assert (
        cdr_in_process(
            *eval_args(whole, tiny_strong, tiny_weak_fast, "--sample", "40", "--chunk-rows", "5", "-q")
        ).returncode
        == 0
    )
    cut = tmp_path / "cut"
    args = eval_args(cut, tiny_strong, tiny_weak_fast, "--sample", "40", "--chunk-rows", "5", "-q")
    done = kill_9_after(args, cut / "scores.jsonl.cdr-state.json", rows_done=10)
    assert 10 <= done < 40 and not (cut / "results.json").exists()
    copied = tmp_path / "copied"  # the half-done folder copied elsewhere, without its times, before resuming
    shutil.copytree(cut, copied, copy_function=shutil.copy)
    proc = run_cdr(*args)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed after row {done}" in proc.stdout
    assert (cut / "scores.jsonl").read_bytes() == (whole / "scores.jsonl").read_bytes()
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, cut))
    assert a["variants"] == b["variants"]
    again = cdr_in_process(*eval_args(copied, tiny_strong, tiny_weak_fast, "--sample", "40", "--chunk-rows", "5"))
    assert again.returncode == 0, again.stderr
    assert f"resumed after row {done}" in again.stdout and "the input has the same content" in again.stderr
    assert (copied / "scores.jsonl").read_bytes() == (whole / "scores.jsonl").read_bytes()


def test_eval_errors_are_one_line(tmp_path, tiny_strong, tiny_weak):
    proc = run_cdr(*eval_args(tmp_path / "x", tiny_strong, tiny_weak, "--subsets", "no-such-subset"))
    assert proc.returncode == 2 and "subset(s) not in the data: no-such-subset" in proc.stderr
    assert "Traceback" not in proc.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = run_cdr(
        *eval_args(tmp_path / "y", tiny_strong, tiny_weak)[:1],
        "someone/missing-dataset",
        "--output-dir",
        str(tmp_path / "y"),
        "--strong",
        str(tiny_strong),
        "--weak",
        str(tiny_weak),
        env=env,
    )
    assert proc.returncode == 2 and "could not load 'someone/missing-dataset' from the Hugging Face hub" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_packaged_mini_set_is_the_shared_one():
    rows = [json.loads(line) for line in mini_path().open()]
    assert len(rows) == 230 and Counter(r["subset"] for r in rows) == {s: 10 for s in {r["subset"] for r in rows}}
