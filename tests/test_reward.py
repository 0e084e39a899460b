import json

import numpy as np
import pytest

from cdr import ConversationError, DensityRatio
from cdr.reward import combine

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def conv(answer):
    return PROMPT + [{"role": "assistant", "content": answer}]


def test_variants_on_hand_computed_numbers():
    # strong: -6 over 3 tokens, weak: -10 over 4 tokens
    assert combine("sum", -6.0, 3, -10.0, 4) == pytest.approx(4.0)
    assert combine("mean", -6.0, 3, -10.0, 4) == pytest.approx(4.0 / 3)
    assert combine("mean_diff", -6.0, 3, -10.0, 4) == pytest.approx(-2.0 - -2.5)
    arr = combine("sum", np.array([-1.0, -2.0]), np.array([1, 2]), np.array([-3.0, -1.0]), np.array([1, 1]))
    np.testing.assert_allclose(arr, [2.0, -1.0])
    with pytest.raises(ValueError):
        combine("median", 1, 1, 1, 1)


def test_reward_is_strong_minus_weak(tiny_pair):
    results = tiny_pair.score([conv("Paris."), conv("It is Berlin, I think.")], return_tokens=True)
    for r in results:
        assert r.error is None
        strong = sum(t["logprob"] for t in r.details["strong"])
        weak = sum(t["logprob"] for t in r.details["weak"])
        assert r.strong_logprob == pytest.approx(strong)
        assert r.weak_logprob == pytest.approx(weak)
        assert r.strong_tokens == len(r.details["strong"]) and r.weak_tokens == len(r.details["weak"])
        assert r.reward == pytest.approx(strong / r.strong_tokens - weak / r.weak_tokens)  # default: mean_diff
    assert "".join(t["token"] for t in results[0].details["strong"]) == "Paris.<|im_end|>\n"
    assert "".join(t["token"] for t in results[0].details["weak"]) == " Paris.<eos>"


@pytest.mark.parametrize("variant", ["sum", "mean", "mean_diff"])
def test_variant_option(tiny_strong, tiny_weak, tiny_pair, variant):
    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", variant=variant)
    (r,) = reward.score([conv("Paris.")])
    assert r.reward == pytest.approx(combine(variant, r.strong_logprob, r.strong_tokens, r.weak_logprob, r.weak_tokens))
    assert reward.provenance["variant"] == variant


def test_shared_rendering_changes_weak_side_only(tiny_strong, tiny_weak, tiny_pair):
    shared = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", rendering="shared")
    (own,) = tiny_pair.score([conv("Paris.")], return_tokens=True)
    (sh,) = shared.score([conv("Paris.")], return_tokens=True)
    assert sh.strong_logprob == pytest.approx(own.strong_logprob)
    assert "".join(t["token"] for t in sh.details["weak"]) == "Paris.<|im_end|>\n"
    assert shared.provenance["weak_template"] == "chat_template"
    assert shared.provenance["weak_template_sha256"] == shared.provenance["strong_template_sha256"]
    assert tiny_pair.provenance["weak_template"] == "plain"


def test_scores_do_not_depend_on_batch_company(tiny_pair):
    answers = ["Paris.", "Berlin is the capital of France. " * 5, "Paris, of course.", "I am not sure."]
    together = tiny_pair.score([conv(a) for a in answers])
    alone = [tiny_pair.score([conv(a)])[0] for a in answers]
    for a, b in zip(together, alone):
        assert a.reward == pytest.approx(b.reward, abs=1e-4)


def test_provenance_names_the_exact_pair(tiny_pair, tiny_strong):
    p = tiny_pair.provenance
    assert p["strong"] == str(tiny_strong)
    assert len(p["strong_sha256"]) == 64 and len(p["weak_sha256"]) == 64
    assert p["strong_sha256"] != p["weak_sha256"]
    assert {
        "rendering",
        "strong_template_sha256",
        "weak_template_sha256",
        "variant",
        "cdr_version",
        "include_eot",
    } <= set(p)
    json.dumps(p)


def test_exclude_eot(tiny_strong, tiny_weak):
    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", include_eot=False)
    (r,) = reward.score([conv("Paris.")], return_tokens=True)
    assert "".join(t["token"] for t in r.details["strong"]) == "Paris."
    assert reward.provenance["include_eot"] is False


def test_unscorable_row_is_reported_not_guessed(tiny_strong, tiny_weak):
    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", max_length=20)
    results = reward.score([conv("Paris."), conv("word " * 100)])
    assert results[0].error is not None and "fills the model's context" in results[0].error  # the prompt alone
    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", max_length=60)
    ok, long = reward.score([conv("Paris."), conv("word " * 100)])
    assert ok.error is None and not ok.truncated
    assert long.error is None and long.truncated and long.reward is not None


def test_bad_conversation_names_its_index(tiny_pair):
    with pytest.raises(ConversationError) as info:
        tiny_pair.score([conv("Paris."), [{"role": "user", "content": "hi"}]])
    assert info.value.field == "conversations[1][0].role"


def test_overlap_scores_both_models_at_once_with_the_same_numbers(tiny_strong, tiny_weak, tiny_pair):
    import os

    import torch

    from cdr.reward import as_conversations

    threads = torch.get_num_threads()
    try:
        overlapped = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", overlap=True)
        assert overlapped.config.strong_options.threads == max(1, (os.cpu_count() or 2) // 2)
        convs = [conv(a) for a in ["Paris.", "Berlin is the capital of France. " * 5, "Paris, of course."]]
        done = []
        pair = overlapped.model_logprobs(as_conversations(convs), on_progress=done.append)
        assert sum(done) == 2 * len(convs)  # both models' progress, each response once per model
        expected = tiny_pair.score(convs)
        assert [x.total for x in pair.strong] == pytest.approx([r.strong_logprob for r in expected], abs=1e-4)
        assert [x.total for x in pair.weak] == pytest.approx([r.weak_logprob for r in expected], abs=1e-4)
        assert [r.reward for r in overlapped.score(convs)] == pytest.approx([r.reward for r in expected], abs=1e-4)
    finally:
        torch.set_num_threads(threads)


def test_tokenizer_loaded_once_per_process_and_reloaded_when_its_files_change(
    tmp_path, tiny_strong, tiny_weak, smol_tokenizer
):
    from conftest import build_tiny_llama

    a = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none")
    b = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none")
    assert a.weak.tokenizer is b.weak.tokenizer and a.strong.tokenizer is b.strong.tokenizer
    path = build_tiny_llama(smol_tokenizer, tmp_path / "m", seed=5)
    first = DensityRatio(strong=str(path), weak=str(tiny_weak), cache="none").strong.tokenizer
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["model_max_length"] = 77  # same directory, different files: a different tokenizer
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    second = DensityRatio(strong=str(path), weak=str(tiny_weak), cache="none").strong.tokenizer
    assert second is not first and second.model_max_length == 77


def test_token_floor_raises_each_low_token_logprob_before_the_variant(tiny_strong, tiny_weak, tiny_pair):
    """#22, robust aggregation: with --token-floor F a token counts as at least -F in each model."""
    from cdr.errors import CdrError

    convs = [conv("Paris."), conv("It is Berlin, I think."), conv("Lyon, or maybe Marseille; I am not sure.")]
    exact = tiny_pair.score(convs, return_tokens=True)
    lps = [t["logprob"] for r in exact for role in ("strong", "weak") for t in r.details[role]]
    floor = float(-np.median(lps))  # half the tokens lie below -floor: the test fails if the floor is not applied
    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", token_floor=floor)
    got = reward.score(convs, return_tokens=True)
    for e, g in zip(exact, got):
        strong = [max(t["logprob"], -floor) for t in e.details["strong"]]
        weak = [max(t["logprob"], -floor) for t in e.details["weak"]]
        assert g.strong_logprob == pytest.approx(sum(strong)) and g.weak_logprob == pytest.approx(sum(weak))
        assert g.reward == pytest.approx(combine("mean_diff", sum(strong), len(strong), sum(weak), len(weak)))
        assert [t["logprob"] for t in g.details["strong"]] == pytest.approx(strong)
    assert any(g.strong_logprob != pytest.approx(e.strong_logprob) for e, g in zip(exact, got))
    assert reward.provenance["token_floor"] == floor and "token_floor" not in tiny_pair.provenance
    with pytest.raises(CdrError, match=r"token_floor \(--token-floor\) must be"):
        DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", token_floor=0)
