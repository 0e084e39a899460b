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
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from cdr.backends.base import LogprobRequest


def request_key(model_key: str, request: LogprobRequest) -> bytes:
    digest = hashlib.sha256(model_key.encode())
    digest.update(request.response_start.to_bytes(4, "little"))
    digest.update(np.asarray(request.token_ids, dtype=np.int64).tobytes())
    return digest.digest()


class LogprobCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=120, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS logprobs (key BLOB PRIMARY KEY, model TEXT NOT NULL, logprobs BLOB NOT NULL)"
        )
        self.hits = 0
        self.misses = 0

    def get_many(self, model_key: str, requests: Sequence[LogprobRequest]) -> list[np.ndarray | None]:
        keys = [request_key(model_key, r) for r in requests]
        found: dict[bytes, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                found.update(self._db.execute(f"SELECT key, logprobs FROM logprobs WHERE key IN ({marks})", part).fetchall())
        out = [np.frombuffer(found[k], dtype=np.float64).copy() if k in found else None for k in keys]
        hits = sum(x is not None for x in out)
        self.hits += hits
        self.misses += len(out) - hits
        return out

    def put_many(self, model_key: str, requests: Sequence[LogprobRequest], results: Sequence[np.ndarray]) -> None:
        rows = [
            (request_key(model_key, r), model_key, np.asarray(lp, dtype=np.float64).tobytes())
            for r, lp in zip(requests, results)
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO logprobs VALUES (?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM logprobs").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
