"""Request limits, shared through Redis.

The conversation API (seed 004): 60 requests a minute per API key and 360 per client IP by
default; past either, 429 ``rate_limited`` / ``rate_limited_ip`` with ``Retry-After: 60``.
The rest of ``/api/`` (seed 000's policies): ``KnowledgeUploadsRate`` and ``MutationDefault``
per account, ``Global`` per IP; past one, 429 ``limits.rate_exceeded`` with ``Retry-After``
(seconds until the window frees) and the partition as ``scope``.

Every limit is a moving window of one minute, kept as a log: a Redis list of the times of
the hits inside the window, newest first. A hit is one Lua function (:data:`HIT`), so it is
exact under any concurrency and the same across every worker and node sharing the Redis.
The function is also spliced into the turn's own script (:mod:`engine.turn_store`), which
counts the per-key limit in the same round trip as the rest of a turn's reads.

Why not the ``limits`` library, which keeps the same log: its hit costs five commands and
its window statistics (for the RateLimit-* headers) a binary search of ~25 ``LINDEX`` at
high limits; a turn had 55 Redis commands, 36 of them these. Here a hit that needs no count
is ``LPUSH`` + ``PEXPIRE``; one that reports the count also reads the oldest eight entries
and trims those that left the window, so the list holds only the window and its length is
the count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import msgspec
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from engine import keyspace
from engine.errors import RateLimited, RateLimitedIp, RateLimiterUnavailable
from engine.state import Client, unavailable_as

RETRY_AFTER = "60"  # seed 004: "Retry-After: 60 is returned"
WINDOW_MS = 60_000

limiter_boundary = unavailable_as(RateLimiterUnavailable)

HIT = """
-- One hit on the moving-window log at `key`: a list of hit times (ms), newest first.
-- Returns {allowed 1|0, hits in the window (this one included when allowed; -1 when not
-- counted), ms until the window has room (0 when allowed), ms until the oldest hit in the
-- window leaves it (-1 when not counted)}.
local function window_hit(key, now, window, limit, counted)
  local since = now - window
  local n = redis.call('LPUSH', key, now)
  local stale = 0
  local oldest = -1
  if counted == 1 then
    -- Drop the hits that left the window: they sit at the tail, oldest last.
    local tail = redis.call('LRANGE', key, -8, -1)
    for i = #tail, 1, -1 do
      if tonumber(tail[i]) > since then oldest = tonumber(tail[i]); break end
      stale = stale + 1
    end
    if stale == #tail and n > #tail then
      -- More stale hits than the tail showed (an idle spell): find the first by bisection.
      local low, high = 1, n - #tail
      while low < high do
        local mid = math.floor((low + high) / 2)
        if tonumber(redis.call('LINDEX', key, mid)) > since then low = mid + 1 else high = mid end
      end
      stale = n - low
      oldest = tonumber(redis.call('LINDEX', key, low - 1))
    end
    if stale > 0 then redis.call('LTRIM', key, 0, n - stale - 1) end
  end
  local kept = n - stale
  if kept > limit then
    -- The hit before ours that is `limit` back: still in the window means no room.
    local edge = tonumber(redis.call('LINDEX', key, limit))
    if edge > since then
      redis.call('LPOP', key)
      return {0, counted == 1 and kept - 1 or -1, edge + window - now, -1}
    end
    redis.call('LTRIM', key, 0, limit - 1)
    kept = limit
  end
  redis.call('PEXPIRE', key, window)
  if counted == 1 and oldest < 0 then oldest = now end
  return {1, counted == 1 and kept or -1, 0, counted == 1 and oldest + window - now or -1}
end
"""

_HIT_SCRIPT = (
    HIT + "return window_hit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), "
    "tonumber(ARGV[3]), tonumber(ARGV[4]))"
)


class Window(msgspec.Struct, frozen=True, array_like=True):
    """What :data:`HIT` answers."""

    allowed: int
    hits: int
    wait_ms: int
    reset_ms: int


class Quota(msgspec.Struct, frozen=True):
    """What is left of the API key's window, for the RateLimit-* headers."""

    limit: int
    remaining: int
    reset_seconds: int

    @classmethod
    def of(cls, limit: int, window: Window) -> Quota:
        remaining = max(0, limit - window.hits) if window.allowed else 0
        reset = window.reset_ms if window.allowed else window.wait_ms
        return cls(limit, remaining, max(0, math.ceil(reset / 1000)))

    def headers(self) -> dict[str, str]:
        # draft-ietf-httpapi-ratelimit-headers: limit, remaining, seconds until reset.
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }

    def refuse(self) -> RateLimited:
        # Seed 000: a 429's ``scope`` says whether the partition was per user, per IP or per
        # API-key slot; this window is the key's (RAPPORT_KEY_RPM).
        return RateLimited(headers={"Retry-After": RETRY_AFTER, **self.headers()}, scope="key")


class Policy(msgspec.Struct, frozen=True):
    """One of seed 000's rate-limit policies."""

    name: str
    per_minute: int
    scope: str
    """Seed 000's partition: ``user`` (per account) or ``ip``."""


def now_ms(clock: Callable[[], float] = time.time) -> int:
    return int(clock() * 1000)


class RateLimits:
    def __init__(
        self,
        redis: Client,
        *,
        key_rpm: int,
        ip_rpm: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hit = redis.register_script(_HIT_SCRIPT)
        self.key_rpm = key_rpm
        self._ip_rpm = ip_rpm
        self._clock = clock

    async def _window(self, key: str, limit: int, *, counted: bool) -> Window:
        answer = await self._hit(
            keys=[key], args=[now_ms(self._clock), WINDOW_MS, limit, int(counted)]
        )
        return Window(*answer)

    @limiter_boundary
    async def hit_ip(self, client_ip: str) -> None:
        """Count one ``/api/v1/`` request against the client's IP, or raise 429."""
        self.ip_checked(await self._hit(keys=[self._ip_key(client_ip)], args=self._ip_args()))

    def queue_ip(self, pipe: Pipeline, client_ip: str) -> None:
        """Queue :meth:`hit_ip` on a pipeline; read its answer with :meth:`ip_checked`.

        The script is called by its digest: a redis-py Script on a pipeline asks
        ``SCRIPT EXISTS`` before every execute, one command more per request."""
        # As a raw command: redis-py's cluster pipeline refuses its ``evalsha`` method
        # outright, but routes a raw EVALSHA by its key's slot like any other command.
        pipe.execute_command("EVALSHA", self._hit.sha, 1, self._ip_key(client_ip), *self._ip_args())

    async def ip_answered(self, answer: object, client_ip: str) -> None:
        """The queued IP hit's answer, or raise 429. A Redis that lost its scripts (a
        restart) answers NOSCRIPT: the hit is made again with the script sent along."""
        if isinstance(answer, NoScriptError):
            await self.hit_ip(client_ip)
            return
        if isinstance(answer, Exception):
            raise answer
        self.ip_checked(answer)

    @staticmethod
    def ip_checked(answer: object) -> None:
        if not Window(*answer).allowed:  # type: ignore[misc]
            raise RateLimitedIp(headers={"Retry-After": RETRY_AFTER})

    def _ip_key(self, client_ip: str) -> str:
        return keyspace.rate_window("v1-ip", client_ip)

    def _ip_args(self) -> list[int]:
        return [now_ms(self._clock), WINDOW_MS, self._ip_rpm, 0]

    @limiter_boundary
    async def hit_key(self, account_id: str, slot: str) -> Quota:
        """Count one request against an API key (its account and slot), or raise 429."""
        key = keyspace.AccountKeys(account_id).rate_window("v1-key", slot)
        window = await self._window(key, self.key_rpm, counted=True)
        quota = Quota.of(self.key_rpm, window)
        if not window.allowed:
            raise quota.refuse()
        return quota

    @limiter_boundary
    async def enforce(self, policy: Policy, partition: str, end_user: str | None = None) -> None:
        """Count one request against ``policy`` for ``partition`` (an IP, or an account and
        with ``end_user`` one of its end users), or raise 429."""
        if policy.scope == "ip":
            key = keyspace.rate_window(policy.name, partition)
        else:
            key = keyspace.AccountKeys(partition).rate_window(
                policy.name, "account" if end_user is None else f"user:{end_user}"
            )
        window = await self._window(key, policy.per_minute, counted=False)
        if window.allowed:
            return
        retry = str(max(1, math.ceil(window.wait_ms / 1000)))
        error = RateLimitedIp if policy.scope == "ip" else RateLimited
        raise error(
            f"Too many requests ({policy.name}: {policy.per_minute} a minute per "
            f"{'IP' if policy.scope == 'ip' else 'end user' if end_user else 'account'}); "
            f"retry after {retry} s.",
            headers={"Retry-After": retry},
            scope=policy.scope,
        )
