"""A small Python client for ``cdr serve`` (retries a full queue's 503 after its Retry-After)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


class RewardClient:
    """>>> client = RewardClient("http://127.0.0.1:8000")
    >>> client.reward([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]])
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 300.0, retries: int = 5):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.retries = retries

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            response = self._http.post(path, json=body)
            if response.status_code == 503 and attempt < self.retries:
                time.sleep(float(response.headers.get("Retry-After", 1)))
                continue
            if response.status_code >= 400:
                raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.text}")
            return response.json()
        raise AssertionError("unreachable")

    def reward(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[dict[str, Any]]:
        """One result (reward, per-model log-probs and token counts) per conversation."""
        return self._post("/v1/reward", {"conversations": [list(c) for c in conversations]})["results"]

    def get_reward(self, queries: Sequence[str], prompts: Sequence[str]) -> list[float]:
        """OpenRLHF's protocol: templated prompt + response texts, and the prompts they start with."""
        return self._post("/get_reward", {"query": list(queries), "prompts": list(prompts)})["rewards"]

    def health(self) -> dict[str, Any]:
        return self._http.get("/health").json()

    def close(self) -> None:
        self._http.close()
