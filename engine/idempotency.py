"""Idempotency-Key: the first outcome of a request is kept and replayed byte for byte.

Seed 004: a repeated key with the same payload gets the stored response; with another
payload, 409 ``idempotency_key_reused_with_different_payload``; while the first is still
running, 409 ``idempotency_in_flight``. Keys are scoped per account and kept 24 hours.

The claim is one atomic step (a Lua GET-or-SET), so of any number of concurrent requests
with one key exactly one runs. An in-flight claim expires after ``in_flight_ttl`` so a
process that dies mid-request does not block the key for a day. Outcomes the caller may
cure by retrying (5xx, 429, 402) are not kept: the claim is released instead, so the retry
the key exists for can succeed.
"""

from __future__ import annotations

import hashlib
import secrets

import msgspec
import redis.asyncio as aioredis

from engine import keyspace
from engine.errors import IdempotencyInFlight, IdempotencyKeyReused, IdempotencyUnavailable
from engine.state import unavailable_as

KEEP_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255


class Outcome(msgspec.Struct, frozen=True):
    status: int
    body: str


class Record(msgspec.Struct, frozen=True, kw_only=True):
    fingerprint: str
    token: str
    outcome: Outcome | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Record).decode

# Returns nil when the claim was taken, else the record already there.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
# Writes or releases only a claim that is still ours (same token).
_SETTLE = """
local current = redis.call('GET', KEYS[1])
if not current or cjson.decode(current)['token'] ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 1
"""

idempotency_boundary = unavailable_as(IdempotencyUnavailable)


def keeps(status: int) -> bool:
    """Whether an outcome is final: retrying the same request could not change it."""
    return status < 500 and status not in (402, 429)


class Claim(msgspec.Struct, frozen=True):
    """The right to run a request once; settle it with its outcome."""

    redis_key: str
    fingerprint: str
    token: str


class IdempotencyStore:
    def __init__(self, redis: aioredis.Redis, *, in_flight_ttl: int) -> None:
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)
        self._in_flight_ttl = in_flight_ttl

    @idempotency_boundary
    async def claim(self, account_id: str, key: str, fingerprint: str) -> Claim | Outcome:
        """Claim ``key`` for this request, or return the outcome to replay.

        Raises IdempotencyKeyReused or IdempotencyInFlight when it may not run.
        """
        digest = hashlib.sha256(key.encode()).hexdigest()
        redis_key = keyspace.AccountKeys(account_id).idempotency(digest)
        token = secrets.token_hex(8)
        mine = _encode(Record(fingerprint=fingerprint, token=token))
        existing = await self._claim(keys=[redis_key], args=[mine, self._in_flight_ttl])
        if existing is None:
            return Claim(redis_key=redis_key, fingerprint=fingerprint, token=token)
        record = _decode(existing)
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        if record.outcome is None:
            raise IdempotencyInFlight()
        return record.outcome

    @idempotency_boundary
    async def settle(self, claim: Claim, outcome: Outcome | None) -> None:
        """Keep ``outcome`` for replay, or release the key when there is nothing to keep."""
        record = ""
        if outcome is not None and keeps(outcome.status):
            record = _encode(
                Record(fingerprint=claim.fingerprint, token=claim.token, outcome=outcome)
            ).decode()
        await self._settle(keys=[claim.redis_key], args=[claim.token, record, KEEP_SECONDS])
