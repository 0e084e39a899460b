"""The transformers backend on tiny random models: exact against a naive full-softmax scorer."""

import numpy as np
import pytest
import torch

from cdr.backends import BackendOptions, LogprobRequest
from cdr.backends.hf import TransformersBackend
from cdr.models import resolve_model


def naive_logprobs(model, request):
    """The textbook scorer: full forward, full-vocabulary log-softmax at every position."""
    ids = torch.tensor([request.token_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    targets = ids[0, request.response_start :]
    return logp[request.response_start - 1 : -1].gather(1, targets[:, None])[:, 0].double().numpy()


def requests_for(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n, start in lengths:
        out.append(LogprobRequest(tuple(int(t) for t in rng.integers(3, vocab, n)), start))
    return out


LENGTHS = [(40, 10), (7, 3), (25, 24), (60, 2), (13, 5)]


@pytest.mark.parametrize("which", ["tiny_strong", "tiny_weak"])
def test_response_only_head_matches_naive_full_softmax(which, request):
    backend = TransformersBackend(resolve_model(str(request.getfixturevalue(which))), BackendOptions())
    assert backend.response_head_only
    reqs = requests_for(backend.vocab_size, LENGTHS)
    got = backend.response_logprobs(reqs)
    for r, lp in zip(reqs, got):
        assert lp.shape == (len(r.token_ids) - r.response_start,)
        np.testing.assert_allclose(lp, naive_logprobs(backend.model, r), atol=1e-5)


def test_batched_equals_one_by_one(tiny_weak):
    big = TransformersBackend(resolve_model(str(tiny_weak)), BackendOptions(batch_tokens=100_000))
    reqs = requests_for(big.vocab_size, LENGTHS, seed=3)
    assert len(big._batches(reqs)) == 1
    batched = big.response_logprobs(reqs)
    single = [big.response_logprobs([r])[0] for r in reqs]
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_token_budget_batches_sorted_by_length(tiny_strong):
    backend = TransformersBackend(resolve_model(str(tiny_strong)), BackendOptions(batch_tokens=80))
    reqs = requests_for(backend.vocab_size, LENGTHS)
    batches = backend._batches(reqs)
    lengths = [[len(reqs[i].token_ids) for i in b] for b in batches]
    assert lengths[0][0] == 60  # longest first
    for b in lengths:
        assert len(b) * max(b) <= 80 or len(b) == 1
    flat = [n for b in lengths for n in b]
    assert flat == sorted(flat, reverse=True)
    progress = []
    backend.response_logprobs(reqs, on_progress=progress.append)
    assert sum(progress) == len(reqs)


def test_lm_head_sees_response_positions_only(tiny_weak, monkeypatch):
    """The memory pitfall: never a full-vocabulary projection of every position."""
    import cdr.backends.hf as hf

    monkeypatch.setitem(hf.TILES, "cpu", (32, 100))
    backend = TransformersBackend(resolve_model(str(tiny_weak)), BackendOptions(batch_tokens=100_000))
    tiles = []
    original = backend._logit_tile
    backend._logit_tile = lambda hidden, start, stop: (
        tiles.append((hidden.shape[0], start, stop)) or original(hidden, start, stop)
    )
    reqs = requests_for(backend.vocab_size, LENGTHS)
    got = backend.response_logprobs(reqs)
    responses = sum(len(r.token_ids) - r.response_start for r in reqs)
    slices = -(-backend.vocab_size // 100)
    assert sum(rows for rows, _, _ in tiles) == responses * slices  # every response position, once per slice
    assert max(rows for rows, _, _ in tiles) <= 32 and all(stop - start == 100 for _, start, stop in tiles)
    assert {start for _, start, _ in tiles} == set(range(0, backend.vocab_size, 100))  # the whole vocabulary
    for r, lp in zip(reqs, got):
        np.testing.assert_allclose(lp, naive_logprobs(backend.model, r), atol=1e-5)


def test_unknown_logit_postprocessing_falls_back_to_full_forward(tiny_strong):
    backend = TransformersBackend(resolve_model(str(tiny_strong)), BackendOptions())
    backend.softcap = 0.5  # pretend we misread the architecture: our head no longer matches the model's logits
    with pytest.warns(UserWarning, match="full forward"):
        assert not backend._head_path_matches_full_forward()
    backend.response_head_only = False
    reqs = requests_for(backend.vocab_size, LENGTHS[:2])
    for r, lp in zip(reqs, backend.response_logprobs(reqs)):
        np.testing.assert_allclose(lp, naive_logprobs(backend.model, r), atol=1e-5)


def test_max_length_from_config(tiny_strong):
    backend = TransformersBackend(resolve_model(str(tiny_strong)), BackendOptions())
    assert backend.max_length == 1024


@pytest.mark.parametrize("which", ["tiny_strong", "tiny_weak"])  # tiny_weak: gemma3 with a 16-token sliding window
def test_prompt_sharing_equals_scoring_each_response_alone(which, request):
    from cdr.backends.hf import MIN_SHARED_PROMPT

    path = str(request.getfixturevalue(which))
    shared = TransformersBackend(resolve_model(path), BackendOptions(batch_tokens=400))
    rng = np.random.default_rng(3)
    prompt = tuple(int(t) for t in rng.integers(3, shared.vocab_size, MIN_SHARED_PROMPT + 30))
    reqs = [
        LogprobRequest(prompt + tuple(int(t) for t in rng.integers(3, shared.vocab_size, n)), len(prompt))
        for n in (1, 9, 40, 17, 3)
    ]
    reqs.append(requests_for(shared.vocab_size, [(30, 5)])[0])  # a row of its own goes the usual way
    calls = []
    original = shared._score_shared
    shared._score_shared = lambda prefix, batch: calls.append(len(batch)) or original(prefix, batch)
    got = shared.response_logprobs(reqs)
    assert calls and sum(calls) == 5  # the five responses to one prompt went through the shared path
    for r, lp in zip(reqs, got):
        np.testing.assert_allclose(lp, naive_logprobs(shared.model, r), atol=1e-4)
