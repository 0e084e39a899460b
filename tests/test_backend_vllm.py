"""vLLM offline backend: request building and parsing on vLLM's documented shapes.

vLLM cannot run here (no GPU wheel reaches the lent GPU machine, and this machine has no GPU), so the
engine itself is not exercised: these tests check what we send (token-id prompts, prompt_logprobs=0,
max_tokens=1, prefix caching off) and how we read what vLLM documents it returns.
"""

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdr.backends import BackendOptions, LogprobRequest, backend_class
from cdr.backends.vllm import VLLMBackend, pin_threads, prompt_token_logprobs
from cdr.config import RewardConfig
from cdr.errors import CdrError, ModelNotAvailable
from cdr.models import ModelSource


@dataclass
class Logprob:  # vllm.sequence.Logprob's documented fields
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def test_requests_are_token_ids_with_prompt_logprobs_and_one_token():
    prompts, params = VLLMBackend.build_requests([LogprobRequest((1, 2, 3), 2), LogprobRequest((4, 5), 1)])
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4, 5]}]
    assert params["prompt_logprobs"] == 0 and params["max_tokens"] == 1


def test_engine_turns_prefix_caching_off_and_passes_parallelism():
    source = ModelSource("my/model", "hub", "my/model", revision="abc")
    kwargs = VLLMBackend.engine_kwargs(source, BackendOptions(tensor_parallel_size=4, dtype="float16"))
    assert kwargs["enable_prefix_caching"] is False and kwargs["tensor_parallel_size"] == 4
    assert kwargs["model"] == "my/model" and kwargs["revision"] == "abc" and kwargs["dtype"] == "float16"
    assert kwargs["trust_remote_code"] is False


def test_offline_prompt_logprobs_looked_up_by_id():
    ids = (11, 22, 33, 44)
    table = [
        None,
        {99: Logprob(-0.1, 1), 22: Logprob(-2.0, 5)},  # the prompt token is not the top-1
        {33: Logprob(-0.5, 1)},
        {7: Logprob(-0.2, 1), 44: Logprob(-3.0, 9)},
    ]
    assert list(prompt_token_logprobs(table, ids, 2)) == [-0.5, -3.0]
    assert list(prompt_token_logprobs(table, ids, 1)) == [-2.0, -0.5, -3.0]
    with pytest.raises(CdrError, match="lacks the prompt's own token 44"):
        prompt_token_logprobs(table[:3] + [{7: Logprob(-0.2)}], ids, 1)
    with pytest.raises(CdrError, match="3 prompt log-probs for 4"):
        prompt_token_logprobs(table[:3], ids, 1)


def test_without_vllm_installed_the_error_says_how_to_get_it():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed")
    except ImportError:
        pass
    cls = backend_class("vllm")
    with pytest.raises(ModelNotAvailable, match=r"cdr-annotate\[vllm\]"):
        cls(ModelSource("m", "hub", "m/m"), BackendOptions())


def test_pin_threads_gives_the_calling_thread_the_engines_openmp_thread_count():
    """vLLM's CPU attention reads OpenMP's thread count (per thread) when it plans a step and in its kernel; a
    thread that has run no torch op yet reports the process default there, not torch's setting, and the kernel
    stopped the process ("2 vs. 1") under Ray. ``pin_threads`` gives the calling thread the engine's count."""
    import ctypes

    torch = pytest.importorskip("torch")
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        pytest.skip("needs /proc/self/maps (Linux)")
    gomp = sorted({line.split()[-1] for line in maps.splitlines() if "/libgomp" in line})
    if not gomp:
        pytest.skip("this torch is not built with GNU OpenMP")
    omp_threads = ctypes.CDLL(gomp[0]).omp_get_max_threads
    before = torch.get_num_threads()
    default = omp_threads()  # this thread's; a fresh thread starts from the process default instead
    wanted = 1 if default > 1 else 2
    seen: dict[str, int] = {}

    def fresh_thread() -> None:
        pin_threads(wanted)
        seen["openmp"], seen["torch"] = omp_threads(), torch.get_num_threads()

    try:
        thread = threading.Thread(target=fresh_thread)
        thread.start()
        thread.join()
    finally:
        pin_threads(before)
    assert seen == {"openmp": wanted, "torch": wanted}
    assert torch.get_num_threads() == before and omp_threads() == before


@pytest.mark.parametrize(
    "flat",
    [{"backend": "vllm"}, {"backend": "hf", "weak_backend": "vllm"}, {"backend": "vllm", "strong_backend": "hf"}],
)
def test_overlap_with_in_process_vllm_engines_is_refused_in_one_line(flat):
    # measured: two in-process engines stepping at once returned wrong log-probs (NaN among them)
    with pytest.raises(CdrError) as info:
        RewardConfig.from_flat({**flat, "overlap": True})
    message = str(info.value)
    assert "overlap (--overlap)" in message and "vllm_multiprocessing (--vllm-multiprocessing)" in message
    assert "\n" not in message
    RewardConfig.from_flat({**flat, "overlap": True, "vllm_multiprocessing": True})  # each engine in its own process
    RewardConfig.from_flat({**flat, "overlap": False})


def test_cli_refuses_overlap_with_the_vllm_backend_before_loading(tmp_path):
    from conftest import run_cdr, write_jsonl

    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}])
    proc = run_cdr("score", str(rows), "-o", str(tmp_path / "o.jsonl"), "--backend", "vllm", "--overlap", timeout=120)
    assert proc.returncode == 2 and "--vllm-multiprocessing" in proc.stderr and "--overlap" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_overlapping_engine_processes_get_cores_of_their_own(monkeypatch):
    # measured: with --overlap both engine processes bound their threads to core 0 and took turns on it (0.52x
    # the sequential speed on 2 cores, docs/benchmarks.md section 13); now the weak one gets the next cores
    from cdr.reward import overlap_cores

    flat = {"backend": "vllm", "overlap": True, "vllm_multiprocessing": True}
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    config = overlap_cores(RewardConfig.from_flat({**flat, "threads": 2}))
    assert (config.strong_options.vllm_cpu_cores, config.weak_options.vllm_cpu_cores) == ("0-1", "2-3")
    one_each = overlap_cores(RewardConfig.from_flat({**flat, "threads": 1}))
    assert (one_each.strong_options.vllm_cpu_cores, one_each.weak_options.vllm_cpu_cores) == ("0", "1")
    chosen = overlap_cores(RewardConfig.from_flat({**flat, "threads": 4, "weak_vllm_cpu_cores": "8-11"}))
    assert chosen.weak_options.vllm_cpu_cores == "8-11" and chosen.strong_options.vllm_cpu_cores is None
    too_few = overlap_cores(RewardConfig.from_flat({**flat, "threads": 3}))  # 6 threads on 4 cores: left alone
    assert too_few.weak_options.vllm_cpu_cores is None
    in_process = overlap_cores(RewardConfig.from_flat({"backend": "hf", "overlap": True, "threads": 1}))
    assert in_process.weak_options.vllm_cpu_cores is None
    # what each engine process is started with (the variables are read when it starts)
    for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(name, raising=False)
    assert VLLMBackend.set_environment(config.weak_options, "cpu")["VLLM_CPU_OMP_THREADS_BIND"] == "2-3"
    assert VLLMBackend.set_environment(config.strong_options, "cpu")["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in VLLMBackend.set_environment(config.weak_options, "cuda")
    with pytest.raises(CdrError, match="weak-vllm-cpu-cores.*e.g. 0-3"):
        RewardConfig.from_flat(weak_vllm_cpu_cores="first two")
