"""The request balance: each reply spends one request; at zero, 402 ``no_requests``.

A turn reserves its request before any work and gives it back if no reply comes, so the
balance is never overdrawn under concurrency and a failed turn costs nothing.
"""

from __future__ import annotations

from engine import keyspace
from engine.state import Client, redis_boundary

# Spliced into the script that opens a turn (engine/turn_store.py). DECR first and undo at
# zero: one command on the common path, and a check then a DECR in two commands could
# overdraw under concurrency.
SPEND = """
-- Take one request from the balance at `key`: what is left, or -1 at zero (nothing taken).
local function spend(key)
  local left = redis.call('DECR', key)
  if left >= 0 then return left end
  redis.call('INCR', key)
  return -1
end
"""


class Balance:
    def __init__(self, redis: Client) -> None:
        self._redis = redis

    @redis_boundary
    async def refund(self, account_id: str) -> None:
        await self._redis.incr(keyspace.AccountKeys(account_id).balance)

    @redis_boundary
    async def add(self, account_id: str, requests: int) -> int:
        return await self._redis.incrby(keyspace.AccountKeys(account_id).balance, requests)

    @redis_boundary
    async def get(self, account_id: str) -> int:
        return int(await self._redis.get(keyspace.AccountKeys(account_id).balance) or 0)
