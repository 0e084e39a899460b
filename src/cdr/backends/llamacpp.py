"""llama.cpp in process (extra ``[llamacpp]``): a GGUF file scored with ``eval`` + ``scores``.

Why not ``create_completion(echo=True, logprobs=...)``: it re-tokenizes text (the response boundary
would move) and returns top-k dicts keyed by token strings. Instead the exact token ids are evaluated
with ``logits_all=True`` and the log-softmax of the rows that predict response tokens is taken here, with
torch's multi-threaded logsumexp (a plain numpy log-softmax over gemma's 262,144-word vocabulary took
29 % of the time). Requests are sorted so that the responses of one prompt follow each other, and the
prompt evaluated for the first is kept in the KV cache for the next (only the new suffix is evaluated).
The context is sized to the longest sequence seen, and grows when a longer one comes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence

import numpy as np

from cdr.backends.base import Backend, BackendOptions, LogprobRequest
from cdr.cpu import cpu_flags
from cdr.errors import CdrError, ModelNotAvailable
from cdr.models import ModelSource

CONTEXT_STEP = 512
# llama.cpp repacks weights into "extra buffer types" where the CPU has a kernel for them; its AMX one crashed
# (SIGSEGV in the first decode, llama-cpp-python 0.3.36, SmolLM2's Q4_1 file) on a Xeon with amx_int8: the
# machine-dependent crash of ggml-org/llama.cpp#20824. On such CPUs the weights stay in llama.cpp's plain CPU
# buffers (use_extra_bufts off), which scored the same file without error.
NO_REPACK_CPU_FLAGS = ("amx_int8", "amx_bf16", "amx_tile")
_PARAMS_LOCK = threading.Lock()


def repack_ok(flags: frozenset[str] | None) -> bool:
    """Whether llama.cpp may repack weights into its extra buffer types on a CPU with these flags."""
    return not (flags and any(f in flags for f in NO_REPACK_CPU_FLAGS))


@contextlib.contextmanager
def model_params(**fields):
    """Set llama_model_params fields that llama_cpp.Llama() has no keyword for, while a Llama is built: Llama
    takes its params from llama_model_default_params(), so that is wrapped for the duration (under a lock)."""
    import llama_cpp.llama as llama_module

    with _PARAMS_LOCK:
        default = llama_module.llama_cpp.llama_model_default_params

        def params():
            p = default()
            for name, value in fields.items():
                setattr(p, name, value)
            return p

        llama_module.llama_cpp.llama_model_default_params = params
        try:
            yield
        finally:
            llama_module.llama_cpp.llama_model_default_params = default


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LlamaCppBackend(Backend):
    name = "llamacpp"
    precision = "gguf"  # the file's own quantization, computed by llama.cpp

    def __init__(self, source: ModelSource, options: BackendOptions):
        super().__init__(source, options)
        if source.kind != "gguf":
            raise CdrError(f"the llamacpp backend needs a GGUF file; '{source.name}' is a {source.kind} model")
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise ModelNotAvailable(
                "the llamacpp backend needs llama-cpp-python (built from source, 4 to 6 minutes): "
                "pip install 'cdr-annotate[llamacpp]'"
            ) from None
        self.llm = None
        self.n_ctx = 0
        self.evaluated: list[int] = []
        self.reuse_prefix = True
        probe = self._open(CONTEXT_STEP)
        self.vocab_size = probe.n_vocab()
        self.train_ctx = probe._model.n_ctx_train()

    def _open(self, n_ctx: int):
        from llama_cpp import Llama

        self.llm = None  # free the old context first
        fields = {} if repack_ok(cpu_flags()) else {"use_extra_bufts": False}
        with model_params(**fields):
            self.llm = Llama(
                model_path=self.source.path,
                n_ctx=n_ctx,
                n_batch=min(n_ctx, 512),
                logits_all=True,
                n_threads=self.options.threads,
                verbose=False,
            )
        self.n_ctx = n_ctx
        self.evaluated = []
        return self.llm

    @property
    def max_length(self) -> int | None:
        return self.train_ctx

    def _fit_context(self, length: int) -> None:
        if length > self.n_ctx:
            self._open(min(self.train_ctx, -(-length // CONTEXT_STEP) * CONTEXT_STEP))

    def _evaluate(self, ids: list[int]) -> None:
        """Make the context hold ``ids`` with logits for every position, evaluating only the new suffix."""
        llm = self.llm
        keep = common_prefix(self.evaluated, ids) if self.reuse_prefix else 0
        keep = min(keep, len(ids) - 1)  # always evaluate at least the last token
        if keep == 0:
            llm.reset()
        else:
            llm.n_tokens = keep
            self._drop_cache_after(keep)
        llm.eval(ids[keep:])
        self.evaluated = list(ids)

    def _drop_cache_after(self, n: int) -> None:
        ctx = self.llm._ctx
        for name in ("memory_seq_rm", "kv_cache_seq_rm"):  # renamed across llama-cpp-python versions
            if hasattr(ctx, name):
                getattr(ctx, name)(-1, n, -1)
                return
        self.reuse_prefix = False  # cannot trim the cache: evaluate every sequence from scratch
        self.llm.reset()
        self.llm.n_tokens = 0

    def response_logprobs(
        self, requests: Sequence[LogprobRequest], on_progress: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        import torch

        if not requests:
            return []
        self._fit_context(max(len(r.token_ids) for r in requests))
        order = sorted(range(len(requests)), key=lambda i: requests[i].token_ids)  # shared prompts side by side
        out: list[np.ndarray | None] = [None] * len(requests)
        for i in order:
            r = requests[i]
            ids = list(r.token_ids)
            if len(ids) > self.n_ctx:
                raise CdrError(f"a sequence of {len(ids)} tokens exceeds the model's context of {self.n_ctx}")
            self._evaluate(ids)
            rows = torch.from_numpy(np.ascontiguousarray(self.llm.scores[r.response_start - 1 : len(ids) - 1]))
            target = torch.tensor(ids[r.response_start :])
            picked = rows.gather(1, target[:, None])[:, 0].double()
            out[i] = (picked - torch.logsumexp(rows, dim=-1).double()).numpy()
            if on_progress:
                on_progress(1)
        return out  # type: ignore[return-value]

    def next_token_top_logprobs(
        self, token_ids: Sequence[int], k: int, last_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        ids = list(token_ids)
        self._fit_context(len(ids))
        self._evaluate(ids)
        first = len(ids) - 1 if last_only else 0
        rows = torch.from_numpy(np.ascontiguousarray(self.llm.scores[first : len(ids)]))
        values, indices = (rows - torch.logsumexp(rows, dim=-1, keepdim=True)).topk(k, dim=-1)
        return indices.numpy(), values.double().numpy()
