"""`cdr eval --compare RUN_A RUN_B`: A minus B on the rows both runs scored, with paired bootstrap intervals."""

import json

import pytest

from cdr.errors import CdrError
from cdr.pipelines.compare import compare_runs
from conftest import run_cdr


def write_run(path, rows, benchmark="rewardbench", variant="mean_diff", model="s", ref="w"):
    path.mkdir(parents=True)
    results = {"benchmark": benchmark, "variant": variant, "model": model, "ref_model": ref}
    (path / "results.json").write_text(json.dumps(results))
    (path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def v1_row(subset, rid, correct, other=False):
    return {"subset": subset, "id": str(rid), "correct": {"mean_diff": correct, "strong_sum": other}}


def test_v1_difference_hand_computed_and_rows_matched_by_key(tmp_path):
    a = write_run(tmp_path / "a", [v1_row("alpacaeval-easy", i, True) for i in range(4)] + [v1_row("hep-go", 9, True)])
    # B lists the rows in another order, misses hep-go 9 and has one row A lacks
    b_rows = [v1_row("alpacaeval-easy", i, i < 2) for i in (3, 2, 1, 0)] + [v1_row("donotanswer", 5, True)]
    b = write_run(tmp_path / "b", b_rows)
    out = compare_runs(a, b, tmp_path / "cmp", n_bootstrap=300)
    assert out["rows"] == 4 and out["only_in_a"] == 1 and out["only_in_b"] == 1
    assert out["difference"]["Chat"][0] == pytest.approx(0.5)  # A 4/4, B 2/4 on the same four rows
    assert out["difference"]["score"][0] == pytest.approx(0.5)  # Chat is the only section present
    low, high = out["difference"]["Chat"][1:]
    assert 0.0 <= low < 0.5 < high <= 1.0
    assert out["a"]["figures"]["Chat"] == 1.0 and out["b"]["figures"]["Chat"] == 0.5
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| Chat | 1.000 | 0.500 | +0.500 [" in md and "1 row(s) only in A and 1 only in B" in md
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 5_000
    # two variants of one run
    same = compare_runs(a, a, tmp_path / "cmp2", variants=("mean_diff", "strong_sum"), n_bootstrap=100)
    assert same["difference"]["score"][0] == pytest.approx(1.0) and same["only_in_a"] == 0


def test_v2_runs_compare_with_ties_resampled_by_prompt(tmp_path):
    def rec(subset, rid, scores, n=1):
        return {"subset": subset, "id": rid, "num_correct": n, "rewards": {"mean_diff": scores, "sum": scores[::-1]}}

    rows = [rec("Math", str(i), [3.0, 1.0, 0.0, 0.0]) for i in range(5)]
    rows += [rec("Ties", "ref:1", [2.0, 0.0]), rec("Ties", "tied:1", [3.0, 2.5, 0.0], 2)]
    a = write_run(tmp_path / "a", rows, benchmark="rewardbench2")
    b = write_run(tmp_path / "b", rows, benchmark="rewardbench2", variant="sum")
    out = compare_runs(a, b, tmp_path / "cmp", n_bootstrap=50)
    assert out["benchmark"] == "rewardbench2" and out["difference"]["Math"][0] == pytest.approx(1.0)
    assert list(out["difference"]) == ["Math", "Ties", "score"]


def test_compare_refuses_what_cannot_be_compared(tmp_path):
    a = write_run(tmp_path / "a", [v1_row("hep-go", 1, True)])
    b = write_run(tmp_path / "b", [v1_row("hep-go", 2, True)])
    with pytest.raises(CdrError, match="no row in common"):
        compare_runs(a, b, tmp_path / "o")
    c = write_run(tmp_path / "c", [v1_row("hep-go", 1, True)], benchmark="rewardbench2")
    with pytest.raises(CdrError, match="run A is a rewardbench run and run B a rewardbench2 run"):
        compare_runs(a, c, tmp_path / "o")
    with pytest.raises(CdrError, match="scores.jsonl is missing"):
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "results.json").write_text("{}")
        compare_runs(a, tmp_path / "d", tmp_path / "o")
    with pytest.raises(CdrError, match=r"variant of run B \(--compare-variants\) must be one of"):
        compare_runs(a, a, tmp_path / "o", variants=(None, "median"))


def test_cli_compare(tmp_path):
    a = write_run(tmp_path / "a", [v1_row("alpacaeval-easy", i, True) for i in range(6)])
    b = write_run(tmp_path / "b", [v1_row("alpacaeval-easy", i, i % 2 == 0) for i in range(6)])
    proc = run_cdr("eval", "--compare", str(a), str(b), "-o", str(tmp_path / "cmp"), "--bootstrap", "200")
    assert proc.returncode == 0, proc.stderr
    assert "A minus B on 6 rows" in proc.stdout and "| Chat | 1.000 | 0.500 | +0.500 [" in proc.stdout
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"] == 6
    proc = run_cdr("eval", "mini", "--compare", str(a), str(b), "-o", str(tmp_path / "x"))
    assert proc.returncode == 2 and "--compare takes two run folders and no DATA" in proc.stderr
    proc = run_cdr("eval", "--compare", str(a), str(tmp_path / "nope"), "-o", str(tmp_path / "x"))
    assert proc.returncode == 2 and "results.json is missing" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cdr("eval", "-o", str(tmp_path / "x"))
    assert proc.returncode == 2 and "needs the rows to evaluate (DATA), or --compare" in proc.stderr


def test_compare_refuses_rows_with_the_same_key_but_other_text(tmp_path):
    a = write_run(tmp_path / "a", [v1_row("hep-go", 1, True), v1_row("hep-go", 2, True)])
    b = write_run(tmp_path / "b", [v1_row("hep-go", 1, False), v1_row("hep-go", 2, True)])
    for run, prompt in ((a, "Q1"), (b, "Q1, reworded")):
        rows = [{"subset": "hep-go", "id": "1", "prompt": prompt, "chosen": "x", "rejected": "y"}]
        rows.append({"subset": "hep-go", "id": "2", "prompt": "Q2", "chosen": "x", "rejected": "y"})
        (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CdrError, match=r"1 row\(s\) have the same \(subset, id\) but other text.*\('hep-go', '1'\)"):
        compare_runs(a, b, tmp_path / "o", n_bootstrap=10)


@pytest.mark.parametrize("columns", [{"score": "overall"}, {"score": "overall", "Chat": "Chat"}])
def test_difference_panels_draws_one_panel_per_column(tmp_path, columns):
    from cdr.plots import difference_panels, interval_color

    rows = {
        "A": {"score": (0.03, 0.01, 0.05), "Chat": (-0.2, -0.3, -0.1)},
        "B": {"score": (0.0, -0.1, 0.1), "Chat": (0.1, 0.0, 0.2)},
    }
    difference_panels(rows, columns, tmp_path / "p.png", "A and B minus vanilla")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "p.png").stat().st_size > 5_000
    assert [interval_color(*rows["A"][c][1:]) for c in ("score", "Chat")] == ["tab:green", "tab:red"]
    assert interval_color(-0.1, 0.1) == "tab:gray"
