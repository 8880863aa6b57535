"""Dashboard browser sessions ("sign-ins"), kept in Redis so the server can end them.

A sign-in is named by an opaque 256-bit id (``secrets.token_urlsafe(32)``; ASVS V7.2.1) in
the ``__Host-rapport_session`` cookie; Redis keeps only its SHA-256, so a copy of the
database signs no one in. Its record holds the user, account, role, a CSRF token (the
synchronizer token every cookie-authenticated write must echo in ``X-CSRF-Token``), when it
began and when it was last used. A new id is made at every sign-in (ASVS V7.2.4).

It ends when idle for RAPPORT_DASHBOARD_IDLE_SECONDS (the key's TTL, pushed back on every
use) or RAPPORT_DASHBOARD_MAX_SECONDS after it began, however busy (ASVS V7.3.1, V7.3.2),
or at sign-out. Each user's sign-ins are indexed in its account's slot, so "sign out
everywhere", disabling a user and a new password end all of them at once (ASVS V7.4.1-3).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import msgspec

from engine import keyspace
from engine.apikeys import Principal, Role
from engine.errors import SignedOut
from engine.state import Client, redis_boundary

COOKIE = "__Host-rapport_session"
"""RFC 6265bis §4.1.3.2: a ``__Host-`` cookie is only kept when Secure, with Path=/ and no
Domain, so no sibling subdomain or plain-http page can plant or read it."""


class SignIn(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    account_id: str
    email: str
    role: Role
    csrf_token: str
    created_ms: int
    seen_ms: int

    def principal(self) -> Principal:
        return Principal(self.account_id, None, user_id=self.user_id, role=self.role)

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.csrf_token.encode()
        )


def _digest(cookie_id: str) -> str:
    return hashlib.sha256(cookie_id.encode()).hexdigest()


class SignInStore:
    def __init__(
        self,
        redis: Client,
        *,
        idle_seconds: int,
        max_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @redis_boundary
    async def start(
        self, user_id: str, account_id: str, email: str, role: Role
    ) -> tuple[str, SignIn]:
        """A new sign-in: its cookie id (shown to the browser only) and its record. Sign-ins
        of the user that have ended are dropped from its index on the way."""
        cookie_id = secrets.token_urlsafe(32)
        now = self._now_ms()
        signin = SignIn(
            user_id=user_id,
            account_id=account_id,
            email=email,
            role=role,
            csrf_token=secrets.token_urlsafe(32),
            created_ms=now,
            seen_ms=now,
        )
        index = keyspace.AccountKeys(account_id).user_signins(user_id)
        stale = [
            member
            for member in await self._redis.smembers(index)
            if not await self._redis.exists(keyspace.signin(member))
        ]
        record_key = keyspace.signin(_digest(cookie_id))
        # Not a transaction: the record and the index sit in different cluster slots.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(record_key, mapping=msgspec.structs.asdict(signin))
            pipe.pexpire(record_key, self.idle_seconds * 1000)
            pipe.sadd(index, _digest(cookie_id))
            if stale:
                pipe.srem(index, *stale)
            # The index outlives every sign-in it lists.
            pipe.expire(index, self.max_seconds)
            await pipe.execute()
        return cookie_id, signin

    @redis_boundary
    async def get(self, cookie_id: str) -> SignIn:
        """The live sign-in ``cookie_id`` names, its last use moved to now; else SignedOut."""
        record_key = keyspace.signin(_digest(cookie_id))
        record = await self._redis.hgetall(record_key)
        if not record:
            raise SignedOut()
        signin = msgspec.convert(record, SignIn, strict=False)
        now = self._now_ms()
        left_ms = signin.created_ms + self.max_seconds * 1000 - now
        if left_ms <= 0 or now - signin.seen_ms >= self.idle_seconds * 1000:
            await self._end(signin, _digest(cookie_id))
            raise SignedOut()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(record_key, "seen_ms", now)
            pipe.pexpire(record_key, min(self.idle_seconds * 1000, left_ms))
            await pipe.execute()
        return msgspec.structs.replace(signin, seen_ms=now)

    @redis_boundary
    async def end(self, cookie_id: str) -> None:
        """Sign out: the id is refused from now on."""
        record_key = keyspace.signin(_digest(cookie_id))
        record = await self._redis.hgetall(record_key)
        if record:
            await self._end(msgspec.convert(record, SignIn, strict=False), _digest(cookie_id))

    @redis_boundary
    async def end_all(self, account_id: str, user_id: str) -> int:
        """End every sign-in of the user; how many were listed."""
        index = keyspace.AccountKeys(account_id).user_signins(user_id)
        members = await self._redis.smembers(index)
        async with self._redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.delete(keyspace.signin(member))
            pipe.delete(index)
            await pipe.execute()
        return len(members)

    async def _end(self, signin: SignIn, cookie_digest: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(keyspace.signin(cookie_digest))
            pipe.srem(
                keyspace.AccountKeys(signin.account_id).user_signins(signin.user_id),
                cookie_digest,
            )
            await pipe.execute()
