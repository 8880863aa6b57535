"""Dashboard users: per account, with a role, signing in with an email and a password.

There is no public sign-up and no default password (OWASP ASVS V6.3.2): the CLI (or an
owner) creates a user, which gets a one-time set-password link. The link's token is 256
random bits, stored only as its SHA-256 (a leaked database holds no usable link), lives 24
hours and works once; a newer link for the same user voids the older.

Emails are unique in the whole deployment (:data:`engine.keyspace.USER_EMAILS`), so a
sign-in sends ``{email, password}`` and names no account.

Passwords (ASVS V6.2): 8 to 128 characters, no composition rules, and none of the 1,000
most common (``common_passwords.txt``: the head of Django's list, compared lowercased as
Django does). They are hashed with Argon2id at RFC 9106's second recommended profile
(t=3, m=64 MiB, p=4; argon2-cffi's default), measured on this 2-core machine at ~140 ms a
verify (``bench/login.py``; BENCHMARKS.md). Hashing runs on a pool of its own,
:data:`HASHING_AT_ONCE` threads per process, so a burst of sign-ins neither blocks the event
loop nor holds 64 MiB for each of the default pool's workers. Those threads run at the lowest
CPU priority (nice 19; Argon2's lane threads inherit it): a hash is worth ~140 ms of both
cores, and a burst of sign-ins at the same priority as the turns took every core from them
(turn p99 22.6 times worse, BENCHMARKS.md "Logins per second against turns"). A sign-in
now waits for the CPU that turns leave.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import TypeVar, get_args

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import RFC_9106_LOW_MEMORY
from redis.exceptions import WatchError

from engine import keyspace
from engine.apikeys import Role
from engine.errors import Conflict, InvalidCredentials, NotFound, ValidationFailed
from engine.ids import new_id
from engine.signin import SignInStore
from engine.state import Client, redis_boundary

T = TypeVar("T")

ROLES: tuple[Role, ...] = get_args(Role)
PASSWORD_MIN = 8
PASSWORD_MAX = 128
LINK_SECONDS = 24 * 3600
HASHING_AT_ONCE = 2
"""Argon2 hashes a process computes at once: the cores of the machine measured."""
HASHER = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)
UPDATE_TRIES = 5
"""Reads of the account's users a change makes while other writes keep landing."""


LOWEST_PRIORITY = 19
"""nice(2)'s lowest priority: the hashing threads get the CPU no request wants."""


def _lower_priority() -> None:
    """Run the calling thread, and the threads it starts, at :data:`LOWEST_PRIORITY`. On
    Linux a nice value belongs to a thread (sched(7)) and a new thread inherits it; elsewhere
    the call would name a process, so the threads keep the process's priority."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)


@cache
def hashing_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        HASHING_AT_ONCE, thread_name_prefix="argon2", initializer=_lower_priority
    )


class WrongPassword(InvalidCredentials):
    """A known user's wrong password: answered as any InvalidCredentials (the caller learns
    nothing more), but the route can write it to the user's account's audit log."""

    def __init__(self, user: User) -> None:
        super().__init__()
        self.user = user


@cache
def common_passwords() -> frozenset[str]:
    text = files("engine").joinpath("common_passwords.txt").read_text()
    return frozenset(text.split())


def check_password(password: str) -> None:
    """Raise ValidationFailed unless ``password`` may be set (ASVS V6.2.1, V6.2.4, V6.2.9)."""
    problem = None
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        problem = f"A password has {PASSWORD_MIN} to {PASSWORD_MAX} characters."
    elif password.lower().strip() in common_passwords():
        problem = "This password is one of the most common; choose another."
    if problem is not None:
        raise ValidationFailed(problem, errors={"password": [problem]})


def normalise_email(email: str) -> str:
    """An email as stored and compared: trimmed, lowercased (two spellings of one mailbox
    must not make two users)."""
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or len(email) > 254 or not email.isprintable():
        raise ValidationFailed("Not an email address.", errors={"email": ["Not an email."]})
    if any(c.isspace() for c in email):
        raise ValidationFailed("Not an email address.", errors={"email": ["Not an email."]})
    return email


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    account_id: str
    email: str
    role: Role
    disabled: bool = False
    password_hash: str = ""
    """Empty until the user follows its set-password link."""
    link_digest: str = ""
    """SHA-256 of the latest set-password link's token; the only link that works."""
    created_at: datetime


def owns(user: User) -> bool:
    """Whether ``user`` is an owner who can sign in now (enabled, its password set)."""
    return user.role == "owner" and not user.disabled and bool(user.password_hash)


class UserStore:
    def __init__(
        self, redis: Client, signins: SignInStore, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = redis
        self._signins = signins
        self._clock = clock
        self._dummy: str | None = None

    async def _in_thread(self, work: Callable[..., T], *args: str) -> T:
        return await asyncio.get_running_loop().run_in_executor(hashing_pool(), work, *args)

    @redis_boundary
    async def create(self, account_id: str, email: str, role: Role) -> tuple[User, str]:
        """A new user without a password, and its set-password link's token."""
        email = normalise_email(email)
        user = User(
            id=new_id(),
            account_id=account_id,
            email=email,
            role=role,
            created_at=datetime.now(UTC),
        )
        if not await self._redis.hsetnx(keyspace.USER_EMAILS, email, f"{account_id}/{user.id}"):
            raise Conflict(f"A dashboard user with the email {email!r} exists already.")
        await self._save(user)
        return user, await self.issue_link(user)

    @redis_boundary
    async def issue_link(self, user: User) -> str:
        """A new set-password link for ``user`` (created, or reset); older ones stop working."""
        token = secrets.token_urlsafe(32)
        token_digest = digest(token)
        await self._redis.set(
            keyspace.password_link(token_digest), f"{user.account_id}/{user.id}", ex=LINK_SECONDS
        )
        # Only the link changes: ``user`` may be older than a change made meanwhile.
        await self._update(
            user.account_id,
            user.id,
            lambda now, _: msgspec.structs.replace(now, link_digest=token_digest),
        )
        return token

    @redis_boundary
    async def list(self, account_id: str) -> list[User]:
        records = await self._redis.hvals(keyspace.AccountKeys(account_id).users)
        users = [msgspec.json.decode(raw, type=User) for raw in records]
        return sorted(users, key=lambda user: user.created_at)

    @redis_boundary
    async def get(self, account_id: str, user_id: str) -> User:
        raw = await self._redis.hget(keyspace.AccountKeys(account_id).users, user_id)
        if raw is None:
            raise NotFound("No such dashboard user.")
        return msgspec.json.decode(raw, type=User)

    async def by_email(self, account_id: str, email: str) -> User:
        for user in await self.list(account_id):
            if user.email == normalise_email(email):
                return user
        raise NotFound(f"No dashboard user {email!r} in this account.")

    async def set_disabled(self, user: User, disabled: bool) -> User:
        """Disable or enable, as ``rapport users disable|enable``: the host's operator may
        disable even the last owner (a stolen owner's account), and make another with
        ``rapport users create``."""
        return (await self.change(user.account_id, user.id, disabled=disabled, keep_owner=False))[1]

    @redis_boundary
    async def change(
        self,
        account_id: str,
        user_id: str,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        keep_owner: bool = True,
    ) -> tuple[User, User]:
        """Set a user's ``role`` and/or ``disabled`` (None keeps it); the user before and
        after. A change ends every browser session of the user (ASVS V7.4.2): a sign-in
        carries the role it began with (:mod:`engine.signin`), so a demoted admin's open
        tab loses its powers at once, and a disabled user's tabs are signed out.

        With ``keep_owner`` (the dashboard), the account's last owner who can sign in
        stays an enabled owner (Conflict): else no one could manage its users but the CLI.
        Checked and written under WATCH, so two owners demoting each other at once cannot
        both succeed."""

        def edit(before: User, others: list[User]) -> User:
            after = msgspec.structs.replace(
                before,
                role=before.role if role is None else role,
                disabled=before.disabled if disabled is None else disabled,
            )
            if keep_owner and owns(before) and not owns(after) and not any(map(owns, others)):
                raise Conflict(
                    "This is the account's last owner who can sign in: make another user"
                    " an owner first."
                )
            return after

        before, after = await self._update(account_id, user_id, edit)
        if after != before:
            await self._signins.end_all(account_id, user_id)
        return before, after

    async def _update(
        self, account_id: str, user_id: str, edit: Callable[[User, list[User]], User]
    ) -> tuple[User, User]:
        """The user before and after ``edit(user, the account's other users)``, read and
        written under WATCH: every change to a user record goes through here, so none writes
        back a copy read before another change landed (a set-password link issued from an
        old copy would enable a user disabled meanwhile). ``edit`` may raise to refuse."""
        key = keyspace.AccountKeys(account_id).users
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(UPDATE_TRIES):
                await pipe.watch(key)
                users = [msgspec.json.decode(raw, type=User) for raw in await pipe.hvals(key)]
                before = next((user for user in users if user.id == user_id), None)
                if before is None:
                    raise NotFound("No such dashboard user.")
                after = edit(before, [user for user in users if user.id != user_id])
                if after == before:
                    return before, after
                pipe.multi()
                pipe.hset(key, user_id, msgspec.json.encode(after))
                try:
                    await pipe.execute()
                except WatchError:
                    continue
                return before, after
        raise Conflict("The account's users kept changing under this change; try again.")

    @redis_boundary
    async def authenticate(self, email: str, password: str) -> User:
        """The user ``email`` names, when ``password`` is its password and it may sign in;
        else InvalidCredentials, the same for every reason and after the same work: an
        unknown email is verified against a dummy hash (no timing tells who exists)."""
        user = None
        try:
            ref = await self._redis.hget(keyspace.USER_EMAILS, normalise_email(email))
        except ValidationFailed:
            ref = None
        if ref is not None:
            account_id, _, user_id = ref.partition("/")
            raw = await self._redis.hget(keyspace.AccountKeys(account_id).users, user_id)
            user = None if raw is None else msgspec.json.decode(raw, type=User)
        if user is None or user.disabled or not user.password_hash:
            await self._in_thread(self._verify, await self._dummy_hash(), password)
            raise InvalidCredentials()
        if not await self._in_thread(self._verify, user.password_hash, password):
            raise WrongPassword(user)
        if HASHER.check_needs_rehash(user.password_hash):
            # Parameters raised since this hash was made: upgrade it while the password is known.
            rehashed = await self._in_thread(HASHER.hash, password)
            verified = user.password_hash

            def upgrade(now: User, _: list[User]) -> User:
                # Unless the password changed meanwhile: then the new one stays.
                if now.password_hash != verified:
                    return now
                return msgspec.structs.replace(now, password_hash=rehashed)

            await self._update(user.account_id, user.id, upgrade)
        return user

    @redis_boundary
    async def confirm(self, account_id: str, user_id: str, password: str) -> bool:
        """Whether ``password`` is the signed-in user's own: asked again before a key is
        shown (ASVS V6.2.3's re-authentication before a sensitive change)."""
        user = await self.get(account_id, user_id)
        if user.disabled or not user.password_hash:
            return False
        return await self._in_thread(self._verify, user.password_hash, password)

    @redis_boundary
    async def set_password(self, token: str, password: str) -> User:
        """Follow a set-password link: the password is set, the link spent, and every
        browser session of the user ended (ASVS V7.4.3)."""
        check_password(password)  # before the link is spent: a refused password keeps it
        token_digest = digest(token)
        unknown = ValidationFailed(
            "This set-password link is unknown, used or expired; ask for a new one.",
            errors={"token": ["unknown, used or expired"]},
        )
        ref = await self._redis.getdel(keyspace.password_link(token_digest))
        if ref is None:
            raise unknown
        account_id, _, user_id = ref.partition("/")
        hashed = await self._in_thread(HASHER.hash, password)

        def spend(user: User, _: list[User]) -> User:
            # Checked on the record as it is now: a newer link voids this one (issue_link).
            if user.link_digest != token_digest:
                raise unknown
            return msgspec.structs.replace(user, password_hash=hashed, link_digest="")

        try:
            _, changed = await self._update(account_id, user_id, spend)
        except NotFound:
            raise unknown from None
        await self._signins.end_all(account_id, user_id)
        return changed

    async def _save(self, user: User) -> None:
        await self._redis.hset(
            keyspace.AccountKeys(user.account_id).users, user.id, msgspec.json.encode(user)
        )

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await self._in_thread(HASHER.hash, secrets.token_urlsafe(16))
        return self._dummy

    @staticmethod
    def _verify(password_hash: str, password: str) -> bool:
        try:
            return HASHER.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
