import pytest

from cdr.rewardbench import bootstrap, paired_bootstrap, score, section_scores, subset_accuracy


def test_ties_are_wrong_and_accuracy_per_subset():
    rows = [("hep-go", 1.0 > 0.5), ("hep-go", 0.2 > 0.2), ("hep-go", 0.1 > 0.3), ("math-prm", True)]
    assert subset_accuracy(rows) == {"hep-go": pytest.approx(1 / 3), "math-prm": 1.0}


def test_sections_weighted_by_official_counts():
    acc = {"alpacaeval-easy": 1.0, "mt-bench-easy": 0.0}  # weights 100 and 28
    assert section_scores(acc) == {"Chat": pytest.approx(100 / 128)}
    # Reasoning: math-prm counts 984 against 6 x 164 = 984 for hep-*, so it is half the section
    acc = {"math-prm": 1.0, **{f"hep-{lang}": 0.5 for lang in ("cpp", "go", "java", "js", "python", "rust")}}
    assert section_scores(acc)["Reasoning"] == pytest.approx(0.75)
    # a missing subset drops out of its section's weights
    acc = {"math-prm": 1.0, "hep-go": 0.0}
    assert section_scores(acc)["Reasoning"] == pytest.approx(984 / (984 + 164))


def test_overall_score_is_the_mean_of_sections():
    assert score({"Chat": 1.0, "Chat Hard": 0.0, "Safety": 0.5, "Reasoning": 0.5}) == pytest.approx(0.5)


def test_bootstrap_interval_contains_the_point_estimate():
    rows = [("alpacaeval-easy", i % 3 != 0) for i in range(60)] + [("donotanswer", i % 2 == 0) for i in range(40)]
    ci = bootstrap(rows, n=300)
    point = section_scores(subset_accuracy(rows))
    for section in ("Chat", "Safety"):
        lo, hi = ci[section]
        assert lo <= point[section] <= hi and hi - lo > 0.05
    all_right = bootstrap([("alpacaeval-easy", True)] * 10, n=50)
    assert all_right["Chat"] == (1.0, 1.0)


def test_paired_bootstrap_hand_computed():
    # Chat: alpacaeval-easy (100 examples) and mt-bench-easy (28); Safety: donotanswer. A wins two rows B loses.
    a = [("alpacaeval-easy", True), ("alpacaeval-easy", True), ("mt-bench-easy", False), ("donotanswer", True)]
    b = [("alpacaeval-easy", True), ("alpacaeval-easy", False), ("mt-bench-easy", False), ("donotanswer", False)]
    d = paired_bootstrap(a, b, n=500)
    assert d["Chat"][0] == pytest.approx(100 * 0.5 / 128)  # easy 1.0 vs 0.5, weighted 100 of 128
    assert d["Safety"][0] == pytest.approx(1.0)
    assert d["score"][0] == pytest.approx((100 * 0.5 / 128 + 1.0) / 2)
    # the same row is drawn on both sides: donotanswer's one row always differs by exactly 1
    assert d["Safety"][1:] == (1.0, 1.0)
    same = paired_bootstrap(a, a, n=200)
    assert all(v == (0.0, 0.0, 0.0) for v in same.values())
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap(a, b[::-1])
