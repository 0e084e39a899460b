"""The one contract every backend implements (in the spirit of lm-evaluation-harness's ``loglikelihood``).

Given token ids and the index where the response starts, return the log-probability of each response
token under the model. Rendering, tokenization and finding the response start happen once, outside the
backends (``cdr.span``), so every backend scores exactly the same tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cdr.models import ModelSource
from cdr.options import check, option


@dataclass(frozen=True)
class LogprobRequest:
    token_ids: tuple[int, ...]
    response_start: int


DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")


@dataclass
class BackendOptions:
    """How one model is loaded and run; each backend reads the options it understands. The single source of
    these options: ``RewardConfig`` nests one per model and the command line's flags are made from them."""

    device: str = option(
        "auto",
        help="auto, cpu, cuda or cuda:N",
        pattern=r"auto|cpu|cuda(:\d+)?|mps",
        expected="auto, cpu, cuda, cuda:N or mps",
    )
    dtype: str = option(
        "auto",
        choices=DTYPES,
        help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16, or int8 (hf backend on a CPU: the "
        "transformer body's linear layers in dynamic int8, the LM head and log-softmax in float32; changes the "
        "scores, see cdr doctor)",
    )
    batch_tokens: int = option(8192, minimum=1, help="padded tokens per forward batch")
    threads: int | None = option(
        None, minimum=1, help="CPU threads per model (default: all cores; half of them each with --overlap)"
    )
    trust_remote_code: bool = option(False, help="allow model code from the hub to run (off unless asked)")
    prompt_sharing: bool = option(
        True,
        flag="no-prompt-sharing",
        help="responses sharing a prompt of 64+ tokens run it once and reuse its key/value cache "
        "(transformers backend)",
        flag_help="run every response's prompt again (the plain path; for measuring prompt sharing)",
    )
    exit_layer: int | None = option(
        None,
        minimum=1,
        per_side=True,
        help="hf backend: read the {side} model after its first N decoder layers (then its final norm and LM "
        "head), as layer-contrast decoding does; with the strong model's name as --weak this makes a same-family "
        "weak model that shares the loaded weights (docs/method.md)",
    )
    tensor_parallel_size: int = option(1, minimum=1, help="vllm backend: GPUs per model")
    vllm_kv_cache_gib: float | None = option(
        None,
        above=0,
        help="vllm backend: KV cache per model in GiB (default: 2 on a CPU; on a GPU, from vllm_memory_fraction)",
    )
    vllm_memory_fraction: float | None = option(
        None,
        above=0,
        maximum=1.0,
        help="vllm backend: vLLM's gpu_memory_utilization per model (default on a GPU: 0.45, so the pair's two "
        "engines fit)",
    )
    vllm_compile: bool = option(
        False,
        help="vllm backend: let vLLM compile the models (torch.compile; minutes of "
        "start-up per model on a CPU) instead of running eagerly",
    )
    vllm_multiprocessing: bool = option(
        False,
        help="vllm backend: each engine in its own process, started with spawn (a calling script then needs an "
        "if __name__ == '__main__' guard; needed for --overlap); default: in this process",
    )
    vllm_cpu_cores: str | None = option(
        None,
        per_side=True,
        pattern=r"\d+(-\d+)?(,\d+(-\d+)?)*",
        expected="core numbers and ranges, e.g. 0-3 or 0,2,4-7",
        help="vllm backend on a CPU with --vllm-multiprocessing: the cores the {side} engine's threads are bound to "
        "(vLLM's VLLM_CPU_OMP_THREADS_BIND); default 0..threads-1, and with --overlap the weak engine on the cores "
        "after the strong engine's",
    )
    # remote backends (openai)
    url: str | None = option(
        None,
        per_side=True,
        help="openai backend: base URL of the server holding the {side} model (e.g. http://127.0.0.1:8000/v1)",
    )
    served_model: str | None = option(
        None, per_side=True, help="openai backend: the {side} model's name on its server (default: --{side})"
    )
    api_key_env: str | None = option(
        None, name="remote_api_key_env", help="openai backend: environment variable with the servers' bearer token"
    )
    concurrency: int = option(8, minimum=1, help="openai backend: requests in flight at once, per model")
    timeout_s: float = option(
        120.0, above=0, name="remote_timeout_s", help="openai backend: per-request timeout, seconds"
    )
    retries: int = option(
        4,
        minimum=0,
        name="remote_retries",
        help="openai backend: retries on connection errors, 429 and 5xx, with exponential backoff",
    )

    def __post_init__(self) -> None:
        check(self)


class Backend(ABC):
    """One loaded model that scores response tokens."""

    name: str = "base"
    precision: str = "float32"  # part of the log-prob cache key: numbers from other precisions are not reused
    vocab_size: int | None = None  # rows of the output layer, when the backend knows them (else: the tokenizer's)
    commit_hash: str | None = None  # the commit a hub model's weights came from, when the backend knows it
    # how the model is read when not as a whole (an early exit: "exit-layer-12"): with the precision, part of the
    # cache key and the provenance; None: the whole model
    reading: str | None = None

    def __init__(self, source: ModelSource, options: BackendOptions):
        self.source = source
        self.options = options

    @property
    @abstractmethod
    def max_length(self) -> int | None:
        """The longest sequence the model accepts, or None if unbounded."""

    @abstractmethod
    def response_logprobs(
        self, requests: Sequence[LogprobRequest], on_progress: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        """Per request, float64 log-probs of ``token_ids[response_start:]``, in the order given.

        ``on_progress(n)`` is called as requests finish, with the number just finished.
        """

    @property
    def has_top_logprobs(self) -> bool:
        return type(self).next_token_top_logprobs is not Backend.next_token_top_logprobs

    def next_token_top_logprobs(
        self, token_ids: Sequence[int], k: int, last_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most likely next tokens at every position of one sequence (or only after the last one):
        (ids, log-probs), each of shape (positions, k), best first. Optional: it serves vLLM-style
        ``logprobs=k`` and one greedy token."""
        raise NotImplementedError(f"the {self.name} backend does not return top-k log-probs")
