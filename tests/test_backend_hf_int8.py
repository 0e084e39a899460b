"""--dtype int8 on the transformers backend, on tiny random models: the body's linear layers in int8, the LM head
in float32; close to float32, independent of batching, recorded in the provenance and the cache key, and a
one-line error where it cannot run."""

import json

import numpy as np
import pytest
import torch

from cdr import DensityRatio
from cdr.backends import BackendOptions
from cdr.backends.hf import TransformersBackend
from cdr.errors import CdrError
from cdr.models import resolve_model
from conftest import cdr_in_process
from test_backend_hf import LENGTHS, requests_for

# How far int8 may move a log-prob here, in nats. Each weight is rounded to 1/254 of its output channel's largest
# magnitude and each activation to 1/127 of its row's (7-bit steps, as torch's x86 kernels use), so every linear
# output moves by well under 1% of its row's scale; the tiny random models' logits span about +-0.5 around
# -log(vocabulary), so a log-prob moves by a few 1e-3 at most. Measured: at most 1.5e-3 (llama), 2.5e-3 (gemma-3).
INT8_TOL = 1e-2


def load(path, **options):
    return TransformersBackend(resolve_model(str(path)), BackendOptions(device="cpu", **options))


@pytest.mark.parametrize("which", ["tiny_strong", "tiny_weak"])
def test_int8_logprobs_are_close_to_float32_and_the_head_stays_float32(which, request):
    path = request.getfixturevalue(which)
    exact, int8 = load(path, dtype="float32"), load(path, dtype="int8")
    assert exact.precision == "float32" and int8.precision == "int8"
    body_linears = sum(isinstance(m, torch.nn.Linear) for m in exact.decoder.modules())
    assert int8.int8_layers == body_linears > 0
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.decoder.modules())  # every one converted
    assert isinstance(int8.head, torch.nn.Linear) and int8.head.weight.dtype == torch.float32
    assert int8.response_head_only  # the head path still reproduces the (int8) model's own logits
    reqs = requests_for(exact.vocab_size, LENGTHS)
    diffs = np.concatenate([a - b for a, b in zip(int8.response_logprobs(reqs), exact.response_logprobs(reqs))])
    assert 0 < np.abs(diffs).max() < INT8_TOL  # int8 really ran, and stayed close


def test_int8_row_does_not_depend_on_its_batch(tiny_weak):
    """Each row is quantized on its own scale and the batch's range is pinned, so padding and neighbours do not
    change a response's log-probs: what the log-prob cache relies on."""
    backend = load(tiny_weak, dtype="int8", batch_tokens=100_000)
    reqs = requests_for(backend.vocab_size, LENGTHS, seed=3)
    assert len(backend._batches(reqs)) == 1
    batched = backend.response_logprobs(reqs)
    for r, lp in zip(reqs, batched):
        np.testing.assert_allclose(backend.response_logprobs([r])[0], lp, atol=1e-5)


def test_int8_is_in_the_provenance_and_the_cache_key(tmp_path, tiny_strong, tiny_weak):
    cache = str(tmp_path / "lp.sqlite")
    int8 = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), dtype="int8", cache=cache)
    exact = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), dtype="float32", cache=cache)
    assert int8.provenance["strong_precision"] == int8.provenance["weak_precision"] == "int8"
    assert exact.provenance["strong_precision"] == "float32"
    assert int8.strong.cache_key.endswith("|hf|int8") and exact.strong.cache_key.endswith("|hf|float32")
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]
    first = int8.score([conv])[0].reward
    # the float32 pair does not reuse the int8 numbers from the shared cache: it computes its own
    assert exact.strong.cache.get_many(exact.strong.cache_key, [_request(exact.strong, conv)]) == [None]
    second = exact.score([conv])[0].reward
    assert first != second and abs(first - second) < INT8_TOL
    assert int8.score([conv])[0].reward == first  # and int8 gets its own back


def _request(scorer, conv):
    from cdr.backends import LogprobRequest
    from cdr.conversation import Conversation

    span = scorer.span(Conversation.from_messages(conv), scorer.renderer, True)
    return LogprobRequest(span.token_ids, span.start)


def test_int8_in_the_output_columns(tmp_path, tiny_strong, tiny_weak):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n")
    out = tmp_path / "out.jsonl"
    args = ("--strong", str(tiny_strong), "--weak", str(tiny_weak), "--cache", "none", "--dtype", "int8")
    proc = cdr_in_process("score", str(src), "-o", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())
    assert row["cdr_strong_precision"] == row["cdr_weak_precision"] == "int8"


def test_int8_on_cuda_is_a_one_line_error(tmp_path, tiny_strong, tiny_weak):
    with pytest.raises(CdrError, match=r"^--dtype int8 runs on a CPU only .*use --dtype bfloat16 or float16$"):
        TransformersBackend(resolve_model(str(tiny_strong)), BackendOptions(device="cuda", dtype="int8"))
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n")
    args = ("--strong", str(tiny_strong), "--weak", str(tiny_weak), "--dtype", "int8", "--device", "cuda")
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "out.jsonl"), *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cdr: error: --dtype int8 runs on a CPU only" in proc.stderr
