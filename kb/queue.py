"""The durable processing queue, fair between accounts: a list of jobs per account, a ring
of the accounts that have jobs waiting, and a sorted set of leases.

A claim takes the first account of the ring, moves it to the end and takes that account's
oldest job, in one Lua step: accounts take turns, so a tenant that queued thousands of
pages delays another tenant's one document by one document, not by thousands (issue 21).
An account is in the ring exactly while its list is not empty; the push and claim scripts
keep that so. Every key carries the ``{kb}`` hash tag (:class:`engine.keyspace.KbQueueKeys`),
so each script stays within one Redis Cluster slot.

A claimed job holds a lease; its worker renews the lease while it works
(:meth:`ProcessingQueue.renew`) and finishing removes it. A job whose lease runs out (its
worker died, or the process was killed) goes back to its account's list at the next claim,
so a restart loses no queued document. Processing is idempotent per (document, generation),
so a job run twice does no harm.

Versions before this one kept one FIFO list and its leases under other keys (in other
slots); a claim drains them into the fair queue, copying each job before removing it, so a
crash in between queues a job twice but never loses one.

Workers poll the queue when it is empty. A push also wakes the worker of the process that
pushed at once, so a document uploaded to an idle server does not wait for the next poll;
workers of other processes find it at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

import msgspec

from engine import keyspace
from engine.keyspace import KbQueueKeys
from engine.state import Client, redis_boundary

SEPARATOR = "\x00"
LEGACY_BATCH = 100
"""Jobs of the old queue moved per claim."""
LEGACY_EVERY_SECONDS = 1.0
"""How often a process looks at the old queue: an old-version node may still be pushing
there during a rolling upgrade, and an old worker's lease may still run out."""

# KEYS: ring, the account's list. ARGV: account, jobs...
_PUSH = """
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('RPUSH', KEYS[1], ARGV[1]) end
for i = 2, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
"""

# KEYS: ring, leases. ARGV: now, lease seconds, list prefix, separator.
# Expired leases go back to their account's list first.
_CLAIM = """
local function enqueue(account, job)
  local list = ARGV[3] .. account
  if redis.call('LLEN', list) == 0 then redis.call('RPUSH', KEYS[1], account) end
  redis.call('RPUSH', list, job)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, job in ipairs(expired) do
  redis.call('ZREM', KEYS[2], job)
  enqueue(string.sub(job, 1, string.find(job, ARGV[4], 1, true) - 1), job)
end
local account = redis.call('LMOVE', KEYS[1], KEYS[1], 'LEFT', 'RIGHT')
if not account then return false end
local list = ARGV[3] .. account
local job = redis.call('LPOP', list)
-- The account just moved to the end of the ring: drop it there once its list is empty.
if redis.call('LLEN', list) == 0 then redis.call('RPOP', KEYS[1]) end
if not job then return false end
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]), job)
return job
"""

# KEYS: ring, leases. ARGV: list prefix. Jobs waiting or held.
_WAITING = """
local total = redis.call('ZCARD', KEYS[2])
for _, account in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  total = total + redis.call('LLEN', ARGV[1] .. account)
end
return total
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
    def __init__(self, redis: Client, *, lease_seconds: float = 300) -> None:
        self._redis = redis
        self._push = redis.register_script(_PUSH)
        self._claim = redis.register_script(_CLAIM)
        self._waiting = redis.register_script(_WAITING)
        self._lease = lease_seconds
        self._pushed = asyncio.Event()
        self._legacy_at = -LEGACY_EVERY_SECONDS

    @property
    def lease_seconds(self) -> float:
        return self._lease

    @redis_boundary
    async def push(self, jobs: list[Job]) -> None:
        await self._push_raw(job.encode() for job in jobs)

    async def _push_raw(self, raw: Iterable[str]) -> None:
        by_account: dict[str, list[str]] = {}
        for job in raw:
            by_account.setdefault(job.split(SEPARATOR, 1)[0], []).append(job)
        for account_id, jobs in by_account.items():
            # Lua's unpack and the argument stack are bounded: a long batch goes in parts.
            for start in range(0, len(jobs), 1000):
                await self._push(
                    keys=[KbQueueKeys.ring, KbQueueKeys.queue(account_id)],
                    args=[account_id, *jobs[start : start + 1000]],
                )
        if by_account:
            self._pushed.set()

    async def idle(self, seconds: float) -> None:
        """Wait until this process pushes a job, or ``seconds`` at most."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pushed.wait(), seconds)
        self._pushed.clear()

    @redis_boundary
    async def claim(self) -> Job | None:
        """The next job, taking accounts in turn; None when no job is waiting."""
        if time.monotonic() - self._legacy_at >= LEGACY_EVERY_SECONDS:
            self._legacy_at = time.monotonic()
            await self._drain_legacy()
        raw = await self._claim(
            keys=[KbQueueKeys.ring, KbQueueKeys.leases],
            args=[time.time(), self._lease, KbQueueKeys.queue_prefix, SEPARATOR],
        )
        return None if raw is None else Job.decode(raw)

    async def _drain_legacy(self) -> None:
        """Move jobs of the old single queue, and its expired leases, into the fair queue.
        Each is pushed before it is removed (other slots: no script can do both)."""
        waiting = await self._redis.lrange(keyspace.LEGACY_KB_QUEUE, 0, LEGACY_BATCH - 1)
        if waiting:
            await self._push_raw(waiting)
            async with self._redis.pipeline(transaction=False) as pipe:
                for job in waiting:
                    pipe.lrem(keyspace.LEGACY_KB_QUEUE, 1, job)
                await pipe.execute()
        expired = await self._redis.zrangebyscore(
            keyspace.LEGACY_KB_LEASES, "-inf", time.time(), start=0, num=LEGACY_BATCH
        )
        if expired:
            await self._push_raw(expired)
            await self._redis.zrem(keyspace.LEGACY_KB_LEASES, *expired)

    @redis_boundary
    async def renew(self, jobs: Iterable[Job]) -> None:
        """Extend the leases of ``jobs`` still held (a finished one is not held again)."""
        until = time.time() + self._lease
        held = {job.encode(): until for job in jobs}
        if held:
            await self._redis.zadd(KbQueueKeys.leases, held, xx=True)

    @redis_boundary
    async def done(self, job: Job) -> None:
        await self._redis.zrem(KbQueueKeys.leases, job.encode())

    @redis_boundary
    async def waiting(self) -> int:
        """Jobs waiting or held, the old queue's included."""
        fair = await self._waiting(
            keys=[KbQueueKeys.ring, KbQueueKeys.leases], args=[KbQueueKeys.queue_prefix]
        )
        return (
            int(fair)
            + int(await self._redis.llen(keyspace.LEGACY_KB_QUEUE))
            + int(await self._redis.zcard(keyspace.LEGACY_KB_LEASES))
        )
