"""Weak models made from the strong model itself (#22, idea 1).

--weak-exit-layer / --strong-exit-layer: a model read after its first N decoder layers, through its final norm and
LM head, as layer-contrast decoding does; checked against the model's own hidden states, on a llama and a gemma-3
(local attention layers, logit soft-capping). --weak-prompt empty: the weak model reads the response without the
prompt."""

import numpy as np
import pytest
import torch

from cdr import DensityRatio
from cdr.backends import BackendOptions, LogprobRequest
from cdr.backends.hf import TransformersBackend
from cdr.conversation import Conversation, Message
from cdr.errors import CdrError
from cdr.models import resolve_model
from conftest import build_tiny_gemma3, build_tiny_llama, write_jsonl
from conftest import cdr_in_process as run_cdr


@pytest.fixture(scope="module")
def four_layer_models(tmp_path_factory, smol_tokenizer, gemma_tokenizer):
    root = tmp_path_factory.mktemp("four_layers")
    return {
        "llama": build_tiny_llama(smol_tokenizer, root / "llama", seed=5, num_hidden_layers=4),
        "gemma3": build_tiny_gemma3(gemma_tokenizer, root / "gemma3", seed=6, num_hidden_layers=4),
    }


def readout_at_layer(model, request: LogprobRequest, layer: int) -> np.ndarray:
    """The reference: the full model's hidden state after ``layer`` layers, through its final norm and LM head
    (with gemma's soft-capping), full-vocabulary log-softmax; after the last layer, the model's own logits."""
    ids = torch.tensor([request.token_ids])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        if layer < model.config.num_hidden_layers:
            logits = model.get_output_embeddings()(model.get_decoder().norm(out.hidden_states[layer][0])).float()
            cap = getattr(model.config, "final_logit_softcapping", None)
            if cap:
                logits = torch.tanh(logits / cap) * cap
        else:
            logits = out.logits[0].float()
        logp = logits.log_softmax(-1)
    targets = ids[0, request.response_start :]
    return logp[request.response_start - 1 : -1].gather(1, targets[:, None])[:, 0].double().numpy()


def requests(vocab: int) -> list[LogprobRequest]:
    rng = np.random.default_rng(0)
    prompt = tuple(int(t) for t in rng.integers(3, vocab, 70))  # >= 64 tokens, 3 responses: the shared-prompt path
    shared = [LogprobRequest(prompt + tuple(int(t) for t in rng.integers(3, vocab, n)), 70) for n in (5, 9, 12)]
    alone = [LogprobRequest(tuple(int(t) for t in rng.integers(3, vocab, n)), s) for n, s in ((30, 10), (8, 2))]
    return shared + alone


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_exit_layer_equals_the_models_own_hidden_state_through_norm_and_head(four_layer_models, arch, layer):
    source = resolve_model(str(four_layer_models[arch]))
    whole = TransformersBackend(source, BackendOptions())
    exited = TransformersBackend(source, BackendOptions(exit_layer=layer))
    assert exited.reading == f"exit-layer-{layer}" and whole.reading is None
    assert exited.model is whole.model  # the weights are loaded once and shared
    reqs = requests(whole.vocab_size)
    got = exited.response_logprobs(reqs)
    for request, lp in zip(reqs, got):
        np.testing.assert_allclose(lp, readout_at_layer(whole.model, request, layer), atol=2e-5)
    # and the whole model is untouched by the early reading of it
    for request, lp in zip(reqs, whole.response_logprobs(reqs)):
        np.testing.assert_allclose(lp, readout_at_layer(whole.model, request, 4), atol=2e-5)
        assert not np.allclose(lp, got[reqs.index(request)], atol=1e-3)


def test_exit_layer_outside_the_model_is_refused_in_one_line(four_layer_models):
    source = resolve_model(str(four_layer_models["llama"]))
    for layer in (4, 9):
        with pytest.raises(CdrError, match=rf"exit_layer {layer}: .* has 4 decoder layers; expected 1 to 3$"):
            TransformersBackend(source, BackendOptions(exit_layer=layer))
    with pytest.raises(CdrError, match=r"exit_layer \(--strong-exit-layer or --weak-exit-layer\) must be a whole"):
        BackendOptions(exit_layer=0)


def test_exit_layer_needs_the_hf_backend():
    with pytest.raises(CdrError, match=r"^weak_exit_layer \(--weak-exit-layer\) needs the hf backend .* 'llamacpp'"):
        DensityRatio(weak_exit_layer=3, weak_backend="llamacpp")


def test_same_model_early_exit_pair_caches_each_reading_apart(four_layer_models, tmp_path):
    """The strong model and its own early reading share one cache file: their entries must not mix."""
    model = str(four_layer_models["llama"])
    cache = str(tmp_path / "lp.sqlite")
    conversation = [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven is prime."}]
    pair = DensityRatio(strong=model, weak=model, weak_exit_layer=2, cache=cache)
    assert pair.weak.backend.model is pair.strong.backend.model
    assert pair.weak.cache_key == pair.strong.cache_key + "|exit-layer-2"
    first = pair.score([conversation])[0]
    assert first.reward != 0 and first.strong_tokens == first.weak_tokens
    again = DensityRatio(strong=model, weak=model, weak_exit_layer=2, cache=cache).score([conversation])[0]
    assert again.reward == first.reward
    whole = DensityRatio(strong=model, weak=model, cache=cache).score([conversation])[0]
    assert whole.reward == 0  # the same model read whole on both sides, from the same cache
    assert pair.provenance["weak_exit_layer"] == 2 and "strong_exit_layer" not in pair.provenance
    assert "weak_exit_layer" not in DensityRatio(strong=model, weak=model, cache="none").provenance


def test_cli_exit_layer_errors_are_one_line(four_layer_models, tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Hi", "response": "Hello"}])
    model = str(four_layer_models["llama"])
    for flag, value, says in [
        ("--weak-exit-layer", "7", "weak_exit_layer 7 (--weak-exit-layer): "),
        ("--weak-exit-layer", "0", "must be a whole number >= 1"),
    ]:
        done = run_cdr("score", str(rows), "-o", str(tmp_path / "out.jsonl"), "--strong", model, "--weak", model,
                       flag, value, "--cache", "none")  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and "Traceback" not in done.stderr


def test_weak_prompt_empty_scores_the_response_after_an_empty_user_turn(tiny_strong, tiny_weak, tiny_pair):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven is prime."},
    ]
    blind = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", weak_prompt="empty")
    got = blind.score([conversation])[0]
    usual = tiny_pair.score([conversation])[0]
    assert got.strong_logprob == usual.strong_logprob  # the strong side is untouched
    alone = Conversation((Message("user", ""), Message("assistant", "Seven is prime.")))
    weak_alone = tiny_pair.weak.logprobs([alone], tiny_pair.weak_renderer, include_eot=True)[0]
    assert got.weak_logprob == pytest.approx(weak_alone.total, abs=1e-9)
    assert got.weak_tokens == weak_alone.n_tokens and got.weak_logprob != usual.weak_logprob
    assert blind.provenance["weak_prompt"] == "empty" and "weak_prompt" not in tiny_pair.provenance


def test_weak_prompt_is_checked():
    with pytest.raises(CdrError, match=r"weak_prompt \(--weak-prompt\) must be one of full, empty, got 'none'"):
        DensityRatio(weak_prompt="none")


def test_token_ratio_clip_clips_each_tokens_log_ratio_before_averaging(tiny_strong):
    """The strong model over its own early reading reads the same tokens: the reward with a clip is the mean of
    the clipped per-token ratios, computed here from the unclipped per-token log-probs."""
    conversation = [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven, or 11."}]
    model = str(tiny_strong)
    plain = DensityRatio(strong=model, weak=model, weak_exit_layer=1, cache="none")
    tokens = plain.score([conversation], return_tokens=True)[0].details
    ratio = np.array([s["logprob"] - w["logprob"] for s, w in zip(tokens["strong"], tokens["weak"])])
    clip = float(np.quantile(np.abs(ratio), 0.5))  # half the tokens get clipped
    assert (np.abs(ratio) > clip).any()
    clipped = DensityRatio(strong=model, weak=model, weak_exit_layer=1, cache="none", token_ratio_clip=clip)
    got = clipped.score([conversation])[0]
    assert got.reward == pytest.approx(float(np.clip(ratio, -clip, clip).mean()), abs=1e-9)
    assert got.strong_logprob == pytest.approx(sum(s["logprob"] for s in tokens["strong"]), abs=1e-9)
    assert clipped.provenance["token_ratio_clip"] == clip and "token_ratio_clip" not in plain.provenance


def test_token_ratio_winsor_bounds_each_responses_ratios_by_its_own_quantiles(tiny_strong):
    conversation = [
        {"role": "user", "content": "Count to ten."},
        {"role": "assistant", "content": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10."},
    ]
    model = str(tiny_strong)
    plain = DensityRatio(strong=model, weak=model, weak_exit_layer=1, cache="none")
    tokens = plain.score([conversation], return_tokens=True)[0].details
    ratio = np.array([s["logprob"] - w["logprob"] for s, w in zip(tokens["strong"], tokens["weak"])])
    low, high = np.quantile(ratio, [0.2, 0.8])
    assert ((ratio < low) | (ratio > high)).sum() >= 2
    winsorized = DensityRatio(strong=model, weak=model, weak_exit_layer=1, cache="none", token_ratio_winsor=0.2)
    got = winsorized.score([conversation])[0]
    assert got.reward == pytest.approx(float(np.clip(ratio, low, high).mean()), abs=1e-9)
    assert winsorized.provenance["token_ratio_winsor"] == 0.2
    with pytest.raises(CdrError, match=r"token_ratio_winsor \(--token-ratio-winsor\) must be in \(0, 0.49\]"):
        DensityRatio(strong=model, weak=model, cache="none", token_ratio_winsor=0.5)


def test_token_ratio_clip_refuses_a_pair_with_two_tokenizers(tiny_strong, tiny_weak):
    with pytest.raises(CdrError, match=r"^token_ratio_clip \(--token-ratio-clip\) needs a pair that reads"):
        DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", token_ratio_clip=2.0)
    with pytest.raises(CdrError, match=r"^token_ratio_winsor \(--token-ratio-winsor\) needs a pair that reads"):
        DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", token_ratio_winsor=0.1)


def test_token_ratio_clip_marks_a_row_read_as_different_tokens_unscorable():
    from cdr.reward import ResponseLogprobs, ratio_clipped
    from cdr.span import Unscorable

    def side(ids, lps):
        return ResponseLogprobs(tuple(ids), np.array(lps, dtype=float), False, "prefix")

    strong = [side([1, 2], [-1.0, -2.0]), side([1, 2], [-1.0, -9.0])]
    weak = [side([1, 3], [-1.0, -2.0]), side([1, 2], [-1.5, -1.0])]
    out = ratio_clipped(strong, weak, 3.0)
    assert isinstance(out[0], Unscorable) and "different tokens" in str(out[0])
    np.testing.assert_allclose(out[1].logprobs, [-1.5, -6.0])  # ratios 0.5 and -8 -> 0.5 and -3


def test_an_exit_layer_stays_with_its_side():
    """A router's model or a policy shares the strong side's options, but is never read early because the strong
    model is."""
    from cdr.config import RewardConfig

    config = RewardConfig.from_flat(strong_exit_layer=5, threads=3)
    assert config.options_for("strong").exit_layer == 5 and config.options_for("weak").exit_layer is None
    for role in ("router", "policy"):
        assert config.options_for(role).exit_layer is None and config.options_for(role).threads == 3
