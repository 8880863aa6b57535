"""The bounded pool that runs turns, and the timing seed 004 reports for each.

At most ``workers`` turns run at once; at most ``queue_size`` more wait for a slot, and a
turn that finds the queue full is refused at once with 503 ``queue_unavailable`` rather
than piling up. ``queue_latency_ms`` is the wait for a slot, ``worker_latency_ms`` the work.
A turn whose wait and work together pass ``deadline`` seconds ends with 504
``upstream_timeout`` and its slot is freed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import msgspec

from engine.errors import QueueUnavailable, UpstreamTimeout

T = TypeVar("T")


class Timing(msgspec.Struct, frozen=True):
    queue_ms: float
    worker_ms: float


class Done(msgspec.Struct, Generic[T], frozen=True):
    result: T
    timing: Timing


class WorkerPool:
    def __init__(
        self,
        *,
        workers: int,
        queue_size: int,
        deadline: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._slots = asyncio.Semaphore(workers)
        self._queue_size = queue_size
        self._waiting = 0
        self._deadline = deadline
        self._clock = clock

    async def run(self, work: Callable[[], Awaitable[T]]) -> Done[T]:
        if self._slots.locked() and self._waiting >= self._queue_size:
            raise QueueUnavailable()
        queued = self._clock()
        started = queued
        try:
            async with asyncio.timeout(self._deadline):
                self._waiting += 1
                try:
                    await self._slots.acquire()
                finally:
                    self._waiting -= 1
                try:
                    started = self._clock()
                    result = await work()
                finally:
                    self._slots.release()
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        finished = self._clock()
        return Done(
            result=result,
            timing=Timing(
                queue_ms=(started - queued) * 1000, worker_ms=(finished - started) * 1000
            ),
        )
