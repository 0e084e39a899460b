"""`cdr eval --ensemble RUN ...` (#22, idea 2): an ensemble of pairs from runs already scored, on real runs of tiny
models: the ensemble's reward is the weighted mean of the pairs' rewards, row by row."""

import json

import pytest

from cdr.errors import CdrError
from cdr.pipelines.ensemble import ensemble_runs, parse_weights
from cdr.rewardbench import RATIO_VARIANTS
from conftest import cdr_in_process as run_cdr


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_strong, tiny_weak_fast):
    """Two real `cdr eval` runs on the same sample of mini rows: the strong model over another model, and over its own
    first layer."""
    root = tmp_path_factory.mktemp("ensemble_runs")
    subsets = "alpacaeval-easy,llmbar-natural,donotanswer,hep-go"  # one of each section
    common = ["eval", "mini", "--subsets", subsets, "--sample", "8", "--bootstrap", "50", "--cache", "none"]
    common += ["--strong", str(tiny_strong)]
    pairs = {"other": ["--weak", str(tiny_weak_fast)], "exit1": ["--weak", str(tiny_strong), "--weak-exit-layer", "1"]}
    for name, weak in pairs.items():
        done = run_cdr(*common, *weak, "-o", str(root / name))
        assert done.returncode == 0, done.stderr
    return root / "other", root / "exit1"


def records(run):
    return {(r["subset"], r["id"]): r for r in map(json.loads, (run / "scores.jsonl").read_text().splitlines())}


def test_ensemble_reward_is_the_weighted_mean_of_the_pairs_rewards(two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "ens"
    done = run_cdr(
        "eval", "--ensemble", str(a), str(b), "--ensemble-weights", "3,1", "-o", str(out), "--bootstrap", "50"
    )
    assert done.returncode == 0, done.stderr
    ra, rb, re = records(a), records(b), records(out)
    assert len(re) == len(ra) >= 8 and set(re) == set(ra)
    for key, row in re.items():
        for variant in RATIO_VARIANTS:
            for i in (0, 1):
                expected = 0.75 * ra[key]["rewards"][variant][i] + 0.25 * rb[key]["rewards"][variant][i]
                assert row["rewards"][variant][i] == pytest.approx(expected, abs=1e-12)
            chosen, rejected = row["rewards"][variant]
            assert row["correct"][variant] == (chosen > rejected)
        assert row["rewards"]["strong_sum"] == ra[key]["rewards"]["strong_sum"]  # baselines: the first run's
    results = json.loads((out / "results.json").read_text())
    assert results["provenance"]["ensemble"]["weights"] == [0.75, 0.25]
    assert "0.25 x " in results["ref_model"] and "(exit layer 1)" in results["ref_model"]
    assert (out / "sections.png").stat().st_size > 5_000
    # an ensemble folder is an ordinary run: --compare reads it
    cmp = run_cdr("eval", "--compare", str(out), str(a), "-o", str(tmp_path / "cmp"), "--bootstrap", "50")
    assert cmp.returncode == 0 and f"A minus B on {len(re)} rows" in cmp.stdout


def test_ensemble_refuses_what_it_cannot_combine(two_runs, tmp_path):
    a, b = two_runs
    with pytest.raises(CdrError, match="two or more run folders"):
        ensemble_runs([a], tmp_path / "x")
    for text in ("1", "1,-1,2", "0,0", "1,x"):
        with pytest.raises(CdrError, match="--ensemble-weights"):
            parse_weights(text, 2)
    assert parse_weights(None, 4) == [0.25] * 4
    done = run_cdr("eval", "--ensemble", str(a), str(tmp_path / "missing"), "-o", str(tmp_path / "y"))
    assert done.returncode == 2 and "results.json is missing" in done.stderr and "Traceback" not in done.stderr
    done = run_cdr("eval", "--ensemble", str(a), str(b), "--compare", str(a), str(b), "-o", str(tmp_path / "z"))
    assert done.returncode == 2 and "two different jobs" in done.stderr
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "results.json").write_text(json.dumps({"benchmark": "rewardbench2"}))
    (v2 / "scores.jsonl").write_text("")
    with pytest.raises(CdrError, match="combines RewardBench \\(v1\\) runs; .* is a rewardbench2 run"):
        ensemble_runs([a, v2], tmp_path / "w")
