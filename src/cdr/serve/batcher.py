"""Micro-batching: concurrent requests are queued and run together on the one model worker thread.

A batch takes queued jobs of the same kind until it holds ``max_batch`` rows or ``max_wait`` seconds
have passed since its first job arrived. The queue is bounded in rows: a job that would overflow it is
refused at once (the service answers 503 with Retry-After) instead of letting memory and latency grow.
A job whose client went away is cancelled; if it has not started it is dropped, if it is running its
result is discarded, and either way the other jobs of its batch are unaffected.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The bounded queue cannot take this job now."""


@dataclass
class Job:
    key: Hashable  # jobs with equal keys may share a batch
    items: list[Any]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)
    on_result: Callable[[list[Any]], None] | None = None  # called with the results even if the job was cancelled


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[Hashable, list[Any]], list[Any]],
        *,
        max_batch: int = 32,
        max_wait: float = 0.01,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._run = run  # (key, items) -> one result per item; runs on the worker thread
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self._on_batch = on_batch
        self._jobs: collections.deque[Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdr-model")
        self._task: asyncio.Task | None = None

    @property
    def queued_rows(self) -> int:
        return sum(len(j.items) for j in self._jobs if not j.future.cancelled())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish every queued job, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(
        self, key: Hashable, items: list[Any], force: bool = False, on_result: Callable[[list[Any]], None] | None = None
    ) -> list[Any]:
        """``force``: skip the queue bound (a later chunk of a request the bound already admitted).
        ``on_result``: called with the results once computed, even if the caller has gone meanwhile."""
        if self._closing and not force:
            raise QueueFull("shutting down")
        if not force and self.queued_rows + len(items) > self.max_queue:
            raise QueueFull(f"{self.queued_rows} rows queued, limit {self.max_queue}")
        job = Job(key, items, asyncio.get_running_loop().create_future(), on_result=on_result)
        self._jobs.append(job)
        self._wakeup.set()
        if self._rows_of(key) >= self.max_batch:
            self._full.set()
        return await job.future

    def _rows_of(self, key: Hashable) -> int:
        return sum(len(j.items) for j in self._jobs if j.key == key and not j.future.cancelled())

    def _take(self) -> tuple[Hashable, list[Job]]:
        """The oldest live job's key, and the jobs of that key that fit in one batch (in arrival order)."""
        live = [j for j in self._jobs if not j.future.cancelled()]
        key = live[0].key
        batch, rows = [], 0
        for job in live:
            if job.key != key:
                continue
            if batch and rows + len(job.items) > self.max_batch:
                break
            batch.append(job)
            rows += len(job.items)
        taken = {id(j) for j in batch}
        self._jobs = collections.deque(j for j in live if id(j) not in taken)
        return key, batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while any(not j.future.cancelled() for j in self._jobs):
                first = next(j for j in self._jobs if not j.future.cancelled())
                wait = first.queued_at + self.max_wait - time.monotonic()
                if wait > 0 and not self._closing and self._rows_of(first.key) < self.max_batch:
                    self._full.clear()
                    try:
                        await asyncio.wait_for(self._full.wait(), wait)
                    except asyncio.TimeoutError:
                        pass  # max_wait is up: run the batch with what has arrived
                if not any(not j.future.cancelled() for j in self._jobs):
                    break  # the jobs we waited for were all cancelled
                key, batch = self._take()
                items = [item for job in batch for item in job.items]
                if self._on_batch:
                    self._on_batch(len(items))
                try:
                    results = await loop.run_in_executor(self._executor, self._run, key, items)
                except Exception as exc:  # the batch failed: every job in it hears why
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(exc)
                else:
                    start = 0
                    for job in batch:
                        part = results[start : start + len(job.items)]
                        start += len(job.items)
                        if job.on_result is not None:
                            job.on_result(part)
                        if not job.future.done():
                            job.future.set_result(part)
            self._jobs.clear()
            if self._closing:
                return
