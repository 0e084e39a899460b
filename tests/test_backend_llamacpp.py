"""llama.cpp in process on the packaged GGUF files, against the transformers backend on the same files."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from cdr import Conversation  # noqa: E402
from cdr.backends import BackendOptions, LogprobRequest  # noqa: E402
from cdr.backends.llamacpp import LlamaCppBackend  # noqa: E402
from cdr.config import RewardConfig  # noqa: E402
from cdr.errors import CdrError  # noqa: E402
from cdr.models import resolve_model  # noqa: E402
from cdr.reward import ModelScorer  # noqa: E402

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France? Answer in one sentence."
ANSWERS = [
    "The capital of France is Paris.",
    "Paris.",
    "The capital of France is Berlin, a city on the Seine.",
    "I think it might be Lyon, but I am not sure.",
    "Paris is the capital and largest city of France.",
]


@pytest.fixture(scope="module")
def smol_scorers():
    config = RewardConfig(cache="none")
    source = resolve_model("smollm2-135m-instruct")
    return ModelScorer(source, "hf", config), ModelScorer(source, "llamacpp", config)


def requests_for(scorer):
    spans = [scorer.span(Conversation.from_prompt_response(QUESTION, a), scorer.renderer, True) for a in ANSWERS]
    return [LogprobRequest(s.token_ids, s.start) for s in spans]


def test_llamacpp_agrees_with_transformers_on_the_same_gguf(smol_scorers):
    hf, cpp = smol_scorers
    requests = requests_for(hf)
    a = [x.sum() for x in hf.backend.response_logprobs(requests)]
    b = [x.sum() for x in cpp.backend.response_logprobs(requests)]
    assert np.corrcoef(a, b)[0, 1] > 0.999
    n = sum(len(r.token_ids) - r.response_start for r in requests)
    assert np.abs(np.subtract(a, b)).sum() / n < 0.05  # nats per token: quantized kernels vs de-quantized weights
    assert np.argsort(a).tolist() == np.argsort(b).tolist()  # same ranking of the answers


def test_prompt_prefix_reuse_equals_evaluating_from_scratch(smol_scorers):
    _, cpp = smol_scorers
    requests = requests_for(cpp)
    reused = cpp.backend.response_logprobs(requests)
    cpp.backend.reuse_prefix = False
    try:
        fresh = cpp.backend.response_logprobs(requests)
    finally:
        cpp.backend.reuse_prefix = True
    for x, y in zip(reused, fresh):
        np.testing.assert_allclose(x, y, atol=2e-3)


def test_context_grows_for_a_longer_sequence(smol_scorers):
    _, cpp = smol_scorers
    backend = cpp.backend
    before = backend.n_ctx
    long_ids = tuple([1] + [28] * (before + 40))
    out = backend.response_logprobs([LogprobRequest(long_ids, len(long_ids) - 3)])
    assert backend.n_ctx > before and len(out[0]) == 3 and np.isfinite(out[0]).all()


def test_needs_a_gguf_file(tiny_strong):
    with pytest.raises(CdrError, match="needs a GGUF file"):
        LlamaCppBackend(resolve_model(str(tiny_strong)), BackendOptions())


def test_top_logprobs_contain_the_greedy_token_and_match_response_logprobs(smol_scorers):
    _, cpp = smol_scorers
    ids = requests_for(cpp)[0].token_ids
    top_ids, top_lps = cpp.backend.next_token_top_logprobs(ids, 3)
    assert top_ids.shape == (len(ids), 3) and (np.diff(top_lps, axis=1) <= 0).all()
    own = cpp.backend.response_logprobs([LogprobRequest(ids, 1)])[0]
    assert (own <= top_lps[:-1, 0] + 1e-6).all()  # no prompt token beats the most likely one
    last_ids, _ = cpp.backend.next_token_top_logprobs(ids, 1, last_only=True)
    assert last_ids.shape == (1, 1) and last_ids[0, 0] == top_ids[-1, 0]


def test_no_weight_repacking_on_amx_cpus_and_the_default_params_restored():
    # llama.cpp's AMX repacking crashed the first decode (SIGSEGV) on a Xeon with amx_int8 (llama.cpp#20824); the
    # whole llamacpp test file then died there. Where the CPU has AMX, cdr keeps the weights in plain buffers.
    import llama_cpp.llama as llama_module

    from cdr.backends.llamacpp import model_params, repack_ok

    assert repack_ok(frozenset({"avx2", "avx512f", "avx512_vnni"})) and repack_ok(None)
    assert not repack_ok(frozenset({"avx512f", "amx_int8", "amx_tile"}))
    default = llama_module.llama_cpp.llama_model_default_params
    with model_params(use_extra_bufts=False):
        assert llama_module.llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert llama_module.llama_cpp.llama_model_default_params is default
    assert default().use_extra_bufts is True
    with pytest.raises(RuntimeError), model_params(use_extra_bufts=False):
        raise RuntimeError("a failed load")
    assert llama_module.llama_cpp.llama_model_default_params is default
