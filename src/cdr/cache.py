"""A persistent log-prob cache shared by every command.

Why SQLite: it is in the standard library (no server, no dependency), a write is a transaction (a
process killed mid-write leaves the last committed state, never a torn record), and in WAL mode readers
never block the writer while concurrent writers queue on a lock instead of corrupting the file, so two
runs can share one cache.

An entry is one model's log-probs of one response: the key is the model's cache identity (weights
fingerprint, backend and precision) plus the exact token ids and response start, which already encode
the rendering (template, system prompt, plain format, end-of-turn choice). Re-scoring the same rows with
another weak model, another reward variant or another annotation strategy therefore recomputes only
what changed.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cdr.backends.base import LogprobRequest

logger = logging.getLogger(__name__)


def request_key(model_key: str, request: LogprobRequest) -> bytes:
    digest = hashlib.sha256(model_key.encode())
    digest.update(request.response_start.to_bytes(4, "little"))
    digest.update(np.asarray(request.token_ids, dtype=np.int64).tobytes())
    return digest.digest()


def entry_checksum(key: bytes, value: bytes) -> bytes:
    """Binds a stored value to its key: a flipped bit in either, or a value under the wrong key, is caught."""
    return hashlib.sha256(key + value).digest()[:16]


class LogprobCache:
    """``get_many``/``put_many`` over SQLite. Every entry carries a checksum, verified on read: a mismatch
    (a damaged page, an edited value, an entry of an older cdr without one) is a miss, computed again and
    stored anew. A file that is not a readable SQLite database turns the cache off for this run, with one
    warning saying so (the file is left as it is: move or delete it to start a new cache)."""

    def __init__(self, path: str | Path, warn=None):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._warn = warn or logger.warning
        self.hits = 0
        self.misses = 0
        self.corrupt = 0  # entries whose checksum did not match (counted as misses too)
        self.disabled: str | None = None  # why the cache is off, if it is
        self._db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=120, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS logprobs (key BLOB PRIMARY KEY, model TEXT NOT NULL, "
                "logprobs BLOB NOT NULL, checksum BLOB)"
            )
            columns = [r[1] for r in self._db.execute("PRAGMA table_info(logprobs)")]
            if "checksum" not in columns:  # a cache of an older cdr: its entries count as misses until rewritten
                self._db.execute("ALTER TABLE logprobs ADD COLUMN checksum BLOB")
        except (sqlite3.DatabaseError, OSError) as exc:
            self._disable(exc)

    def _disable(self, exc: Exception) -> None:
        self.disabled = f"{type(exc).__name__}: {exc}"
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:  # the file is already unusable; the warning below says so
                pass
        self._db = None
        self._warn(
            f"cdr: warning: the log-prob cache '{self.path}' cannot be used ({exc}); carrying on without it "
            "(move or delete the file to start a new cache)"
        )

    def get_many(self, model_key: str, requests: Sequence[LogprobRequest]) -> list[np.ndarray | None]:
        keys = [request_key(model_key, r) for r in requests]
        found: dict[bytes, tuple[bytes, bytes | None]] = {}
        with self._lock:
            if self._db is not None:
                try:
                    for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                        part = keys[start : start + 500]
                        marks = ",".join("?" * len(part))
                        for k, value, checksum in self._db.execute(
                            f"SELECT key, logprobs, checksum FROM logprobs WHERE key IN ({marks})", part
                        ):
                            found[k] = (value, checksum)
                except sqlite3.DatabaseError as exc:
                    self._disable(exc)
                    found = {}
        out: list[np.ndarray | None] = []
        for k in keys:
            entry = found.get(k)
            if entry is None:
                out.append(None)
                continue
            value, checksum = entry
            if checksum is None or len(value) % 8 or bytes(checksum) != entry_checksum(k, bytes(value)):
                self.corrupt += checksum is not None
                out.append(None)
                continue
            out.append(np.frombuffer(value, dtype=np.float64).copy())
        hits = sum(x is not None for x in out)
        self.hits += hits
        self.misses += len(out) - hits
        return out

    def put_many(self, model_key: str, requests: Sequence[LogprobRequest], results: Sequence[np.ndarray]) -> None:
        rows = []
        for r, lp in zip(requests, results):
            key, value = request_key(model_key, r), np.asarray(lp, dtype=np.float64).tobytes()
            rows.append((key, model_key, value, entry_checksum(key, value)))
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO logprobs (key, model, logprobs, checksum) VALUES (?, ?, ?, ?)", rows
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                self._disable(exc)

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            return self._db.execute("SELECT COUNT(*) FROM logprobs").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
