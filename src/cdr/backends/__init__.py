"""Backends by name. Heavy imports (vllm, llama_cpp, ...) happen only when that backend is chosen."""

from __future__ import annotations

import importlib

from cdr.backends.base import Backend, BackendOptions, LogprobRequest
from cdr.errors import CdrError
from cdr.models import ModelSource

BACKENDS = {
    "hf": "cdr.backends.hf:TransformersBackend",
    "openai": "cdr.backends.openai:OpenAICompletionsBackend",
    "vllm": "cdr.backends.vllm:VLLMBackend",
    "llamacpp": "cdr.backends.llamacpp:LlamaCppBackend",
}


def backend_class(name: str) -> type[Backend]:
    if name == "default":
        name = "hf"
    if name not in BACKENDS:
        raise CdrError(f"unknown backend '{name}'; choose one of: default, {', '.join(BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise CdrError(f"backend '{name}' ({BACKENDS[name]}) is not a cdr Backend: {cls!r}")
    return cls


def load_backend(name: str, source: ModelSource, options: BackendOptions) -> Backend:
    return backend_class(name)(source, options)


__all__ = ["Backend", "BackendOptions", "LogprobRequest", "BACKENDS", "backend_class", "load_backend"]
