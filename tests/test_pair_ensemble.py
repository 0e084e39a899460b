"""`--extra-pairs` (#22, idea 2 at scoring time): an ensemble of pairs scored together by one reward, whose reward is
the weighted mean of the pairs' rewards, on tiny real models. It must equal the pairs scored one by one (and `cdr eval
--ensemble` of their runs), load and run a model that two pairs share once, and reach every front end."""

import json
import re

import pytest

from cdr import DensityRatio
from cdr.config import RewardConfig, parse_extra_pairs
from cdr.errors import CdrError
from conftest import cdr_in_process as run_cdr
from conftest import eval_command, write_jsonl

CONVERSATIONS = [
    [{"role": "user", "content": "Is 7 prime?"}, {"role": "assistant", "content": "Yes.\n\n7 is prime."}],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hello there!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ],
]


@pytest.fixture(scope="module")
def members(tiny_strong, tiny_weak_fast):
    """The strong model over another model, and over itself without the prompt (the ensemble that held up on
    held-out RewardBench rows with the embedded pair)."""
    return (
        {"weak": str(tiny_weak_fast)},
        {"weak": str(tiny_strong), "weak_prompt": "empty"},
    )


def test_the_ensembles_reward_is_the_weighted_mean_of_its_pairs_rewards(tiny_strong, members):
    common = {"strong": str(tiny_strong), "cache": "none"}
    one, two = (DensityRatio(**common, **m) for m in members)
    spec = f"weak={members[1]['weak']},weak_prompt=empty"
    for variant in ("sum", "mean", "mean_diff"):
        ensemble = DensityRatio(**common, **members[0], extra_pairs=spec, pair_weights="3,1", variant=variant)
        got = ensemble.score(CONVERSATIONS, return_tokens=True)
        a, b = (DensityRatio(**common, **m, variant=variant).score(CONVERSATIONS) for m in members)
        for g, x, y in zip(got, a, b):
            assert g.reward == pytest.approx(0.75 * x.reward + 0.25 * y.reward, abs=1e-9)
            assert g.reward != pytest.approx(x.reward, abs=1e-6)  # the second pair does move it
            # the figures beside the reward are the first pair's; details name each pair's reward
            assert (g.strong_logprob, g.weak_logprob, g.weak_tokens) == (
                x.strong_logprob,
                x.weak_logprob,
                x.weak_tokens,
            )
            assert g.details["pair_rewards"] == pytest.approx([x.reward, y.reward], abs=1e-9)
    assert one.provenance["weak"] != two.provenance["weak"]
    prov = ensemble.provenance
    assert prov["pair_weights"] == [0.75, 0.25]
    assert [p["weak_prompt"] for p in prov["extra_pairs"]] == ["empty"]
    assert "extra_pairs" not in one.provenance  # a single pair's provenance (and resume keys) stay as they were


def test_a_model_two_pairs_share_is_loaded_and_run_once(tiny_strong, members):
    ensemble = DensityRatio(
        strong=str(tiny_strong), cache="none", **members[0], extra_pairs=f"weak={tiny_strong}/.,weak_prompt=empty"
    )
    # three readings, two models: the strong model (spelt another way the second time: models are matched once
    # resolved, so 'default' on the strong and the weak side stays two models) is the first pair's strong side
    # and the second pair's both sides
    assert len({id(s) for p in ensemble.pairs for s in (p.strong, p.weak)}) == 2
    assert ensemble.extra_pairs[0].strong is ensemble.strong is ensemble.extra_pairs[0].weak
    calls = []
    backend = ensemble.strong.backend
    real = backend.response_logprobs

    def counted(requests, **kw):  # a spy on the real backend: it still computes
        calls.append(len(requests))
        return real(requests, **kw)

    backend.response_logprobs = counted
    ensemble.score(CONVERSATIONS)
    # the strong model reads each response once with its prompt and once without (the second pair's weak side);
    # the second pair's strong side is the first pair's pass, not a third one
    assert sum(calls) == 2 * len(CONVERSATIONS)


def test_eval_with_extra_pairs_equals_the_ensemble_of_the_pairs_runs(tiny_strong, tiny_weak_fast, tmp_path):
    subsets = ["--subsets", "alpacaeval-easy,donotanswer,hep-go", "--sample", "6"]
    a, b, joint, combined = (tmp_path / n for n in ("a", "b", "joint", "combined"))
    assert run_cdr(*eval_command("mini", a, tiny_strong, tiny_weak_fast, *subsets)).returncode == 0
    done = run_cdr(*eval_command("mini", b, tiny_strong, tiny_strong, *subsets, "--weak-prompt", "empty"))
    assert done.returncode == 0, done.stderr
    extra = ["--extra-pairs", f"weak={tiny_strong},weak_prompt=empty", "--pair-weights", "1,2"]
    done = run_cdr(*eval_command("mini", joint, tiny_strong, tiny_weak_fast, *subsets, *extra))
    assert done.returncode == 0, done.stderr
    done = run_cdr("eval", "--ensemble", str(a), str(b), "--ensemble-weights", "1,2", "-o", str(combined))
    assert done.returncode == 0, done.stderr
    rows = [[json.loads(x) for x in (d / "scores.jsonl").read_text().splitlines()] for d in (joint, combined, a, b)]
    assert len(rows[0]) == len(rows[1]) >= 6
    for j, c, one, two in zip(*rows):
        assert (j["subset"], j["id"]) == (c["subset"], c["id"]) == (one["subset"], one["id"])
        for name, pair in j["rewards"].items():
            assert pair == pytest.approx(c["rewards"][name], abs=1e-9), name
        assert j["correct"] == c["correct"]
        # each pair's own rewards stay in the row: one run of several pairs answers for each of them too
        for member, alone in zip(j["pair_rewards"], (one, two), strict=True):
            assert member.keys() == {"sum", "mean", "mean_diff"}
            for name, pair in member.items():
                assert pair == pytest.approx(alone["rewards"][name], abs=1e-9), name
    results = json.loads((joint / "results.json").read_text())
    assert results["provenance"]["pair_weights"] == pytest.approx([1 / 3, 2 / 3])
    # the same command resumes (nothing to score again), and a changed weight is a different run
    again = run_cdr(*eval_command("mini", joint, tiny_strong, tiny_weak_fast, *subsets, *extra))
    assert again.returncode == 0 and "resumed after row 6" in again.stdout, again.stderr
    assert "0.33 x " in results["ref_model"] and "(no prompt)" in results["ref_model"]
    changed = run_cdr(*eval_command("mini", joint, tiny_strong, tiny_weak_fast, *subsets, "--extra-pairs", extra[1]))
    assert changed.returncode == 2 and "--overwrite" in changed.stderr


def test_score_and_annotate_take_extra_pairs(tiny_strong, tiny_weak_fast, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"messages": c} for c in CONVERSATIONS])
    base = ["--strong", str(tiny_strong), "--weak", str(tiny_weak_fast), "--cache", "none"]
    outs = {}
    for name, extra in {"a": [], "ens": ["--extra-pairs", f"weak={tiny_strong},weak_prompt=empty"]}.items():
        out = tmp_path / f"{name}.jsonl"
        done = run_cdr("score", str(data), "-o", str(out), *base, *extra)
        assert done.returncode == 0, done.stderr
        outs[name] = [json.loads(x) for x in out.read_text().splitlines()]
    b = DensityRatio(strong=str(tiny_strong), weak=str(tiny_strong), weak_prompt="empty", cache="none")
    for row_a, row_e, rb in zip(outs["a"], outs["ens"], b.score(CONVERSATIONS)):
        assert row_e["reward"] == pytest.approx((row_a["reward"] + rb.reward) / 2, abs=1e-9)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("weak", "pair 2: expected KEY=VALUE"),
        ("weak=x,variant=sum", "pair 2: 'variant' is the same for every pair"),
        ("weak_prompt=empty;cache=none", "pair 3: 'cache' is the same for every pair"),
        ("colour=blue", "pair 2: unknown reward option 'colour'"),
        ("weak_prompt=none-at-all", "pair 2: weak_prompt (--weak-prompt) must be one of full, empty"),
        ("token_ratio_clip=big", "token_ratio_clip must be a number"),
        ("exclude_eot=1", "unknown reward option 'exclude_eot'"),
    ],
)
def test_bad_extra_pairs_fail_in_one_line_naming_the_pair(value, message):
    with pytest.raises(CdrError, match=re.escape(message)) as info:
        RewardConfig.from_flat(extra_pairs=value)
    assert "\n" not in str(info.value) and "extra_pairs (--extra-pairs)" in str(info.value)


def test_pair_weights_are_checked():
    with pytest.raises(CdrError, match=r"pair_weights \(--pair-weights\) needs extra_pairs"):
        RewardConfig.from_flat(pair_weights="1,1")
    with pytest.raises(CdrError, match="needs 2 non-negative numbers"):
        RewardConfig.from_flat(extra_pairs="weak_prompt=empty", pair_weights="1,1,1")
    with pytest.raises(CdrError, match="pair_weights .* must be comma-separated numbers"):
        RewardConfig.from_flat(extra_pairs="weak_prompt=empty", pair_weights="one,two")
    config = RewardConfig.from_flat(extra_pairs="weak_prompt=empty ; weak_exit_layer=8", pair_weights="2,1,1")
    assert config.weights() == [0.5, 0.25, 0.25]
    assert [c.weak_prompt for c in config.pair_configs()] == ["empty", "full"]
    assert config.pair_configs()[1].weak_options.exit_layer == 8  # typed as the option takes it
    # YAML and Python give the same as a list of mappings
    assert parse_extra_pairs([{"weak_prompt": "empty"}]) == parse_extra_pairs("weak_prompt=empty")


def test_cli_errors_are_one_line(tiny_strong, tmp_path):
    done = run_cdr("eval", "mini", "-o", str(tmp_path / "x"), "--strong", str(tiny_strong), "--weak", str(tiny_strong),
                   "--extra-pairs", "weak_exit_layer=two")  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "weak_exit_layer must be a number (int), got 'two'" in done.stderr
    v2 = ["eval", "sample", "--benchmark", "rewardbench2", "-o", str(tmp_path / "y"), "--cache", "none"]
    done = run_cdr(*v2, "--strong", str(tiny_strong), "--weak", str(tiny_strong), "--extra-pairs", "weak_prompt=empty")
    assert done.returncode == 2 and "not supported with RewardBench 2" in done.stderr and "Traceback" not in done.stderr


def test_the_servers_view_without_end_of_turn_applies_to_every_pair(tiny_strong, members):
    ensemble = DensityRatio(
        strong=str(tiny_strong), cache="none", **members[0], extra_pairs=f"weak={tiny_strong},weak_prompt=empty"
    )
    view = ensemble.view(include_eot=False)
    assert [p.config.include_eot for p in view.pairs] == [False, False]
    assert [p.config.include_eot for p in ensemble.pairs] == [True, True]
    assert view.strong is ensemble.strong  # the same loaded models
    fresh = DensityRatio(
        strong=str(tiny_strong),
        cache="none",
        **members[0],
        extra_pairs=f"weak={tiny_strong},weak_prompt=empty",
        include_eot=False,
    )
    for a, b, whole in zip(view.score(CONVERSATIONS), fresh.score(CONVERSATIONS), ensemble.score(CONVERSATIONS)):
        assert a.reward == pytest.approx(b.reward, abs=1e-9)
        assert a.strong_tokens < whole.strong_tokens  # the end-of-turn tokens are left out


def test_the_service_serves_an_ensemble(tiny_strong, members):
    import httpx

    from conftest import running

    ensemble = DensityRatio(
        strong=str(tiny_strong), cache="none", **members[0], extra_pairs=f"weak={tiny_strong},weak_prompt=empty"
    )
    with running(ensemble) as url:
        body = httpx.post(f"{url}/v1/reward", json={"conversations": CONVERSATIONS}, timeout=60).json()
    offline = ensemble.score(CONVERSATIONS)
    assert [r["reward"] for r in body["results"]] == pytest.approx([r.reward for r in offline], rel=1e-6)
    assert body["provenance"]["extra_pairs"][0]["weak_prompt"] == "empty"
