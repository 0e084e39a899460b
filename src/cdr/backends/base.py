"""The one contract every backend implements (in the spirit of lm-evaluation-harness's ``loglikelihood``).

Given token ids and the index where the response starts, return the log-probability of each response
token under the model. Rendering, tokenization and finding the response start happen once, outside the
backends (``cdr.span``), so every backend scores exactly the same tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from cdr.models import ModelSource


@dataclass(frozen=True)
class LogprobRequest:
    token_ids: tuple[int, ...]
    response_start: int


@dataclass
class BackendOptions:
    """Options shared by backends; each backend reads the ones it understands."""

    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda', 'cuda:1', ..."})
    dtype: str = field(default="auto", metadata={"help": "'auto' (float32 on CPU, bfloat16 on GPU), 'float32', 'bfloat16', 'float16'"})
    batch_tokens: int = field(default=8192, metadata={"help": "padded tokens per forward batch"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (default: all cores)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run model code from the hub (off unless asked)"})
    prompt_sharing: bool = field(default=True, metadata={"help": "run a prompt shared by several responses once and reuse its key/value cache"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm backend: GPUs per model"})
    vllm_kv_cache_gib: float | None = field(default=None, metadata={"help": "vllm backend: KV cache per model, GiB (default: 2 on a CPU; on a GPU, from vllm_memory_fraction)"})
    vllm_memory_fraction: float | None = field(default=None, metadata={"help": "vllm backend: vLLM's gpu_memory_utilization per model (default 0.45 on a GPU, for the two engines of the pair)"})
    vllm_compile: bool = field(default=False, metadata={"help": "vllm backend: let vLLM compile the model (torch.compile; minutes of start-up per model on a CPU) instead of running eagerly"})
    vllm_multiprocessing: bool = field(default=False, metadata={"help": "vllm backend: each engine in its own process, started with spawn (the calling script then needs an if __name__ == '__main__' guard); default: in this process"})
    # remote backends (openai)
    url: str | None = field(default=None, metadata={"help": "server base URL, e.g. http://127.0.0.1:8000/v1"})
    served_model: str | None = field(default=None, metadata={"help": "the model name the server knows (default: the model spec)"})
    api_key_env: str | None = field(default=None, metadata={"help": "environment variable holding the server's bearer token"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight at once"})
    timeout_s: float = field(default=120.0, metadata={"help": "per-request timeout"})
    retries: int = field(default=4, metadata={"help": "retries on connection errors, 429 and 5xx, with exponential backoff"})


class Backend(ABC):
    """One loaded model that scores response tokens."""

    name: str = "base"
    precision: str = "float32"  # part of the log-prob cache key: numbers from other precisions are not reused
    vocab_size: int | None = None  # rows of the output layer, when the backend knows them (else: the tokenizer's)
    commit_hash: str | None = None  # the commit a hub model's weights came from, when the backend knows it

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

    def next_token_top_logprobs(self, token_ids: Sequence[int], k: int,
                                last_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most likely next tokens at every position of one sequence (or only after the last one):
        (ids, log-probs), each of shape (positions, k), best first. Optional: it serves vLLM-style
        ``logprobs=k`` and one greedy token."""
        raise NotImplementedError(f"the {self.name} backend does not return top-k log-probs")
