"""OpenRLHF's remote-reward clients, reproduced exactly in request, retry and timeout shape, on httpx (so the
tests need no OpenRLHF, requests or aiohttp). The real code, for comparison:

- 0.8.x ``openrlhf/utils/remote_rm_utils.py::request_api_wrapper``: one POST of the whole rollout batch
  (``{"query", "prompts", "labels"}``) with ``requests.post(url, json=data, headers={"Content-Type":
  "application/json"}, timeout=180)`` (180 s to connect and 180 s between received bytes), then
  ``raise_for_status()`` and ``.json()``; any exception is logged, followed by ``time.sleep(1)``; five tries,
  then ``raise Exception(...)`` (the training run stops).
- 0.9.x-0.11.x ``openrlhf/utils/agent.py::SingleTurnAgentExecutor._fetch_rewards_via_http``: one POST per
  sample, all samples of a rollout at once, each try in a new ``aiohttp.ClientSession(timeout=
  ClientTimeout(total=180))`` (180 s for the whole try, queueing included), ``raise_for_status()``, five
  tries 1 s apart, ``Retry-After`` ignored; after five failures the sample has no reward.

``tries`` records every attempt (status or exception name) so a test can tell a retry from a first answer.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import httpx

TRY_MAX_TIMES = 5
TIMEOUT_S = 180.0
SLEEP_S = 1.0
_SSL = ssl.create_default_context()  # built once: building one per client costs ~10 ms of CPU each


def post_batch_0_8(
    url: str, data: dict, timeout_s: float = TIMEOUT_S, tries: list | None = None, try_max_times: int = TRY_MAX_TIMES
) -> dict:
    """``request_api_wrapper``: requests' timeout is per socket operation, as httpx's connect/read/write are."""
    tries = [] if tries is None else tries
    for _ in range(try_max_times):
        response = None
        try:
            response = httpx.post(
                url, json=data, headers={"Content-Type": "application/json"}, timeout=httpx.Timeout(timeout_s)
            )
            tries.append(response.status_code)
            response.raise_for_status()
            return response.json()
        except Exception as exc:  # noqa: BLE001 - OpenRLHF logs every exception and retries
            if response is None:
                tries.append(type(exc).__name__)
        time.sleep(SLEEP_S)
    raise RuntimeError(f"Request error for {try_max_times} times, returning None. Please check the API server.")


async def post_sample_0_9(
    url: str, data: dict, timeout_s: float = TIMEOUT_S, tries: list | None = None, try_max_times: int = TRY_MAX_TIMES
) -> dict:
    """``_post_request``: a fresh client (connection) per try; the total timeout covers connecting, queueing
    in the server and reading the answer."""
    tries = [] if tries is None else tries
    for _ in range(try_max_times):
        response = None
        try:
            async with httpx.AsyncClient(timeout=None, verify=_SSL) as client:  # a new connection per try
                response = await asyncio.wait_for(client.post(url, json=data), timeout_s)
                tries.append(response.status_code)
                response.raise_for_status()
                return response.json()
        except Exception as exc:  # noqa: BLE001
            if response is None:
                tries.append(type(exc).__name__)
        await asyncio.sleep(SLEEP_S)
    raise RuntimeError(f"Request error for {try_max_times} times, returning None. Please check the API server.")


async def rollout_0_9(url: str, samples: list[tuple[str, str]], timeout_s: float = TIMEOUT_S):
    """A rollout as 0.9.10+ sends it: every sample's request at once. Returns (answers or exceptions, tries per
    sample, seconds per sample from its first try to its answer)."""
    tries: list[list] = [[] for _ in samples]
    seconds: list[float | None] = [None] * len(samples)

    async def one(i: int, query: str, prompt: str):
        t0 = time.perf_counter()
        out = await post_sample_0_9(url, {"query": [query], "prompts": [prompt], "labels": [None]}, timeout_s, tries[i])
        seconds[i] = time.perf_counter() - t0
        return out

    answers = await asyncio.gather(*[one(i, q, p) for i, (q, p) in enumerate(samples)], return_exceptions=True)
    return answers, tries, seconds
