"""Accounts: the tenants, their plan limits and what they have used."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from redis.exceptions import WatchError

from engine import keyspace
from engine.errors import Conflict, NotFound, ValidationFailed
from engine.ids import new_id
from engine.state import Client, redis_boundary

ACCOUNT_NAME = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")
BYTES_PER_STORAGE_UNIT = 1_048_576
"""Seed 000 counts storage units in MB; Rapport's MB is the binary one."""
DEFAULT_PORTS = {"http": 80, "https": 443}
"""The schemes an allowed origin may have, and the port RFC 6454 leaves out for each."""
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>\[[0-9a-f:.]+\]|(?:[a-z0-9_-]+\.)*[a-z0-9_-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
UPDATE_TRIES = 50
"""Tries of one read-change-write of an account record. A lost try means another write
won; operators and persona changes are the only writers, so 50 is far beyond any real race."""


def normalise_origin(value: str) -> str:
    """``value`` as RFC 6454 serialises an origin: ``scheme://host[:port]``, scheme and host
    lower-cased, the scheme's default port dropped. Browsers send exactly that form in
    ``Origin``, so an allowed origin stored this way compares equal to theirs with ``==``.
    Anything else (``*``, ``null``, another scheme, a path, user info) raises
    ValidationFailed: an allow list entry that can never match would only mislead."""
    # ASCII first: str.lower() turns some non-ASCII letters (the Kelvin sign) into ASCII ones.
    match = _ORIGIN.fullmatch(value.lower()) if value.isascii() else None
    port = int(match["port"]) if match and match["port"] else None
    if (
        match is None
        or match["scheme"] not in DEFAULT_PORTS
        or (port is not None and not 0 < port < 65536)
    ):
        raise _not_an_origin(value)
    host = match["host"]
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise _not_an_origin(value) from None
    if port is None or port == DEFAULT_PORTS[match["scheme"]]:
        return f"{match['scheme']}://{host}"
    return f"{match['scheme']}://{host}:{port}"


def _not_an_origin(value: str) -> ValidationFailed:
    reason = (
        "must be scheme://host[:port] with scheme http or https and no user info, path, "
        "query or fragment"
    )
    return ValidationFailed(
        f"{value!r} is not an origin: it {reason}.", errors={"origin": [reason]}
    )


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What an account may use. Defaults are the self-hosted plan."""

    knowledge_units: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    storage_units: Annotated[float, msgspec.Meta(ge=0)] = 512.0
    max_concurrent_sessions: Annotated[int, msgspec.Meta(ge=0)] = 10
    initial_requests: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    """The request balance a new account starts with (each reply spends one)."""
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    """Normalised origins (:func:`normalise_origin`) browsers may call from; empty: any."""

    def allows_origin(self, origin: str | None) -> bool:
        """Whether a request with this ``Origin`` header may use the account.

        No Origin header means no browser sent it (a backend, a script), and the list is
        there to stop other sites' pages from using a key, so such a request passes. A
        present Origin must be one in the list; one that does not parse (``null`` from a
        sandboxed page or a file) matches nothing and is refused."""
        if not self.allowed_origins or origin is None:
            return True
        try:
            return normalise_origin(origin) in self.allowed_origins
        except ValidationFailed:
            return False


class Account(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created_at: datetime
    plan: Plan = msgspec.field(default_factory=Plan)
    default_persona_id: str | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    knowledge_units: int = 0
    storage_bytes: int = 0

    @property
    def storage_units(self) -> float:
        return round(self.storage_bytes / BYTES_PER_STORAGE_UNIT, 2)


_encode = msgspec.json.Encoder().encode
_decode_account = msgspec.json.Decoder(Account).decode


class AccountStore:
    def __init__(self, redis: Client) -> None:
        self._redis = redis

    @redis_boundary
    async def create(self, name: str, plan: Plan | None = None) -> Account:
        if not ACCOUNT_NAME.match(name):
            raise ValidationFailed(
                "Account names are 1-64 letters, digits, '.', '_' or '-'.",
                errors={"name": ["must match ^[A-Za-z0-9._-]{1,64}$"]},
            )
        account = Account(id=new_id(), name=name, created_at=datetime.now(UTC), plan=plan or Plan())
        keys = keyspace.AccountKeys(account.id)
        # The record is written before the name is claimed, so a claimed name always
        # resolves; a lost race leaves nothing behind.
        await self._redis.set(keys.account, _encode(account))
        await self._redis.set(keys.balance, account.plan.initial_requests)
        if not await self._redis.hsetnx(keyspace.ACCOUNT_NAMES, name, account.id):
            await self._redis.delete(keys.account, keys.balance)
            raise Conflict(f"An account named {name!r} already exists.")
        await self._redis.hset(keyspace.ACCOUNTS, account.id, name)
        return account

    @redis_boundary
    async def get(self, account_id: str) -> Account:
        raw = await self._redis.get(keyspace.AccountKeys(account_id).account)
        if raw is None:
            raise NotFound(f"No account {account_id!r}.")
        return _decode_account(raw)

    @redis_boundary
    async def resolve(self, id_or_name: str) -> Account:
        """Find an account by id, or else by name (the CLI accepts either)."""
        account_id = await self._redis.hget(keyspace.ACCOUNT_NAMES, id_or_name)
        return await self.get(account_id or id_or_name)

    @redis_boundary
    async def list(self) -> list[Account]:
        ids = sorted(await self._redis.hkeys(keyspace.ACCOUNTS))
        if not ids:
            return []
        # One GET each, pipelined, not an MGET: each record is in its account's own slot,
        # and a Redis Cluster refuses an MGET across slots (redis-py splits a pipeline
        # without a transaction by node); on one Redis it is still one round trip.
        async with self._redis.pipeline(transaction=False) as pipe:
            for account_id in ids:
                pipe.get(keyspace.AccountKeys(account_id).account)
            raws = await pipe.execute()
        accounts = [_decode_account(raw) for raw in raws if raw is not None]
        return sorted(accounts, key=lambda a: a.created_at)

    @redis_boundary
    async def exists_any(self) -> bool:
        return bool(await self._redis.hlen(keyspace.ACCOUNTS))

    @redis_boundary
    async def set_default_persona(self, account_id: str, persona_id: str) -> Account:
        return await self._update(
            account_id,
            lambda account: msgspec.structs.replace(account, default_persona_id=persona_id),
        )

    @redis_boundary
    async def set_plan(
        self,
        account_id: str,
        *,
        max_concurrent_sessions: int | None = None,
        knowledge_units: int | None = None,
        storage_units: float | None = None,
    ) -> Account:
        """Change the given plan limits and leave the others as they are."""
        changes: dict[str, int | float] = {
            name: value
            for name, value in (
                ("max_concurrent_sessions", max_concurrent_sessions),
                ("knowledge_units", knowledge_units),
                ("storage_units", storage_units),
            )
            if value is not None
        }
        # NaN and infinity fail too: msgspec writes them as null, which no longer decodes.
        bad = [name for name, value in changes.items() if not (math.isfinite(value) and value >= 0)]
        if bad:
            raise ValidationFailed(
                f"Plan limits must be 0 or more: {', '.join(bad)}.",
                errors={name: ["must be a number, 0 or more"] for name in bad},
            )
        if not changes:
            return await self.get(account_id)
        return await self._update(
            account_id,
            lambda account: msgspec.structs.replace(
                account, plan=msgspec.structs.replace(account.plan, **changes)
            ),
        )

    @redis_boundary
    async def add_origin(self, account_id: str, origin: str) -> Account:
        """Let browsers on ``origin`` use the account; adding one already there changes
        nothing."""
        normalised = normalise_origin(origin)

        def add(account: Account) -> Account:
            if normalised in account.plan.allowed_origins:
                return account
            origins = [*account.plan.allowed_origins, normalised]
            return msgspec.structs.replace(
                account, plan=msgspec.structs.replace(account.plan, allowed_origins=origins)
            )

        return await self._update(account_id, add)

    @redis_boundary
    async def remove_origin(self, account_id: str, origin: str) -> Account:
        """Stop browsers on ``origin`` from using the account. Removing the last one lets
        every origin in again, the same as never having set any."""
        normalised = normalise_origin(origin)

        def remove(account: Account) -> Account:
            if normalised not in account.plan.allowed_origins:
                raise NotFound(f"{normalised} is not an allowed origin of {account.name}.")
            origins = [o for o in account.plan.allowed_origins if o != normalised]
            return msgspec.structs.replace(
                account, plan=msgspec.structs.replace(account.plan, allowed_origins=origins)
            )

        return await self._update(account_id, remove)

    async def _update(self, account_id: str, change: Callable[[Account], Account]) -> Account:
        """Store ``change(account)`` in place of the record, unless another write lands
        between the read and the write (WATCH/MULTI): then read again and apply ``change``
        to that, so no concurrent change is lost. ``change`` returning its argument itself
        writes nothing."""
        key = keyspace.AccountKeys(account_id).account
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(UPDATE_TRIES):
                await pipe.watch(key)
                raw = await pipe.get(key)
                if raw is None:
                    raise NotFound(f"No account {account_id!r}.")
                current = _decode_account(raw)
                changed = change(current)
                if changed is current:
                    return current
                pipe.multi()
                pipe.set(key, _encode(changed))
                try:
                    await pipe.execute()
                except WatchError:
                    continue
                return changed
        raise Conflict(f"Account {account_id!r} kept changing under this update; try again.")

    @redis_boundary
    async def usage(self, account_id: str) -> Usage:
        raw = await self._redis.hgetall(keyspace.AccountKeys(account_id).usage)
        return Usage(
            knowledge_units=int(raw.get("knowledge_units", 0)),
            storage_bytes=int(raw.get("storage_bytes", 0)),
        )
