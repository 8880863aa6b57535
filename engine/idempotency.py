"""Idempotency keys: the first outcome of a turn is kept and handed back to every repeat.

Seed 004: a repeated key with the same payload gets the stored response; with another
payload, 409 ``idempotency_key_reused_with_different_payload``; while the first is still
running, 409 ``idempotency_in_flight``. Keys are scoped per account and kept 24 hours.

A key keeps an outcome as opaque JSON: the turn runner (:mod:`engine.turn_runner`) decides
what an outcome is and which are kept, and each transport renders it, so an HTTP replay
and a live session's resent message are answered from the same record. The claim and the
settle run inside the turn's own scripts (:mod:`engine.turn_store`).

The claim is one atomic step (a Lua SET NX, else GET), so of any number of concurrent
requests with one key exactly one runs. An in-flight claim expires after ``in_flight_ttl`` so a
process that dies mid-request does not block the key for a day.
"""

from __future__ import annotations

import hashlib
import secrets

import msgspec

from engine import keyspace
from engine.errors import IdempotencyInFlight, IdempotencyKeyReused

KEEP_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255


class Record(msgspec.Struct, frozen=True, kw_only=True):
    fingerprint: str
    token: str
    outcome: str | None = None
    """The kept outcome's JSON, as the runner encoded it."""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Record).decode

# Lua functions spliced into the turn's scripts (engine/turn_store.py), so the claim is
# made in the round trip that opens a turn and settled in the one that closes it.
CLAIM = """
-- Claim `key` with the in-flight `record` for `ttl` s: false when claimed, else the record
-- already there (one SET on the common path).
local function claim(key, record, ttl)
  if redis.call('SET', key, record, 'NX', 'EX', ttl) then return false end
  return redis.call('GET', key)
end
"""
SETTLE = """
-- Keep `record` at `key` for `keep` s, or release the key when `record` is '', but only
-- while the claim there is `token`'s: one that lapsed and was taken again is left to its
-- new owner (put back as it was, with the in-flight lifetime).
local function settle(key, token, record, keep, in_flight)
  if record == '' then
    local current = redis.call('GET', key)
    if current and cjson.decode(current)['token'] == token then redis.call('DEL', key) end
    return
  end
  local previous = redis.call('SET', key, record, 'XX', 'GET', 'EX', keep)
  if not previous or cjson.decode(previous)['token'] == token then return end
  redis.call('SET', key, previous, 'EX', in_flight)
end
"""


class IdempotencyKey(msgspec.Struct, frozen=True):
    key: str
    fingerprint: str
    """A digest of the request's content: the same key with other content is refused."""


class Claim(msgspec.Struct, frozen=True):
    """The right to run a request once; settle it with its outcome."""

    redis_key: str
    fingerprint: str
    token: str
    record: str
    """The in-flight record that marks the key as taken."""


class Idempotency:
    """The rules of a key: what a claim holds, what a repeat gets, what is kept."""

    def __init__(self, *, in_flight_ttl: int) -> None:
        self.in_flight_ttl = in_flight_ttl

    def claim(self, account_id: str, key: IdempotencyKey) -> Claim:
        """A claim on ``key`` for this request, to be made by the Lua ``claim``."""
        digest = hashlib.sha256(key.key.encode()).hexdigest()
        token = secrets.token_hex(8)
        record = _encode(Record(fingerprint=key.fingerprint, token=token)).decode()
        redis_key = keyspace.AccountKeys(account_id).idempotency(digest)
        return Claim(redis_key=redis_key, fingerprint=key.fingerprint, token=token, record=record)

    @staticmethod
    def existing(claim: Claim, raw: str) -> str:
        """The kept outcome (JSON) of the request that claimed the key first.

        Raises IdempotencyKeyReused or IdempotencyInFlight when it may not be replayed."""
        record = _decode(raw)
        if record.fingerprint != claim.fingerprint:
            raise IdempotencyKeyReused()
        if record.outcome is None:
            raise IdempotencyInFlight()
        return record.outcome

    def settle_args(self, claim: Claim | None, outcome: bytes | None) -> list[str | int]:
        """ARGV of the Lua ``settle``: keep ``outcome`` (JSON), or release the key when
        there is nothing to keep, so that the retry the key exists for can run."""
        if claim is None:
            return ["", "", 0, 0]
        record = ""
        if outcome is not None:
            record = _encode(
                Record(fingerprint=claim.fingerprint, token=claim.token, outcome=outcome.decode())
            ).decode()
        return [claim.token, record, KEEP_SECONDS, self.in_flight_ttl]
