"""The backend registry loads only ``Backend`` subclasses, and the contract declares what callers read."""

from __future__ import annotations

import pytest

import cdr.backends as backends
from cdr.backends import Backend, backend_class
from cdr.errors import CdrError


def test_registry_refuses_what_is_not_a_backend(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "bogus", "cdr.errors:CdrError")
    monkeypatch.setitem(backends.BACKENDS, "missing", "cdr.errors:NoSuchThing")
    for name in ("bogus", "missing"):
        with pytest.raises(CdrError, match=f"backend '{name}' .* is not a cdr Backend") as info:
            backend_class(name)
        assert "\n" not in str(info.value)
    with pytest.raises(CdrError, match="unknown backend 'nope'"):
        backend_class("nope")


def test_contract_declares_what_callers_read():
    for attr, default in (("name", "base"), ("precision", "float32"), ("vocab_size", None), ("commit_hash", None)):
        assert getattr(Backend, attr) == default
    assert backend_class("default").__name__ == "TransformersBackend" and issubclass(backend_class("openai"), Backend)
