"""API keys: two slots per account, stored as a digest plus a public lookup prefix.

A key is ``rk_live_`` followed by 44 random letters and digits (~262 bits). Its first
``LOOKUP_LENGTH`` random characters are the lookup prefix, the only part stored in clear;
the rest is checked against a SHA-256 digest with a constant-time comparison. A salted slow
hash buys nothing for a secret this long and would cost every request milliseconds. The
full key is returned once, when a slot is filled or regenerated, and never again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from datetime import UTC, datetime
from typing import Literal, get_args

import msgspec

from engine import keyspace
from engine.errors import Conflict, DisabledApiKey, InvalidApiKey, NotFound
from engine.state import Client, redis_boundary

KEY_PREFIX = "rk_live_"
RANDOM_LENGTH = 44
LOOKUP_LENGTH = 12
KEY_SHAPE = re.compile(rf"\A{KEY_PREFIX}[A-Za-z0-9]{{{RANDOM_LENGTH}}}\Z")
_ALPHABET = string.ascii_letters + string.digits

Slot = Literal["primary", "secondary"]
SLOTS: tuple[Slot, ...] = get_args(Slot)


class Principal(msgspec.Struct, frozen=True):
    """Who a request authenticated as."""

    account_id: str
    slot: Slot


class SlotState(msgspec.Struct, frozen=True):
    """What may be shown about a filled slot: never the key, only its public prefix."""

    slot: Slot
    hint: str
    disabled: bool
    created_at: str


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _lookup(key: str) -> str:
    return key[len(KEY_PREFIX) : len(KEY_PREFIX) + LOOKUP_LENGTH]


def generate_key() -> str:
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(RANDOM_LENGTH))


class KeyStore:
    def __init__(self, redis: Client) -> None:
        self._redis = redis

    @redis_boundary
    async def authenticate(self, presented: str) -> Principal:
        # A malformed key cannot match: answer without a Redis round trip.
        return self.principal(presented, await self._redis.hgetall(self.record_key(presented)))

    @staticmethod
    def record_key(presented: str) -> str:
        """Where the record of a well-formed key would be (for a caller that pipelines the
        lookup with other reads); a malformed key raises InvalidApiKey."""
        if not KEY_SHAPE.match(presented):
            raise InvalidApiKey()
        return keyspace.api_key(_lookup(presented))

    @staticmethod
    def principal(presented: str, record: dict[str, str]) -> Principal:
        """Who ``presented`` is, given the record found at :meth:`record_key`."""
        if not record or not hmac.compare_digest(record["digest"], _digest(presented)):
            raise InvalidApiKey()
        if record["disabled"] == "1":
            raise DisabledApiKey()
        return Principal(account_id=record["account"], slot=record["slot"])

    @redis_boundary
    async def create(self, account_id: str, slot: Slot) -> str:
        """Fill an empty slot; returns the full key, the only time it is visible."""
        if await self._redis.hexists(keyspace.AccountKeys(account_id).key_slots, slot):
            raise Conflict(f"The {slot} slot already holds a key; regenerate it instead.")
        return await self._issue(account_id, slot)

    @redis_boundary
    async def regenerate(self, account_id: str, slot: Slot) -> str:
        """Replace a slot's key (the old one stops working at once); the slot is enabled."""
        return await self._issue(account_id, slot)

    @redis_boundary
    async def set_disabled(self, account_id: str, slot: Slot, disabled: bool) -> None:
        lookup = await self._slot_lookup(account_id, slot)
        await self._redis.hset(keyspace.api_key(lookup), "disabled", "1" if disabled else "0")

    @redis_boundary
    async def slots(self, account_id: str) -> list[SlotState]:
        pointers = await self._redis.hgetall(keyspace.AccountKeys(account_id).key_slots)
        states = []
        for slot in SLOTS:
            lookup = pointers.get(slot)
            if lookup is None:
                continue
            record = await self._redis.hgetall(keyspace.api_key(lookup))
            states.append(
                SlotState(
                    slot=slot,
                    hint=f"{KEY_PREFIX}{lookup[:4]}…",
                    disabled=record.get("disabled") == "1",
                    created_at=record.get("created_at", ""),
                )
            )
        return states

    async def _slot_lookup(self, account_id: str, slot: Slot) -> str:
        lookup = await self._redis.hget(keyspace.AccountKeys(account_id).key_slots, slot)
        if lookup is None:
            raise NotFound(f"The {slot} slot holds no key; create one first.")
        return lookup

    async def _issue(self, account_id: str, slot: Slot) -> str:
        key = generate_key()
        lookup = _lookup(key)
        slots_key = keyspace.AccountKeys(account_id).key_slots
        # The lookup record is global and the slot pointer is in the account's cluster slot,
        # so no transaction can span both. The order keeps every moment safe: the new key
        # works before the slot points at it, and the old one dies last.
        await self._redis.hset(
            keyspace.api_key(lookup),
            mapping={
                "account": account_id,
                "slot": slot,
                "digest": _digest(key),
                "disabled": "0",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        previous = await self._redis.hget(slots_key, slot)
        await self._redis.hset(slots_key, slot, lookup)
        if previous is not None:
            await self._redis.delete(keyspace.api_key(previous))
        return key
