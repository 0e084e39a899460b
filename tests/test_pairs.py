"""`cdr pairs`: N passes give every ordered pair, equal to scoring each pair directly."""

import json

import pytest

from cdr import DensityRatio, RewardConfig
from cdr.errors import CdrError
from cdr.pipelines.evaluate import Selection, conversations, load_rewardbench
from cdr.pipelines.pairs import compare_pairs
from cdr.rewardbench import is_correct, section_scores, subset_accuracy
from conftest import build_tiny_llama, cdr_in_process


@pytest.fixture(scope="module")
def third_model(tmp_path_factory, smol_tokenizer):
    return build_tiny_llama(smol_tokenizer, tmp_path_factory.mktemp("tiny_third"), seed=3)


def test_derived_pairs_equal_direct_pair_scoring(tmp_path, tiny_strong, tiny_weak, third_model):
    models = [str(tiny_strong), str(tiny_weak), str(third_model)]
    selection = Selection(subsets=("alpacaeval-easy", "donotanswer", "hep-go"), sample=9, seed=3)
    results = compare_pairs(
        "mini", models, tmp_path, RewardConfig(cache="none"), selection=selection, progress=False, n_bootstrap=20
    )
    assert results["passes"] == 3 and len(results["pairs"]) == 6
    rows, _ = load_rewardbench("mini", selection)
    convs = [c for row in rows for c in conversations(row)]
    for key, pair in results["pairs"].items():
        direct = DensityRatio(strong=pair["strong"], weak=pair["weak"], cache="none").score(convs)
        correct = [
            (row["subset"], is_correct(direct[2 * i].reward, direct[2 * i + 1].reward)) for i, row in enumerate(rows)
        ]
        assert pair["sections"] == pytest.approx(section_scores(subset_accuracy(correct))), key
    best = max(results["pairs"].values(), key=lambda p: p["accuracy"])
    assert (results["recommended"]["strong"], results["recommended"]["weak"]) == (best["strong"], best["weak"])
    # the gap is the difference of the two single-model scores
    some = next(iter(results["pairs"].values()))
    m = results["models"]
    assert some["gap"] == pytest.approx(
        m[some["strong"]]["single_model"]["accuracy"] - m[some["weak"]]["single_model"]["accuracy"]
    )
    for name in ("results.json", "pairs.md", "heatmap.png", "gap.png", "logprobs.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    lines = (tmp_path / "logprobs.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(rows) and set(json.loads(lines[0])) >= set(models)


def test_pairs_resume_from_the_cache_without_recomputing(tmp_path, tiny_strong, tiny_weak):
    cache = tmp_path / "lp.sqlite"
    args = [
        "pairs",
        "mini",
        "--models",
        f"{tiny_strong},{tiny_weak}",
        "--subsets",
        "hep-go,donotanswer",
        "--cache",
        str(cache),
        "--bootstrap",
        "10",
        "-q",
    ]
    first = cdr_in_process(*args, "--output-dir", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    from cdr.cache import LogprobCache

    rows = json.loads((tmp_path / "a" / "results.json").read_text())["data"]["rows"]
    assert len(LogprobCache(cache)) == 2 * 2 * rows  # two models x two responses a row
    second = cdr_in_process(*args, "--output-dir", str(tmp_path / "b"))
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b"))
    assert a["pairs"] == b["pairs"]
    assert len(LogprobCache(cache)) == 2 * 2 * rows  # nothing new was computed
    assert "Recommended: strong" in second.stdout


def test_pairs_input_errors(tmp_path, tiny_strong, tiny_weak):
    with pytest.raises(CdrError, match="at least two different models"):
        compare_pairs("mini", [str(tiny_strong)], tmp_path)
    with pytest.raises(CdrError, match="needs rendering 'own'"):
        compare_pairs("mini", [str(tiny_strong), str(tiny_weak)], tmp_path, RewardConfig(rendering="shared"))
    proc = cdr_in_process(
        "pairs",
        "--models",
        f"{tiny_strong},{tiny_weak}",
        "--output-dir",
        str(tmp_path),
        "--quality",
        f"{tiny_strong}=high",
    )
    assert proc.returncode == 2 and "--quality expects name=number" in proc.stderr
    proc = cdr_in_process("pairs", "--models", f"{tiny_strong},no-such-model-here", "--output-dir", str(tmp_path))
    assert proc.returncode == 2 and "no-such-model-here" in proc.stderr and "Traceback" not in proc.stderr
