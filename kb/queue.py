"""The durable processing queue: a Redis list of jobs plus a sorted set of leases.

Claiming a job moves it from the list to the leases in one Lua step; finishing removes the
lease. A job whose lease runs out (its worker died, or the process was killed) goes back
on the list at the next claim, so a restart loses no queued document. Processing is
idempotent per (document, generation), so a job run twice does no harm.

Workers poll the list when it is empty. A push also wakes the worker of the process that
pushed at once, so a document uploaded to an idle server does not wait for the next poll;
workers of other processes find it at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import redis.asyncio as aioredis

from engine import keyspace
from engine.state import redis_boundary

SEPARATOR = "\x00"

# KEYS: queue, leases. ARGV: now, lease seconds. Expired leases are put back first.
_CLAIM = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, job in ipairs(expired) do
  redis.call('ZREM', KEYS[2], job)
  redis.call('RPUSH', KEYS[1], job)
end
local job = redis.call('LPOP', KEYS[1])
if not job then return false end
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]), job)
return job
"""


class Job(msgspec.Struct, frozen=True):
    account_id: str
    external_id: str
    generation: int

    def encode(self) -> str:
        return SEPARATOR.join((self.account_id, self.external_id, str(self.generation)))

    @classmethod
    def decode(cls, raw: str) -> Job:
        account_id, external_id, generation = raw.split(SEPARATOR)
        return cls(account_id, external_id, int(generation))


class ProcessingQueue:
    def __init__(self, redis: aioredis.Redis, *, lease_seconds: float = 300) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._lease = lease_seconds
        self._pushed = asyncio.Event()

    @redis_boundary
    async def push(self, jobs: list[Job]) -> None:
        if jobs:
            await self._redis.rpush(keyspace.KB_QUEUE, *(job.encode() for job in jobs))
            self._pushed.set()

    async def idle(self, seconds: float) -> None:
        """Wait until this process pushes a job, or ``seconds`` at most."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pushed.wait(), seconds)
        self._pushed.clear()

    @redis_boundary
    async def claim(self) -> Job | None:
        raw = await self._claim(
            keys=[keyspace.KB_QUEUE, keyspace.KB_LEASES], args=[time.time(), self._lease]
        )
        return None if raw is None else Job.decode(raw)

    @redis_boundary
    async def done(self, job: Job) -> None:
        await self._redis.zrem(keyspace.KB_LEASES, job.encode())

    @redis_boundary
    async def waiting(self) -> int:
        return int(await self._redis.llen(keyspace.KB_QUEUE)) + int(
            await self._redis.zcard(keyspace.KB_LEASES)
        )
