"""Accounts: the tenants, their plan limits and what they have used."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import redis.asyncio as aioredis

from engine import keyspace
from engine.errors import Conflict, NotFound, ValidationFailed
from engine.ids import new_id
from engine.state import redis_boundary

ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
BYTES_PER_STORAGE_UNIT = 1_048_576
"""Seed 000 counts storage units in MB; Rapport's MB is the binary one."""


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What an account may use. Defaults are the self-hosted plan."""

    knowledge_units: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    storage_units: Annotated[float, msgspec.Meta(ge=0)] = 512.0
    max_concurrent_sessions: Annotated[int, msgspec.Meta(ge=0)] = 10
    initial_requests: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    """The request balance a new account starts with (each reply spends one)."""
    allowed_origins: list[str] = msgspec.field(default_factory=list)


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
    def __init__(self, redis: aioredis.Redis) -> None:
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
        raws = await self._redis.mget([keyspace.AccountKeys(i).account for i in ids])
        accounts = [_decode_account(raw) for raw in raws if raw is not None]
        return sorted(accounts, key=lambda a: a.created_at)

    @redis_boundary
    async def exists_any(self) -> bool:
        return bool(await self._redis.hlen(keyspace.ACCOUNTS))

    @redis_boundary
    async def set_default_persona(self, account_id: str, persona_id: str) -> Account:
        account = msgspec.structs.replace(await self.get(account_id), default_persona_id=persona_id)
        await self._redis.set(keyspace.AccountKeys(account_id).account, _encode(account))
        return account

    @redis_boundary
    async def usage(self, account_id: str) -> Usage:
        raw = await self._redis.hgetall(keyspace.AccountKeys(account_id).usage)
        return Usage(
            knowledge_units=int(raw.get("knowledge_units", 0)),
            storage_bytes=int(raw.get("storage_bytes", 0)),
        )
