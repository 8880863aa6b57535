"""The request balance: each reply spends one request; at zero, 402 ``no_requests``.

A turn reserves its request before any work and gives it back if no reply comes, so the
balance is never overdrawn under concurrency and a failed turn costs nothing.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from engine import keyspace
from engine.errors import NoRequests
from engine.state import redis_boundary

# DECR only while positive: a check then a DECR in two commands could overdraw.
_SPEND = """
local balance = tonumber(redis.call('GET', KEYS[1]) or '0')
if balance <= 0 then return -1 end
return redis.call('DECR', KEYS[1])
"""


class Balance:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._spend = redis.register_script(_SPEND)

    @redis_boundary
    async def spend(self, account_id: str) -> int:
        """Take one request; returns what is left. Raises NoRequests at zero."""
        left = await self._spend(keys=[keyspace.AccountKeys(account_id).balance])
        if left < 0:
            raise NoRequests()
        return left

    @redis_boundary
    async def refund(self, account_id: str) -> None:
        await self._redis.incr(keyspace.AccountKeys(account_id).balance)

    @redis_boundary
    async def add(self, account_id: str, requests: int) -> int:
        return await self._redis.incrby(keyspace.AccountKeys(account_id).balance, requests)

    @redis_boundary
    async def get(self, account_id: str) -> int:
        return int(await self._redis.get(keyspace.AccountKeys(account_id).balance) or 0)
