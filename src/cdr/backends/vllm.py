"""vLLM offline backend (extra ``[vllm]``, GPU): prompt log-probs from ``LLM.generate``.

Token-id prompts (``{"prompt_token_ids": ids}``), ``SamplingParams(max_tokens=1, prompt_logprobs=0)``:
vLLM returns, per prompt, ``prompt_logprobs``: None for position 0, then a dict per position mapping
token id -> Logprob holding the prompt's own token plus the top-k, so the token is looked up by id,
never by position in the dict. Prefix caching is turned off: prompt log-probs bypass it or come out
nondeterministic with it. Not run here (no GPU wheel can reach the lent GPU machine): only the request
building and the parsing are tested, on vLLM's documented shapes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from cdr.backends.base import Backend, BackendOptions, LogprobRequest
from cdr.errors import CdrError, ModelNotAvailable
from cdr.models import ModelSource, converted_dir


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


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, source: ModelSource, options: BackendOptions):
        super().__init__(source, options)
        try:
            from vllm import LLM
        except ImportError:
            raise ModelNotAvailable("the vllm backend needs vLLM (a GPU machine): pip install 'cdr-annotate[vllm]'") from None
        kwargs = self.engine_kwargs(source, options)
        self.llm = LLM(**kwargs)
        self.precision = str(kwargs["dtype"])
        self._max_length = self.llm.llm_engine.model_config.max_model_len

    @staticmethod
    def engine_kwargs(source: ModelSource, options: BackendOptions) -> dict[str, Any]:
        path = str(converted_dir(source, "model")) if source.kind == "gguf" else source.path
        kwargs: dict[str, Any] = {
            "model": path,
            "tokenizer": path,
            "dtype": options.dtype if options.dtype != "auto" else "bfloat16",
            "tensor_parallel_size": options.tensor_parallel_size,
            "enable_prefix_caching": False,
            "trust_remote_code": options.trust_remote_code,
            "skip_tokenizer_init": False,
        }
        if source.revision:
            kwargs["revision"] = source.revision
        return kwargs

    @staticmethod
    def build_requests(requests: Sequence[LogprobRequest]) -> tuple[list[dict[str, list[int]]], dict[str, Any]]:
        prompts = [{"prompt_token_ids": list(r.token_ids)} for r in requests]
        return prompts, {"max_tokens": 1, "prompt_logprobs": 0, "temperature": 0.0, "detokenize": False}

    @property
    def max_length(self) -> int | None:
        return self._max_length

    def response_logprobs(
        self, requests: Sequence[LogprobRequest], on_progress: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        from vllm import SamplingParams

        prompts, params = self.build_requests(requests)
        outputs = self.llm.generate(prompts, SamplingParams(**params), use_tqdm=False)
        results = [prompt_token_logprobs(o.prompt_logprobs, r.token_ids, r.response_start) for o, r in zip(outputs, requests)]
        if on_progress:
            on_progress(len(requests))
        return results
