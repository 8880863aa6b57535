"""Request limits, shared through Redis.

The conversation API (seed 004): 60 requests a minute per API key and 360 per client IP by
default; past either, 429 ``rate_limited`` / ``rate_limited_ip`` with ``Retry-After: 60``.
The rest of ``/api/`` (seed 000's policies): ``KnowledgeUploadsRate`` and ``MutationDefault``
per account, ``Global`` per IP; past one, 429 ``limits.rate_exceeded`` with ``Retry-After``
(seconds until the window frees) and the partition as ``scope``.

The windows are moving windows of the ``limits`` library, whose acquire is one Lua script:
exact under any concurrency, and the same across every worker and node sharing the Redis.
"""

from __future__ import annotations

import math
import time

import msgspec
import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from engine.errors import RateLimited, RateLimitedIp, RateLimiterUnavailable
from engine.state import unavailable_as

RETRY_AFTER = "60"  # seed 004: "Retry-After: 60 is returned"

limiter_boundary = unavailable_as(RateLimiterUnavailable)


class Quota(msgspec.Struct, frozen=True):
    """What is left of the API key's window, for the RateLimit-* headers."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        # draft-ietf-httpapi-ratelimit-headers: limit, remaining, seconds until reset.
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


class Policy(msgspec.Struct, frozen=True):
    """One of seed 000's rate-limit policies."""

    name: str
    per_minute: int
    scope: str
    """Seed 000's partition: ``user`` (per account) or ``ip``."""


class RateLimits:
    def __init__(self, redis: aioredis.Redis, *, key_rpm: int, ip_rpm: int) -> None:
        # With a connection pool given, limits ignores the URI's address; it only needs one
        # that parses. Our pool brings the timeouts and the blocking cap.
        storage = RedisStorage(
            "async+redis://127.0.0.1:6379",
            implementation="redispy",
            connection_pool=redis.connection_pool,
            key_prefix="rapport:limits",
        )
        self._limiter = MovingWindowRateLimiter(storage)
        self._per_key = RateLimitItemPerMinute(key_rpm)
        self._per_ip = RateLimitItemPerMinute(ip_rpm)

    @limiter_boundary
    async def hit(self, api_key_id: str, client_ip: str) -> Quota:
        """Count one request against the client's IP and its API key, or raise 429."""
        if not await self._limiter.hit(self._per_ip, "ip", client_ip):
            quota = Quota(self._per_ip.amount, 0, int(RETRY_AFTER))
            raise RateLimitedIp(headers={"Retry-After": RETRY_AFTER, **quota.headers()})
        allowed = await self._limiter.hit(self._per_key, "key", api_key_id)
        stats = await self._limiter.get_window_stats(self._per_key, "key", api_key_id)
        quota = Quota(
            self._per_key.amount,
            stats.remaining,
            max(0, math.ceil(stats.reset_time - time.time())),
        )
        if not allowed:
            raise RateLimited(headers={"Retry-After": RETRY_AFTER, **quota.headers()})
        return quota

    @limiter_boundary
    async def enforce(self, policy: Policy, partition: str) -> None:
        """Count one request against ``policy`` for ``partition``, or raise 429."""
        item = RateLimitItemPerMinute(policy.per_minute)
        if await self._limiter.hit(item, policy.name, partition):
            return
        stats = await self._limiter.get_window_stats(item, policy.name, partition)
        retry = str(max(1, math.ceil(stats.reset_time - time.time())))
        error = RateLimitedIp if policy.scope == "ip" else RateLimited
        raise error(
            f"Too many requests ({policy.name}: {policy.per_minute} a minute per "
            f"{'IP' if policy.scope == 'ip' else 'account'}); retry after {retry} s.",
            headers={"Retry-After": retry},
            scope=policy.scope,
        )
