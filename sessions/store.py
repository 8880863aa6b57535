"""Live sessions in Redis: minting, the token, budgets, the socket's ownership, resume.

A session is one hash (:meth:`engine.keyspace.AccountKeys.session`), listed in the account's
``sessions`` set while it has not ended, with its server events in a bounded stream for
resume (/work/shared/DESIGN.md, "Live sessions"). Budgets live here, not in a socket, so they
hold across reconnects, workers and nodes.

Every step that reads and then writes is one Lua script, so concurrent sockets, turns and
``DELETE`` calls cannot interleave: ending (the first end wins), attaching a socket, charging
billing units. Every script touches the keys of one account only (one cluster slot); the
scripts that end a session also ``PUBLISH`` a :class:`Control` on
:data:`engine.keyspace.SESSION_CONTROL`, a channel and no key, so the node holding the
session's socket closes it, whichever node ended it.

A session ends when told to (:meth:`SessionStore.end`) or when a window lapses, which is
noticed lazily, by whoever looks next (:meth:`SessionStore.get`, ``live``, ``admit``), in
the same script that reads it: a token not used within ``RAPPORT_SESSION_CONNECT_SECONDS``
(close 4001), a socket gone longer than ``RAPPORT_SESSION_RESUME_SECONDS`` (1000), the
duration spent (4006). An ended session stays readable for :data:`KEEP_ENDED_SECONDS`, so
``GET`` can say how it ended; its events go at once (no resume after an end).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine import keyspace
from engine.errors import (
    SessionGone,
    SessionTimeLimit,
    SessionTokenInvalid,
    ValidationFailed,
)
from engine.ids import uuid7
from engine.personas import Mode, Persona
from engine.state import redis_boundary
from engine.turn_store import Budget

log = logging.getLogger("rapport.sessions")

KEEP_ENDED_SECONDS = 3600
"""How long an ended session can still be read."""
LISTEN_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0)
"""Waits before resubscribing after Redis dropped the control channel, then the last again."""

# "<account>.<session>.<secret>": an id of letters, digits, '-' and '_' (engine.ids makes hex),
# a UUID (engine.ids.uuid7), the secret as secrets.token_urlsafe(32) makes it. Nothing else
# gets near a Redis key.
_TOKEN = re.compile(r"([A-Za-z0-9_-]{1,64})\.([0-9a-f-]{36})\.([A-Za-z0-9_-]{43})")


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """One live session as stored: what minting fixed, and its budgets and state."""

    id: str
    account_id: str
    user_id: str
    persona_id: str
    persona_name: str
    mode: Mode
    created_at: datetime
    connect_by: datetime
    """The first connect's deadline."""
    interaction_limit: int | None
    """Billing units the session may spend; None is unlimited."""
    duration_limit_s: int
    """Seconds from the first connect: the persona's limit, else RAPPORT_SESSION_MAX_SECONDS."""
    used: int = 0
    seq: int = 0
    """The number of the last event appended."""
    connected_at: datetime | None = None
    """The first connect."""
    ended: int | None = None
    """The close code, once ended."""

    def budget(self, units: int) -> Budget:
        """The interaction budget a turn of ``units`` spends as it opens (:data:`CHARGE`)."""
        key = keyspace.AccountKeys(self.account_id).session(self.id)
        return Budget(key=key, limit=self.interaction_limit, units=units)

    def interactions_left(self) -> int | None:
        if self.interaction_limit is None:
            return None
        return max(0, self.interaction_limit - self.used)

    def ends_at(self) -> datetime | None:
        """When the duration is spent; None before the first connect, which starts it."""
        if self.connected_at is None:
            return None
        return self.connected_at + timedelta(seconds=self.duration_limit_s)

    def seconds_left(self, now: datetime) -> int:
        ends = self.ends_at()
        if ends is None:
            return self.duration_limit_s
        return max(0, math.ceil((ends - now).total_seconds()))

    def expires_at(self, now: datetime) -> datetime:
        """When the session ends unless something ends it first: the connect deadline before
        the first connect, the end of its duration after. (``now`` is not needed today: both
        are fixed once known.)"""
        return self.ends_at() or self.connect_by


class Control(msgspec.Struct, frozen=True):
    """A message on :data:`engine.keyspace.SESSION_CONTROL`: the socket held by ``owner``
    must close, because a newer connection replaced it, or because the session ended (with
    ``code``)."""

    account_id: str
    session_id: str
    kind: Literal["replaced", "ended"]
    owner: str
    """The connection the message is for; "" when no socket ever held the session."""
    code: int = 1000


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    """The hash's ``record``: what minting fixed. Times are epoch ms, so that the scripts
    can compare them."""

    id: str
    account_id: str
    user_id: str
    persona_id: str
    persona_name: str
    mode: Mode
    created_ms: int
    connect_by_ms: int
    interaction_limit: int | None
    duration_limit_s: int
    digest: str
    """SHA-256 (hex) of the token's secret; the secret itself is never stored."""


_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(_Record).decode
_decode_control = msgspec.json.Decoder(Control).decode

# Lua functions shared by the scripts below. `finish` ends a session once: it keeps the
# close code, takes the id off the live set, drops the events (no resume after an end), keeps
# the hash a while for reading, and tells the socket's node. `lapsed` is the close code a
# session ends with at `now` because a window ran out, or false.
_FUNCTIONS = """
local function finish(session, live, events, id, account, code, keep, channel)
  if redis.call('HEXISTS', session, 'record') == 0 then return false end
  if redis.call('HSETNX', session, 'ended', code) == 0 then return false end
  redis.call('ZREM', live, id)
  redis.call('DEL', events)
  redis.call('EXPIRE', session, keep)
  local owner = redis.call('HGET', session, 'owner') or ''
  redis.call('PUBLISH', channel, cjson.encode({account_id = account, session_id = id,
    kind = 'ended', owner = owner, code = tonumber(code)}))
  return true
end
local function lapsed(session, now, resume)
  local f = redis.call('HMGET', session, 'record', 'connected', 'gone')
  local record = cjson.decode(f[1])
  if not f[2] then
    if now > record['connect_by_ms'] then return 4001 end
    return false
  end
  if now >= tonumber(f[2]) + record['duration_limit_s'] * 1000 then return 4006 end
  if f[3] and now - tonumber(f[3]) > resume then return 1000 end
  return false
end
"""
# KEYS: 1 session, 2 the live set, 3 events. ARGV: 1 id, 2 account, 3 now (ms), 4 resume
# window (ms), 5 keep (s), 6 channel. The session, ended first if a window lapsed; false if
# unknown.
_READ = f"""{_FUNCTIONS}
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HEXISTS', KEYS[1], 'ended') == 0 then
  local code = lapsed(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
  if code then finish(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], code, ARGV[5], ARGV[6]) end
end
return redis.call('HGETALL', KEYS[1])
"""
# KEYS: 1 the live set. ARGV: 1 the prefix of the account's session keys, 2-6 as _READ's
# 2-6. The sessions not ended, oldest first; those whose window lapsed are ended on the way,
# ids whose hash expired are dropped. The session keys are the prefix plus the id (ids are
# UUIDs, which keyspace's escaping leaves as they are): undeclared, but in the live set's
# cluster slot, like the persona keys of engine/turn_store.py's opening script.
_LIVE = f"""{_FUNCTIONS}
local found = {{}}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local session = ARGV[1] .. id
  if redis.call('EXISTS', session) == 0 or redis.call('HEXISTS', session, 'ended') == 1 then
    redis.call('ZREM', KEYS[1], id)
  else
    local code = lapsed(session, tonumber(ARGV[3]), tonumber(ARGV[4]))
    if code then
      finish(session, KEYS[1], session .. ':events', id, ARGV[2], code, ARGV[5], ARGV[6])
    else
      table.insert(found, redis.call('HGETALL', session))
    end
  end
end
return found
"""
# KEYS: 1 session, 2 the live set, 3 events. ARGV: 1 id, 2 account, 3 code, 4 keep (s),
# 5 channel.
_END = f"""{_FUNCTIONS}
if finish(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]) then
  return 1
end
return 0
"""
# KEYS: 1 session. ARGV: 1 now (ms), 2 owner, 3 account, 4 id, 5 channel. Returns the
# previous owner ('' for none) and the session, or false when it is unknown or ended.
_ATTACH = """
local f = redis.call('HMGET', KEYS[1], 'record', 'ended', 'owner')
if not f[1] or f[2] then return false end
redis.call('HSETNX', KEYS[1], 'connected', ARGV[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
redis.call('HDEL', KEYS[1], 'gone')
local previous = f[3] or ''
if previous ~= '' and previous ~= ARGV[2] then
  redis.call('PUBLISH', ARGV[5], cjson.encode({account_id = ARGV[3], session_id = ARGV[4],
    kind = 'replaced', owner = previous, code = 4009}))
end
return {previous, redis.call('HGETALL', KEYS[1])}
"""
# KEYS: 1 session. ARGV: 1 now (ms), 2 owner.
_DETACH = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[2]
    and redis.call('HEXISTS', KEYS[1], 'ended') == 0 then
  redis.call('HSET', KEYS[1], 'gone', ARGV[1])
end
"""
# The session's interaction budget, spent in the script that opens a turn
# (engine/turn_store.py, which the wiring hands this function to) and given back in the one
# that closes a failed turn. `limit` -1 is unlimited; negative `units` give back and are never
# refused. Returns {1, left} when taken, {0, left} when the budget lacks the units, false when
# the session is unknown or ended.
CHARGE = """
local function charge_budget(key, limit, units)
  local f = redis.call('HMGET', key, 'record', 'ended', 'used')
  if not f[1] or f[2] then return false end
  local used = tonumber(f[3] or '0')
  if limit >= 0 and units > 0 and used + units > limit then return {0, limit - used} end
  used = redis.call('HINCRBY', key, 'used', units)
  return {1, limit - used}
end
"""
# KEYS: 1 session, 2 events. ARGV: 1 events kept, then seq and JSON of each event. An ended
# session takes none: its stream is gone and must not come back without an expiry.
_APPEND = """
local f = redis.call('HMGET', KEYS[1], 'record', 'ended', 'seq')
if not f[1] or f[2] then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], ARGV[i] .. '-1', 'e', ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'seq', ARGV[#ARGV - 1])
-- The stream lives as long as the hash, whose lifetime is set once, at minting (an end
-- deletes the stream): its first events give it that lifetime, later ones need not.
if f[3] == '0' then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return 1
"""


class SessionStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        connect_seconds: int,
        resume_seconds: int,
        max_seconds: int,
        events_kept: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._connect_seconds = connect_seconds
        self._resume_ms = resume_seconds * 1000
        self._max_seconds = max_seconds
        self._events_kept = events_kept
        self._clock = clock
        self._read = redis.register_script(_READ)
        self._live = redis.register_script(_LIVE)
        self._end = redis.register_script(_END)
        self._attach = redis.register_script(_ATTACH)
        self._detach = redis.register_script(_DETACH)
        self._append = redis.register_script(_APPEND)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @redis_boundary
    async def mint(
        self, account_id: str, user_id: str, persona: Persona, mode: Mode
    ) -> tuple[Session, str]:
        """A new session with ``persona`` in ``mode``, and its token (shown once).

        Raises ValidationFailed when the persona does not allow the mode, SessionTimeLimit
        outside its opening hours (DESIGN.md, "Live sessions": checks in this order)."""
        publish = persona.publish_settings
        if mode not in publish.allowed_modes:
            allowed = ", ".join(publish.allowed_modes)
            raise ValidationFailed(
                f"mode: this persona allows {allowed}", errors={"mode": [f"one of {allowed}"]}
            )
        now_ms = self._now_ms()
        if publish.availability is not None and not publish.availability.open_at(_datetime(now_ms)):
            raise SessionTimeLimit()
        secret = secrets.token_urlsafe(32)
        record = _Record(
            id=uuid7(),
            account_id=account_id,
            user_id=user_id,
            persona_id=persona.id,
            persona_name=persona.name,
            mode=mode,
            created_ms=now_ms,
            connect_by_ms=now_ms + self._connect_seconds * 1000,
            interaction_limit=publish.session_interaction_limit,
            duration_limit_s=publish.session_duration_limit_seconds or self._max_seconds,
            digest=_digest(secret),
        )
        keys = keyspace.AccountKeys(account_id)
        # Unseen, a session outlives its last possible end by the time ended ones are kept.
        # (Relative, not PEXPIREAT: Redis's clock decides expiry, ours may be a test's.)
        lifetime = self._connect_seconds + record.duration_limit_s + KEEP_ENDED_SECONDS
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.session(record.id), mapping={"record": _encode(record), "used": 0, "seq": 0}
            )
            pipe.expire(keys.session(record.id), lifetime)
            pipe.zadd(keys.sessions, {record.id: now_ms})
            await pipe.execute()
        session, _ = _session({"record": _encode(record).decode()})
        return session, f"{account_id}.{record.id}.{secret}"

    @redis_boundary
    async def get(self, account_id: str, session_id: str) -> Session:
        """The session, ended on the way if a window lapsed. Raises SessionGone if unknown."""
        return _session(await self._fetch(account_id, session_id))[0]

    async def _fetch(self, account_id: str, session_id: str) -> dict[str, str]:
        keys = keyspace.AccountKeys(account_id)
        flat = await self._read(
            keys=[keys.session(session_id), keys.sessions, keys.session_events(session_id)],
            args=[session_id, *self._end_args(account_id)],
        )
        if not flat:
            raise SessionGone()
        return _pairs(flat)

    def _end_args(self, account_id: str) -> list[str | int]:
        """_READ's and _LIVE's ARGV 2-6."""
        return [
            account_id,
            self._now_ms(),
            self._resume_ms,
            KEEP_ENDED_SECONDS,
            keyspace.SESSION_CONTROL,
        ]

    @redis_boundary
    async def live(self, account_id: str) -> list[Session]:
        """The account's sessions not ended, oldest first."""
        keys = keyspace.AccountKeys(account_id)
        found = await self._live(
            keys=[keys.sessions], args=[keys.session(""), *self._end_args(account_id)]
        )
        return [_session(_pairs(flat))[0] for flat in found]

    @redis_boundary
    async def end(self, account_id: str, session_id: str, code: int) -> bool:
        """End the session with close ``code`` and tell its socket; False when it had ended
        already (the first end wins) or is unknown."""
        keys = keyspace.AccountKeys(account_id)
        ended = await self._end(
            keys=[keys.session(session_id), keys.sessions, keys.session_events(session_id)],
            args=[session_id, account_id, code, KEEP_ENDED_SECONDS, keyspace.SESSION_CONTROL],
        )
        return ended == 1

    @redis_boundary
    async def admit(self, token: str, session_id: str) -> Session:
        """The session a socket may attach to with ``token``.

        Raises SessionTokenInvalid for a malformed token, another session's, a wrong secret,
        or one not used in time (the session then ends, 4001); SessionGone for an unknown or
        ended session, or one whose socket was gone past the resume window."""
        parsed = _TOKEN.fullmatch(token)
        if parsed is None or parsed[2] != session_id:
            raise SessionTokenInvalid()
        account_id, _, secret = parsed.groups()
        session, digest = _session(await self._fetch(account_id, session_id))
        if not hmac.compare_digest(digest, _digest(secret)):
            raise SessionTokenInvalid()
        if session.ended is not None:
            if session.ended == 4001 and session.connected_at is None:
                # The same answer whoever noticed the lapse first: this call, or a listing.
                raise SessionTokenInvalid(
                    "The session token expired: it was not used within "
                    f"{self._connect_seconds} seconds."
                )
            raise SessionGone()
        return session

    @redis_boundary
    async def attach(self, session: Session, owner: str) -> tuple[Session, str | None]:
        """Give the session's socket to connection ``owner``: the first connect starts the
        duration; a previous owner is told it was replaced (close 4009). Returns the session
        as now stored and the previous owner. Raises SessionGone if it ended meanwhile."""
        answer = await self._attach(
            keys=[keyspace.AccountKeys(session.account_id).session(session.id)],
            args=[
                self._now_ms(),
                owner,
                session.account_id,
                session.id,
                keyspace.SESSION_CONTROL,
            ],
        )
        if not answer:
            raise SessionGone()
        previous, flat = answer
        return _session(_pairs(flat))[0], previous or None

    @redis_boundary
    async def detach(self, session: Session, owner: str) -> None:
        """``owner``'s socket went away: the resume window starts, unless another connection
        took the session meanwhile."""
        await self._detach(
            keys=[keyspace.AccountKeys(session.account_id).session(session.id)],
            args=[self._now_ms(), owner],
        )

    @redis_boundary
    async def append(self, session: Session, events: list[tuple[int, bytes]]) -> None:
        """Keep ``events`` (seq, JSON), numbered by the caller 1, 2, 3, … without gaps, for
        resume; the oldest are trimmed past about RAPPORT_SESSION_EVENTS. An ended session
        keeps none."""
        if not events:
            return
        keys = keyspace.AccountKeys(session.account_id)
        await self._append(
            keys=[keys.session(session.id), keys.session_events(session.id)],
            args=[self._events_kept, *(part for event in events for part in event)],
        )

    @redis_boundary
    async def replay(self, session: Session, after: int) -> list[bytes] | None:
        """The events numbered above ``after``, in order; [] when there are none; None when
        some of them were trimmed (or ``after`` is past the last), so the client must start
        afresh: DESIGN.md, "Resume" allows no partial replay."""
        keys = keyspace.AccountKeys(session.account_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(keys.session(session.id), "seq")
            pipe.xrange(keys.session_events(session.id), min=f"{after + 1}-1")
            last, entries = await pipe.execute()
        last = int(last or 0)
        if after > last:
            return None
        if after == last:
            return []
        # Trimming takes the oldest first, so the events are all there when the first is.
        if not entries or entries[0][0] != f"{after + 1}-1":
            return None
        return [fields["e"].encode() for _, fields in entries]

    async def listen(self) -> AsyncIterator[Control]:
        """Control messages for every session, until cancelled. Holds one connection of its
        own; when Redis drops it, subscribes again after a short wait (messages sent in
        between are lost: a socket that missed its end still meets it at its next step). A
        message that does not decode is logged and skipped."""
        failures = 0
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keyspace.SESSION_CONTROL)
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    try:
                        control = _decode_control(message["data"])
                    except msgspec.MsgspecError:
                        log.warning("ignored a malformed session control message")
                        continue
                    yield control
            except (RedisConnectionError, RedisTimeoutError):
                wait = LISTEN_BACKOFF_SECONDS[min(failures, len(LISTEN_BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("session control channel lost; subscribing again in %.1f s", wait)
                await asyncio.sleep(wait)
            finally:
                await pubsub.aclose()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _pairs(flat: list[str]) -> dict[str, str]:
    """A script's HGETALL (field, value, field, value, …) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _session(fields: dict[str, str]) -> tuple[Session, str]:
    """The session in a hash's fields, and its token's digest."""
    record = _decode_record(fields["record"])
    connected = fields.get("connected")
    ended = fields.get("ended")
    session = Session(
        id=record.id,
        account_id=record.account_id,
        user_id=record.user_id,
        persona_id=record.persona_id,
        persona_name=record.persona_name,
        mode=record.mode,
        created_at=_datetime(record.created_ms),
        connect_by=_datetime(record.connect_by_ms),
        interaction_limit=record.interaction_limit,
        duration_limit_s=record.duration_limit_s,
        used=int(fields.get("used", 0)),
        seq=int(fields.get("seq", 0)),
        connected_at=None if connected is None else _datetime(int(connected)),
        ended=None if ended is None else int(ended),
    )
    return session, record.digest
