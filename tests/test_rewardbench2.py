"""RewardBench 2: the arithmetic on hand-computed answers, against the official package's own functions, the
row checks, and `cdr eval --benchmark rewardbench2` end to end on tiny models."""

import ast
import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from cdr import rewardbench2 as rb2
from cdr.errors import CdrError, RowError
from cdr.pipelines.evaluate_v2 import load_rewardbench2, sample_path, score_record
from cdr.rewardbench import ALL_VARIANTS
from conftest import cdr_in_process, eval_command, run_cdr, write_jsonl


def row(subset, rid, scores, num_correct=1):
    return rb2.Row(subset, str(rid), tuple(scores), num_correct)


# ---- hand-computed answers ---------------------------------------------------------------------------------


def test_best_of_n_needs_the_chosen_on_top_and_splits_ties():
    assert rb2.best_of_n([3.0, 1.0, 2.0, 0.0]) == 1.0
    assert rb2.best_of_n([3.0, 3.0, 1.0, 0.0]) == 0.5  # tied at the top with one rejected: 1/2
    assert rb2.best_of_n([2.0, 2.0, 2.0, 2.0]) == 0.25
    assert rb2.best_of_n([1.0, 3.0, 2.0, 0.0]) == 0.0
    assert rb2.best_of_n([3.0, None, 1.0, 0.0]) == 0.0  # an unscorable completion makes the row wrong


def test_ties_terms_hand_computed():
    rows = [
        # prompt 1: ref accurate (5 > 3), gap 2; tied: correct 4, 3.5, 6 above incorrect 1, 2: gap 1.5, spread 2.5
        row("Ties", "ref:1", [5, 1, 2, 3], 1),
        row("Ties", "tied:1", [4, 3.5, 6, 1, 2], 3),
        # prompt 2: ref wrong (1 < 2), gap -1; tied: 5, 4 above 0, 1: gap 3, spread 1
        row("Ties", "ref:2", [1, 2, 0], 1),
        row("Ties", "tied:2", [5, 4, 0, 1], 2),
    ]
    terms = rb2.ties_terms(rb2._ties_prompts(rb2.units(rows)["Ties"]))
    margin = (math.tanh(1.5 / 2.5 - 1) + math.tanh(-1 / 1 - 1)) / 2
    assert terms["tied_accuracy"] == 1.0 and terms["ref_accuracy"] == 0.5
    assert terms["correctness_preferred"] == 0.5  # prompt 2 only: 3 > 1
    assert terms["correctness_preferred_hard"] == 0.0  # min(2, 1.5) = 1.5 < 2.5; min(-1, 3) = -1 < 1
    assert terms["margin_score"] == pytest.approx(margin)
    assert terms["score"] == pytest.approx(0.3 + 0.15 + 0.1 + 0.0 + 0.01 * margin)


def test_leaderboard_score_is_the_unweighted_mean_of_subsets():
    rows = [
        row("Math", 1, [2, 1, 0, 0]),
        row("Math", 2, [0, 1, 0, 0]),  # Math 0.5
        row("Focus", 3, [1, 1, 0, 0]),  # Focus 0.5 (a tie with one rejected)
        row("Safety", 4, [5, 1, 1, 1]),
        row("Safety", 5, [5, 1, 1, 1]),
        row("Safety", 6, [5, 1, 1, 1]),  # Safety 1.0, three rows but one subset's weight
    ]
    s = rb2.summarize(rows, n_bootstrap=0)
    assert s["subsets"] == {"Math": 0.5, "Focus": 0.5, "Safety": 1.0}
    assert s["accuracy"] == pytest.approx(2 / 3) and s["ties_terms"] is None


def test_bootstrap_and_paired_bootstrap():
    rng = random.Random(0)
    a = [row("Math", i, [rng.random() for _ in range(4)]) for i in range(40)]
    a += [row("Ties", f"{k}:{i}", [rng.random() for _ in range(4)], 2) for i in range(10) for k in ("ref", "tied")]
    ci = rb2.bootstrap(a, n=200)
    point = rb2.summarize(a, n_bootstrap=0)
    for name in ("Math", "Ties"):
        assert ci[name][0] <= point["subsets"][name] <= ci[name][1]
    assert ci["score"][0] < ci["score"][1]
    same = rb2.paired_bootstrap(a, a, n=100)
    assert all(v == (0.0, 0.0, 0.0) for v in same.values())
    # B wrong everywhere in Math: the difference is A's Math score, exactly, in every resample of the same rows
    b = [row(r.subset, r.id, (-1.0, 1, 1, 1) if r.subset == "Math" else r.scores, r.num_correct) for r in a]
    d = rb2.paired_bootstrap(a, b, n=200)
    assert d["Math"][0] == pytest.approx(point["subsets"]["Math"]) and d["Ties"] == (0.0, 0.0, 0.0)
    assert d["Math"][1] < d["Math"][0] < d["Math"][2]
    with pytest.raises(ValueError, match="same rows"):
        rb2.paired_bootstrap(a, b[::-1])


def test_unscorable_completion_makes_the_ties_prompt_inaccurate():
    stats = rb2.prompt_stats([2.0, None, 0.0], 2)
    assert stats == rb2.PromptStats(False, 0.0, None)


# ---- the official package's own functions (rewardbench 0.1.4, installed --no-deps) -------------------------


def official():
    """The official scoring functions and constants, executed from the installed rewardbench package's files.

    The package imports fastchat, bitsandbytes and pins transformers 4.51 at import time, so it is installed
    without its dependencies and its scoring functions are taken from ``rewardbench/utils.py`` by name (their
    own code, unchanged) and run beside numpy, pandas and datasets, which is all they use."""
    # the README's test command installs it with --target: its wheel also holds top-level packages named
    # `tests`, `scripts` and `analysis`, which have no place on the test environment's import path
    root = Path(sys.prefix) / "rewardbench-official" / "rewardbench"
    if not root.is_dir():
        spec = importlib.util.find_spec("rewardbench")
        if spec is None:
            pytest.skip(
                "the official rewardbench package is not installed "
                "(pip install --no-deps --target .venv/rewardbench-official rewardbench==0.1.4)"
            )
        root = Path(spec.submodule_search_locations[0])
    constants: dict = {}
    exec(compile((root / "constants.py").read_text(), str(root / "constants.py"), "exec"), constants)
    wanted = {"calculate_scores_per_section", "reroll_and_score_dataset", "sample_stats", "process_single_model"}
    tree = ast.parse((root / "utils.py").read_text())
    module = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], [])
    import datasets
    import pandas as pd

    namespace = {"np": np, "pd": pd, "math": math, "Dataset": datasets.Dataset}
    exec(compile(module, str(root / "utils.py"), "exec"), namespace)
    assert wanted <= set(namespace), "the official utils.py no longer defines " + ", ".join(wanted - set(namespace))
    return constants, namespace


def test_v1_constants_and_sections_equal_the_official_ones():
    from cdr.rewardbench import EXAMPLE_COUNTS, SUBSET_MAPPING, section_scores

    constants, fn = official()
    assert EXAMPLE_COUNTS == constants["EXAMPLE_COUNTS"] and SUBSET_MAPPING == constants["SUBSET_MAPPING"]
    rng = np.random.default_rng(1)
    for _ in range(20):
        accuracy = {s: float(rng.random()) for s in EXAMPLE_COUNTS}
        ours = section_scores(accuracy)
        theirs = fn["calculate_scores_per_section"](EXAMPLE_COUNTS, SUBSET_MAPPING, accuracy)
        assert ours == pytest.approx(theirs, abs=1e-12)


def random_rb2_rows(rng: np.random.Generator, per_subset: int) -> list[rb2.Row]:
    """Rows of every subset with integer scores (so ties at the top happen), Ties with ref/tied prompt ids,
    a few tied prompts without their ref and with one correct answer."""
    rows = []
    for subset in rb2.SUBSETS[:-1]:
        for i in range(per_subset):
            rows.append(row(subset, i, rng.integers(0, 4, 4).astype(float).tolist(), 1))
    for pid in range(per_subset):
        if pid % 5 != 4:
            rows.append(row("Ties", f"ref:{pid}", rng.integers(0, 6, int(rng.integers(2, 5))).tolist(), 1))
        n_correct = 1 if pid % 7 == 6 else int(rng.integers(2, 5))
        scores = rng.integers(0, 6, n_correct + int(rng.integers(1, 4))).tolist()
        rows.append(row("Ties", f"tied:{pid}", [float(s) for s in scores], n_correct))
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_v2_scores_equal_the_official_runner(seed):
    """run_v2.py's path: unroll each row's scores, reroll_and_score_dataset, then per subset the mean of results or,
    for Ties, process_single_model."""
    import datasets

    _, fn = official()
    rows = random_rb2_rows(np.random.default_rng(seed), per_subset=25)
    unrolled = datasets.Dataset.from_dict(
        {
            "text": [f"{r.id}-{i}" for r in rows for i in range(len(r.scores))],
            "scores": [s for r in rows for s in r.scores],
            "subset": [r.subset for r in rows for _ in r.scores],
            "id": [r.id for r in rows for _ in r.scores],
        }
    )
    rerolled = fn["reroll_and_score_dataset"](
        unrolled, [len(r.scores) for r in rows], cols_to_combine=["text", "scores"]
    )
    rerolled = rerolled.add_column("num_correct", [r.num_correct for r in rows])
    theirs = {}
    for subset in rb2.SUBSETS:
        part = rerolled.filter(lambda x, s=subset: x["subset"] == s)
        if subset == "Ties":
            theirs[subset] = fn["process_single_model"](part)[1]
        else:
            theirs[subset] = sum(part["results"]) / len(part["results"])
    ours = rb2.summarize(rows, n_bootstrap=0)
    assert ours["subsets"] == pytest.approx(theirs, abs=1e-12)
    assert ours["accuracy"] == pytest.approx(np.mean(list(theirs.values())), abs=1e-12)
    per_row = [rb2.best_of_n(r.scores) for r in rows]
    assert per_row == pytest.approx(list(rerolled["results"]), abs=1e-12)


# ---- rows ----------------------------------------------------------------------------------------------------


def rb2_row(rid, subset="Math", chosen=("Right.",), rejected=("Wrong.", "No.", "Nope."), **extra):
    chosen = list(chosen) if isinstance(chosen, tuple | list) else chosen  # a string stays one: a malformed row
    rejected = list(rejected)
    base = {
        "id": rid,
        "prompt": "Q?",
        "chosen": chosen,
        "rejected": rejected,
        "num_correct": len(chosen),
        "num_incorrect": len(rejected),
        "total_completions": len(chosen) + len(rejected),
        "models": ["m"] * (len(chosen) + len(rejected)),
        "subset": subset,
        "additional_metadata": {},
    }
    return base | extra


def test_packaged_sample_has_the_exact_schema():
    rows, problems = load_rewardbench2("sample")
    assert problems == [] and len(rows) == 19
    assert {r["subset"] for r in rows} == set(rb2.SUBSETS)
    raw = [json.loads(line) for line in sample_path().open()]
    assert all(
        set(r)
        == {
            "id",
            "prompt",
            "chosen",
            "rejected",
            "num_correct",
            "num_incorrect",
            "total_completions",
            "models",
            "subset",
            "additional_metadata",
        }
        for r in raw
    )
    ties = sorted(r["id"] for r in raw if r["subset"] == "Ties")
    assert ties == ["ref:1", "ref:2", "tied:1", "tied:2"]


def test_parquet_copy_with_list_columns_loads_like_the_jsonl(tmp_path):
    """A local copy of the hub's parquet: chosen/rejected/models are list columns, additional_metadata a struct."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = [json.loads(line) for line in sample_path().open()]
    pq.write_table(pa.Table.from_pylist(raw), tmp_path / "rb2.parquet")
    from_parquet, problems = load_rewardbench2(str(tmp_path / "rb2.parquet"))
    from_jsonl, _ = load_rewardbench2("sample")
    assert problems == []
    assert [{k: v for k, v in r.items() if k != "source"} for r in from_parquet] == [
        {k: v for k, v in r.items() if k != "source"} for r in from_jsonl
    ]


def test_malformed_rows_name_line_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "rb2.jsonl",
        [
            rb2_row("1"),
            rb2_row("2", num_correct=2),
            rb2_row("3", chosen="Right."),
            rb2_row("4", subset="Ties"),
            rb2_row("5", total_completions=3),
            rb2_row("6", rejected=["ok", ""]),
            {k: v for k, v in rb2_row("7").items() if k != "num_correct"},
            rb2_row("1"),
        ],
    )
    rows, problems = load_rewardbench2(str(path), log=lambda _: None)
    assert [r["id"] for r in rows] == ["1"]
    assert [(p["location"], p["field"], p["kind"]) for p in problems] == [
        ("line 2", "num_correct", "inconsistent"),
        ("line 3", "chosen", "wrong type"),
        ("line 4", "id", "bad Ties id"),
        ("line 5", "total_completions", "inconsistent"),
        ("line 6", "rejected[1]", "wrong type"),
        ("line 7", "num_correct", "missing field"),
        ("line 8", "id", "duplicate key"),
    ]
    with pytest.raises(RowError, match="line 2, field 'num_correct': is 2 but 'chosen' holds 1 completions"):
        load_rewardbench2(str(path), on_error="fail")
    with pytest.raises(CdrError, match="'mini' is the RewardBench v1 sample"):
        load_rewardbench2("mini")


def test_score_record_on_hand_made_numbers():
    sides = [
        {"strong_logprob": -10.0, "strong_tokens": 5, "weak_logprob": -20.0, "weak_tokens": 4, "chars": 50},
        {"strong_logprob": -12.0, "strong_tokens": 6, "weak_logprob": -15.0, "weak_tokens": 5, "chars": 60},
        {"strong_logprob": -4.0, "strong_tokens": 2, "weak_logprob": -9.0, "weak_tokens": 3, "chars": 10},
    ]
    rec = score_record({"subset": "Math", "id": "1", "num_correct": 1}, sides, None)
    assert rec["rewards"]["sum"] == [10.0, 3.0, 5.0] and rec["results"]["sum"] == 1.0
    assert rec["rewards"]["strong_sum"] == [-10.0, -12.0, -4.0] and rec["results"]["strong_sum"] == 0.0
    assert rec["results"]["shorter"] == 0.0 and rec["results"]["longer"] == 0.0
    assert set(rec["results"]) == set(ALL_VARIANTS)


# ---- end to end ----------------------------------------------------------------------------------------------


def eval2_args(out, tiny_strong, tiny_weak, *extra):
    return eval_command("sample", out, tiny_strong, tiny_weak, "--benchmark", "rewardbench2", *extra)


def test_eval_rewardbench2_end_to_end_and_resume(tmp_path, tiny_strong, tiny_weak):
    from cdr import DensityRatio
    from cdr.pipelines.evaluate_v2 import completions

    out = tmp_path / "ev2"
    proc = cdr_in_process(*eval2_args(out, tiny_strong, tiny_weak, "--chunk-rows", "4", "-q"))
    assert proc.returncode == 0, proc.stderr
    assert "# RewardBench 2:" in proc.stdout and "Ties, term by term" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == "rewardbench2" and results["num_prompts"] == 19 and results["completions"] == 80
    assert set(results["subsets"]) == set(rb2.SUBSETS) and set(results["variants"]) == set(ALL_VARIANTS)
    board = json.loads((out / "leaderboard.json").read_text())
    assert set(board) == {"model", "ref_model", "model_type", "chat_template", *rb2.SUBSETS}
    assert (out / "sections.png").stat().st_size > 10_000
    records = [json.loads(line) for line in (out / "scores.jsonl").open()]
    rows = [json.loads(line) for line in (out / "rows.jsonl").open()]
    # the figures are the arithmetic on the stored per-completion scores
    again = rb2.summarize(
        [rb2.Row(r["subset"], r["id"], tuple(r["rewards"]["mean_diff"]), r["num_correct"]) for r in records], 0
    )
    assert results["subsets"] == pytest.approx(again["subsets"])
    # each completion is scored once per model; every variant equals scoring it directly with that variant
    direct = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", variant="sum").score(
        completions(rows[0]) + completions(rows[-1])
    )
    derived = records[0]["rewards"]["sum"] + records[-1]["rewards"]["sum"]
    assert derived == pytest.approx([d.reward for d in direct], rel=1e-6, abs=1e-6)
    # the same command again resumes: nothing is scored twice and the outputs are the same
    before = (out / "scores.jsonl").read_bytes()
    proc = cdr_in_process(*eval2_args(out, tiny_strong, tiny_weak, "--chunk-rows", "4", "-q"))
    assert proc.returncode == 0 and "resumed after row 19" in proc.stdout
    assert (out / "scores.jsonl").read_bytes() == before


def test_eval_rewardbench2_errors_are_one_line(tmp_path, tiny_strong, tiny_weak):
    bad = write_jsonl(tmp_path / "bad.jsonl", [rb2_row("1", subset="Ties")])
    proc = run_cdr(
        *eval2_args(tmp_path / "x", tiny_strong, tiny_weak)[:1],
        str(bad),
        "--benchmark",
        "rewardbench2",
        "-o",
        str(tmp_path / "x"),
        "--on-error",
        "fail",
    )
    assert proc.returncode == 2 and "line 1, field 'id': a Ties id is 'ref:N' or 'tied:N'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cdr("eval", "mini", "--benchmark", "rewardbench2", "-o", str(tmp_path / "y"))
    assert proc.returncode == 2 and "'mini' is the RewardBench v1 sample" in proc.stderr


def test_sections_plot_shows_a_negative_ties_score(tmp_path):
    """RewardBench 2's Ties term can fall below 0: the plot's axis goes below 0 to show it (and its interval)."""
    import matplotlib.image

    from cdr.plots import bar_floor, section_bars

    assert bar_floor(0.2) == 0.0 and bar_floor(-0.05) == -0.1 and bar_floor(-0.3) == -0.3 and bar_floor(-0.31) == -0.4
    figures = {
        "mean_diff": {"subsets": {"Math": 0.6, "Ties": -0.23}, "accuracy": 0.2, "intervals": {"Ties": (-0.35, -0.1)}}
    }
    # "Focus" has no figure (a run on some subsets only): drawn as a gap, not an error
    section_bars(figures, {}, tmp_path / "s.png", "t", groups=("Math", "Focus", "Ties"), key="subsets", chance=0.25)
    assert matplotlib.image.imread(tmp_path / "s.png").shape[0] > 100
