"""API keys: two slots per account, stored as a digest plus a public lookup prefix.

A key is ``rk_live_`` followed by 44 random letters and digits (~262 bits). Its first
``LOOKUP_LENGTH`` random characters are the lookup prefix, the only part stored in clear;
the rest is checked against a SHA-256 digest with a constant-time comparison. A salted slow
hash buys nothing for a secret this long and would cost every request milliseconds. The
full key is returned once, when a slot is filled or regenerated, and never again.

Beside the digest a record keeps what the dashboard's key page shows: a label, when and by
whom the key was made, its last four characters (``rk_live_…abcd``: 24 of its ~262 bits,
as GitHub and Stripe show) and when it was last used, to the minute (:meth:`KeyStore.seen`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import string
import time
from datetime import UTC, datetime
from typing import Literal, get_args

import msgspec

from engine import keyspace
from engine.errors import Conflict, DisabledApiKey, InvalidApiKey, NotFound
from engine.state import Client, redis_boundary

KEY_PREFIX = "rk_live_"
RANDOM_LENGTH = 44
LOOKUP_LENGTH = 12
KEY_PATTERN = rf"{KEY_PREFIX}[A-Za-z0-9]{{{RANDOM_LENGTH}}}"
KEY_SHAPE = re.compile(rf"\A{KEY_PATTERN}\Z")
USE_GRANULARITY_S = 60
"""``last_used`` is rewritten at most once a minute per key (per process): "last used"
is for telling a live key from a forgotten one, which needs no finer grain."""
LABEL_LENGTH = 64

log = logging.getLogger("rapport.apikeys")
_ALPHABET = string.ascii_letters + string.digits

Slot = Literal["primary", "secondary"]
SLOTS: tuple[Slot, ...] = get_args(Slot)


Role = Literal["owner", "admin", "viewer"]
"""A dashboard user's role in its account: ``admin`` is everything but managing users,
``viewer`` reads only (:mod:`engine.users`)."""


class Principal(msgspec.Struct, frozen=True):
    """Who a request authenticated as: an API key (``slot``), or a dashboard user's browser
    session (``slot`` None, ``user_id`` and ``role`` set; :mod:`engine.signin`)."""

    account_id: str
    slot: Slot | None
    user_id: str | None = None
    role: Role | None = None

    @property
    def window(self) -> str:
        """Whose per-key request window (RAPPORT_KEY_RPM) a request counts against: the key's
        slot, or for a browser session its user's own, ``user:<id>``. A dashboard user
        shares no key's window, so a busy integration never slows the dashboard, nor the
        dashboard an integration; the ``user:`` prefix cannot meet a slot's name."""
        return self.slot if self.slot is not None else f"user:{self.user_id}"


class SlotState(msgspec.Struct, frozen=True, kw_only=True):
    """What may be shown about a filled slot: never the key, only its last four characters
    (its lookup prefix's first four for a key made before they were kept)."""

    slot: Slot
    label: str
    hint: str
    """``rk_live_…abcd``."""
    disabled: bool
    created_at: str
    created_by: str
    """An :mod:`engine.audit` actor (``cli``, ``user:<id>``); empty for older keys."""
    last_used: str | None
    """ISO 8601 to the minute; None: never used (since it was recorded)."""


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _lookup(key: str) -> str:
    return key[len(KEY_PREFIX) : len(KEY_PREFIX) + LOOKUP_LENGTH]


def generate_key() -> str:
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(RANDOM_LENGTH))


_TOUCH = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], 'last_used', ARGV[1])
end
"""
"""Set ``last_used`` only on a record that still exists: a plain HSET on a key regenerated
meanwhile would leave a record without a digest behind."""


_UNPOINT = """
if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('hdel', KEYS[1], ARGV[1])
end
"""
"""Clear a slot's pointer only while it still names the key being deleted."""


def _minute(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="minutes")


class KeyStore:
    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._touch = redis.register_script(_TOUCH)
        self._unpoint = redis.register_script(_UNPOINT)
        self._writing: dict[str, asyncio.Task[None]] = {}
        """Record key -> its ``last_used`` write in flight (held here until done: the event
        loop keeps only a weak reference to a task)."""

    @redis_boundary
    async def authenticate(self, presented: str) -> Principal:
        # A malformed key cannot match: answer without a Redis round trip.
        record_key = self.record_key(presented)
        record = await self._redis.hgetall(record_key)
        principal = self.principal(presented, record)
        self.seen(record_key, record)
        return principal

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
    async def create(self, account_id: str, slot: Slot, *, label: str = "", by: str = "cli") -> str:
        """Fill an empty slot; returns the full key, the only time it is visible. ``by`` is
        the :mod:`engine.audit` actor who asked."""
        if await self._redis.hexists(keyspace.AccountKeys(account_id).key_slots, slot):
            raise Conflict(f"The {slot} slot already holds a key; regenerate it instead.")
        return await self._issue(account_id, slot, label, by)

    @redis_boundary
    async def regenerate(
        self, account_id: str, slot: Slot, *, label: str | None = None, by: str = "cli"
    ) -> str:
        """Replace a slot's key (the old one stops working at once); the slot is enabled.
        It keeps its label unless ``label`` is given."""
        if label is None:
            lookup = await self._redis.hget(keyspace.AccountKeys(account_id).key_slots, slot)
            old = await self._redis.hget(keyspace.api_key(lookup), "label") if lookup else None
            label = old or ""
        return await self._issue(account_id, slot, label, by)

    def seen(self, record_key: str, record: dict[str, str]) -> None:
        """Note that the key of ``record`` (found at ``record_key``) authenticated: a write
        in the background, at most once a minute per key, so the request waits for no
        extra round trip."""
        now = int(time.time())
        if now - int(record.get("last_used") or 0) < USE_GRANULARITY_S:
            return
        if record_key in self._writing:
            return
        task = asyncio.create_task(self._note_use(record_key, now))
        self._writing[record_key] = task
        task.add_done_callback(lambda _: self._writing.pop(record_key, None))

    async def _note_use(self, record_key: str, now: int) -> None:
        try:
            await self._touch(keys=[record_key], args=[str(now)])
        except Exception:  # a lost "last used" costs nothing the request needs
            log.warning("last_used of a key not written", exc_info=True)

    @redis_boundary
    async def set_disabled(self, account_id: str, slot: Slot, disabled: bool) -> None:
        lookup = await self._slot_lookup(account_id, slot)
        await self._redis.hset(keyspace.api_key(lookup), "disabled", "1" if disabled else "0")

    @redis_boundary
    async def set_label(self, account_id: str, slot: Slot, label: str) -> None:
        lookup = await self._slot_lookup(account_id, slot)
        await self._redis.hset(keyspace.api_key(lookup), "label", label[:LABEL_LENGTH])

    @redis_boundary
    async def delete(self, account_id: str, slot: Slot) -> None:
        """Empty a slot: its key stops working at once and the slot may be filled again."""
        lookup = await self._slot_lookup(account_id, slot)
        # The record first, so the key is dead whatever happens next; the pointer only if it
        # still names this key (a regenerate landing meanwhile keeps its new key's pointer).
        await self._redis.delete(keyspace.api_key(lookup))
        await self._unpoint(keys=[keyspace.AccountKeys(account_id).key_slots], args=[slot, lookup])

    @redis_boundary
    async def slots(self, account_id: str) -> list[SlotState]:
        pointers = await self._redis.hgetall(keyspace.AccountKeys(account_id).key_slots)
        states = []
        for slot in SLOTS:
            lookup = pointers.get(slot)
            if lookup is None:
                continue
            record = await self._redis.hgetall(keyspace.api_key(lookup))
            used = record.get("last_used")
            last4 = record.get("last4")
            states.append(
                SlotState(
                    slot=slot,
                    label=record.get("label", ""),
                    hint=f"{KEY_PREFIX}…{last4}" if last4 else f"{KEY_PREFIX}{lookup[:4]}…",
                    disabled=record.get("disabled") == "1",
                    created_at=record.get("created_at", ""),
                    created_by=record.get("created_by", ""),
                    last_used=_minute(int(used)) if used else None,
                )
            )
        return states

    async def _slot_lookup(self, account_id: str, slot: Slot) -> str:
        lookup = await self._redis.hget(keyspace.AccountKeys(account_id).key_slots, slot)
        if lookup is None:
            raise NotFound(f"The {slot} slot holds no key; create one first.")
        return lookup

    async def _issue(self, account_id: str, slot: Slot, label: str, by: str) -> str:
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
                "created_by": by,
                "label": label[:LABEL_LENGTH],
                "last4": key[-4:],
            },
        )
        previous = await self._redis.hget(slots_key, slot)
        await self._redis.hset(slots_key, slot, lookup)
        if previous is not None:
            await self._redis.delete(keyspace.api_key(previous))
        return key
