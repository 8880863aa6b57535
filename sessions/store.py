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
duration spent (4006), no user message for ``RAPPORT_SESSION_IDLE_SECONDS`` (4007: its last
one is the hash's ``active``, written by the script that opens its turn, :data:`CHARGE`; the
first connect counts as one). The node holding a socket does not wait for someone to look:
its timer (:mod:`sessions.socket`) reads the session at the deadline, which ends it here.
An ended session stays readable for :data:`KEEP_ENDED_SECONDS`, so
``GET`` can say how it ended; its events go at once (no resume after an end).

A session remembers the API key slot that minted it: disabling or regenerating that slot
(:meth:`SessionStore.revoke`) ends its live and queued sessions with 4001, as a revoked
credential, and their tokens stop working. One minted before slots were recorded has none,
and lives on.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine import keyspace
from engine.config import Settings
from engine.errors import (
    ConcurrentSessionLimit,
    RapportError,
    SessionGone,
    SessionTimeLimit,
    SessionTokenInvalid,
    ValidationFailed,
    WaitingRoomFull,
)
from engine.ids import uuid7
from engine.personas import Mode, Persona
from engine.state import Client, redis_boundary, subscribe
from engine.turn_store import Budget
from engine.usage import COUNT, activity_key
from sessions.capacity import Capacity, Full, Queued, Ready, Sweep

log = logging.getLogger("rapport.sessions")

KEEP_ENDED_SECONDS = 3600
"""How long an ended session can still be read."""
QUEUED_LIFETIME_SECONDS = 86_400
"""A queued session's hash outlives a day in line at most; an offer sets its lifetime anew."""
SLOT_LOST_CODE = 1013
"""A session whose slot was swept while it lived (its process could not renew the lease in
time) ends with RFC 6455's "try again later": a new session may be minted at once."""
FULL_RETRY_AFTER_SECONDS = 5
"""Retry-After of a full waiting room (seed 000: "back off and retry after a short delay")."""

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
    active_at: datetime | None = None
    """The last user message's turn opened (:data:`CHARGE`); None before the first."""
    queued: bool = False
    """Waiting in line for a slot of the deployment: no connect window yet."""
    ended: int | None = None
    """The close code, once ended."""
    key_slot: str | None = None
    """The API key slot that minted the session; None for one minted before it was kept."""
    revoked: bool = False
    """Ended because that slot was disabled or regenerated: its token is no longer valid."""

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

    def idle_since(self) -> datetime | None:
        """The last activity RAPPORT_SESSION_IDLE_SECONDS counts from: the last user message,
        else the first connect (pings, resumes and reconnects are none)."""
        if self.active_at is None or self.connected_at is None:
            return self.connected_at
        return max(self.connected_at, self.active_at)

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
    key_slot: str | None = None
    """The API key slot that minted the session (absent from records minted before)."""


_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(_Record).decode
_decode_control = msgspec.json.Decoder(Control).decode

# Lua functions shared by the scripts below. `finish` ends a session once: it keeps the
# close code, takes the id off the live set and the account's slots, drops the events (no
# resume after an end), keeps the hash a while for reading, tells the socket's node, and
# counts the close code in the account's `activity` of the day (engine/usage.py): every
# end, whatever ended it, passes here exactly once (HSETNX), so each is counted once.
# `lapsed` is the close code a session ends with at `now` because a window or its slot's
# lease ran out, or false. A queued session has no connect window until it is offered a
# slot (`connect_by` then overrides the record's).
_FUNCTIONS = f"""{COUNT}
local function finish(session, live, slots, events, id, account, code, keep, channel, activity)
  if redis.call('HEXISTS', session, 'record') == 0 then return false end
  if redis.call('HSETNX', session, 'ended', code) == 0 then return false end
  count_close(activity, code)
  redis.call('ZREM', live, id)
  redis.call('ZREM', slots, id)
  redis.call('DEL', events)
  redis.call('EXPIRE', session, keep)
  local owner = redis.call('HGET', session, 'owner') or ''
  redis.call('PUBLISH', channel, cjson.encode({{account_id = account, session_id = id,
    kind = 'ended', owner = owner, code = tonumber(code)}}))
  return true
end
local function idle_ends(connected, active, idle)
  if idle <= 0 then return false end
  return math.max(tonumber(connected), tonumber(active or connected)) + idle
end
local function lapsed(session, slots, id, now, resume, idle)
  local f = redis.call('HMGET', session, 'record', 'connected', 'gone', 'connect_by', 'queued',
                      'gone_code', 'active')
  local record = cjson.decode(f[1])
  if not f[2] then
    if not f[5] and now > tonumber(f[4] or record['connect_by_ms']) then return 4001 end
  else
    if now >= tonumber(f[2]) + record['duration_limit_s'] * 1000 then return 4006 end
    -- Whichever window ran out first names the end: quiet, or gone unresumed.
    local quiet = idle_ends(f[2], f[7], idle)
    local resumable = f[3] and tonumber(f[3]) + resume
    if quiet and now >= quiet and not (resumable and resumable < quiet) then return 4007 end
    if resumable and now > resumable then return tonumber(f[6]) or 1000 end
  end
  -- The slot's lease: renewed by the process holding the socket; run out, that process is
  -- gone (or a queued client stopped being heard from) and the session with it.
  local lease = redis.call('ZSCORE', slots, id)
  if not lease or tonumber(lease) < now then return 1000 end
  return false
end
"""
# KEYS: 1 session, 2 the live set, 3 slots, 4 events, 5 activity. ARGV: 1 id, 2 account,
# 3 now (ms), 4 resume window (ms), 5 keep (s), 6 channel, 7 idle window (ms; 0: none).
# {ended by this call 0|1, the session}, ended first if a window lapsed; false if unknown.
_READ = f"""{_FUNCTIONS}
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local ended = 0
if redis.call('HEXISTS', KEYS[1], 'ended') == 0 then
  local code = lapsed(KEYS[1], KEYS[3], ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]),
                      tonumber(ARGV[7]))
  if code and finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], code, ARGV[5],
      ARGV[6], KEYS[5]) then
    ended = 1
  end
end
return {{ended, redis.call('HGETALL', KEYS[1])}}
"""
# The session keys below are the prefix ARGV[1] plus the id (ids are UUIDs, which
# keyspace's escaping leaves as they are): undeclared, but in the account's cluster slot, like
# the persona keys of engine/turn_store.py's opening script.
# KEYS: 1 the live set, 2 slots, 3 activity. ARGV: 1 the prefix of the account's session
# keys, 2-7 as _READ's 2-7. {the sessions not ended, oldest first; the ids ended on the way}.
_LIVE = f"""{_FUNCTIONS}
local found, ended = {{}}, {{}}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local session = ARGV[1] .. id
  if redis.call('EXISTS', session) == 0 or redis.call('HEXISTS', session, 'ended') == 1 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  else
    local code = lapsed(session, KEYS[2], id, tonumber(ARGV[3]), tonumber(ARGV[4]),
                        tonumber(ARGV[7]))
    if code then
      finish(session, KEYS[1], KEYS[2], session .. ':events', id, ARGV[2], code, ARGV[5],
        ARGV[6], KEYS[3])
      table.insert(ended, id)
    else
      table.insert(found, redis.call('HGETALL', session))
    end
  end
end
return {{found, ended}}
"""
# KEYS: 1 session, 2 the live set, 3 slots, 4 activity. ARGV: 1 prefix, 2-7 as _READ's, 8 id,
# 9 record, 10 lifetime (s), 11 the account's cap, 12 the slot's lease (ms). The account's
# concurrent sessions (max_concurrent_sessions, seed 000 limits.concurrent_session) counted
# after a sweep of those that lapsed: {1 taken | 0 at the cap, the ids ended on the way}.
_MINT = f"""{_FUNCTIONS}
local now = tonumber(ARGV[3])
local ended = {{}}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. now)) do
  -- A slot whose lease ran out: its session is over (with the code of the window that
  -- lapsed, if one did), whether or not anyone looked at it since.
  redis.call('ZREM', KEYS[3], id)
  local session = ARGV[1] .. id
  if redis.call('EXISTS', session) == 1 then
    local code = lapsed(session, KEYS[3], id, now, tonumber(ARGV[4]), tonumber(ARGV[7]))
    if finish(session, KEYS[2], KEYS[3], session .. ':events', id, ARGV[2], code or 1000,
        ARGV[5], ARGV[6], KEYS[4]) then
      table.insert(ended, id)
    end
  end
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[11]) then return {{0, ended}} end
redis.call('HSET', KEYS[1], 'record', ARGV[9], 'used', 0, 'seq', 0)
redis.call('EXPIRE', KEYS[1], ARGV[10])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[12], ARGV[8])
return {{1, ended}}
"""
# KEYS: 1 session, 2 the live set, 3 slots, 4 events, 5 left. ARGV: 1 id, 2 how long to keep
# its token's digest at `left` (s; 0: not at all). A mint undone (the waiting room was full),
# a queued session whose end user queued again or who left the line: as if never made, but
# for a ticket that was handed out, whose digest is kept (:meth:`SessionStore.verify`).
# Never one a socket has connected to (0): that one ends, it is not undone.
_DISCARD = """
if redis.call('HEXISTS', KEYS[1], 'connected') == 1 then return 0 end
local record = redis.call('HGET', KEYS[1], 'record')
if record and tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[5], cjson.decode(record)['digest'], 'EX', ARGV[2])
end
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
# KEYS: 1 session, 2 slots. ARGV: 1 id, 2 the slot's lease (ms), 3 lifetime (s). The session
# waits in line: no connect window, its slot held while its client is heard from.
_QUEUED = """
if redis.call('HEXISTS', KEYS[1], 'record') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'queued', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
return 1
"""
# KEYS: 1 session, 2 slots. ARGV: 1 id, 2 the connect deadline (ms), 3 the connect window
# (s), 4 keep (s). A queued session was offered a slot: its connect window runs until then,
# and its hash lives as a minted one does. Again after that: no change. The session, or false
# when it is unknown or ended.
_CLAIM = """
local f = redis.call('HMGET', KEYS[1], 'record', 'ended', 'queued')
if not f[1] or f[2] then return false end
if f[3] then
  local record = cjson.decode(f[1])
  redis.call('HDEL', KEYS[1], 'queued')
  redis.call('HSET', KEYS[1], 'connect_by', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3] + record['duration_limit_s'] + ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
"""
# KEYS: 1 the live set, 2 slots, 3 activity. ARGV: 1 prefix, 2-7 as _READ's, 8 the API key
# slot. Every session not ended that this slot minted (queued ones too) is marked revoked and
# ended 4001: the ids ended. A record without a slot (minted before slots were kept) matches none.
_REVOKE = f"""{_FUNCTIONS}
local ended = {{}}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local session = ARGV[1] .. id
  local record = redis.call('HGET', session, 'record')
  if record and redis.call('HEXISTS', session, 'ended') == 0
      and cjson.decode(record)['key_slot'] == ARGV[8] then
    redis.call('HSET', session, 'revoked', 1)
    finish(session, KEYS[1], KEYS[2], session .. ':events', id, ARGV[2], 4001, ARGV[5], ARGV[6],
      KEYS[3])
    table.insert(ended, id)
  end
end
return ended
"""
# KEYS: 1 session, 2 the live set, 3 slots, 4 events, 5 activity. ARGV: 1 id, 2 account,
# 3 code, 4 keep (s), 5 channel.
_END = f"""{_FUNCTIONS}
if finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
    KEYS[5]) then
  return 1
end
return 0
"""
# KEYS: 1 session, 2 the live set, 3 slots, 4 events, 5 activity. ARGV: 1 now (ms), 2 owner,
# 3 account, 4 id, 5 channel, 6 the slot's lease (ms), 7 resume window (ms), 8 keep (s),
# 9 idle window (ms; 0: none). A reconnect is no activity: it does not put off the idle end.
# Returns the
# previous owner ('' for none) and the session; {-1} when it lapsed just now (ended here);
# false when it is unknown, ended or still queued.
_ATTACH = f"""{_FUNCTIONS}
local f = redis.call('HMGET', KEYS[1], 'record', 'ended', 'owner', 'queued')
if not f[1] or f[2] or f[4] then return false end
local code = lapsed(KEYS[1], KEYS[3], ARGV[4], tonumber(ARGV[1]), tonumber(ARGV[7]),
                    tonumber(ARGV[9]))
if code then
  finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4], ARGV[3], code, ARGV[8], ARGV[5], KEYS[5])
  return {{-1}}
end
redis.call('HSETNX', KEYS[1], 'connected', ARGV[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
redis.call('HDEL', KEYS[1], 'gone', 'gone_code')
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
local previous = f[3] or ''
if previous ~= '' and previous ~= ARGV[2] then
  redis.call('PUBLISH', ARGV[5], cjson.encode({{account_id = ARGV[3], session_id = ARGV[4],
    kind = 'replaced', owner = previous, code = 4009}}))
end
return {{previous, redis.call('HGETALL', KEYS[1])}}
"""
# KEYS: 1 session, 2 slots. ARGV: 1 now (ms), 2 owner, 3 id, 4 resume window (ms), 5 the
# code the server closed the socket with ('' : the client went), 6 idle window (ms; 0: none).
# The slot is held through the resume window, then runs out with it; so does the session,
# ending with that code. When the idle window ends first, the slot's lease ends with it, so
# that a sweep frees it then (its session ends 4007 when next looked at). Returns the lease
# (ms), or 0 when another connection took the session or it ended.
_DETACH = f"""{_FUNCTIONS}
local f = redis.call('HMGET', KEYS[1], 'owner', 'ended', 'connected', 'active')
if f[1] == ARGV[2] and not f[2] then
  redis.call('HSET', KEYS[1], 'gone', ARGV[1])
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'gone_code', ARGV[5]) end
  local lease = tonumber(ARGV[1]) + tonumber(ARGV[4])
  local quiet = idle_ends(f[3], f[4], tonumber(ARGV[6]))
  if quiet and quiet < lease then lease = quiet end
  redis.call('ZADD', KEYS[2], 'XX', lease, ARGV[3])
  return lease
end
return 0
"""
# The session's interaction budget, spent in the script that opens a turn
# (engine/turn_store.py, which the wiring hands this function to) and given back in the one
# that closes a failed turn. `limit` -1 is unlimited; negative `units` give back and are never
# refused. `now` (ms), given when a user message opens a turn, is kept as the session's last
# activity (`active`, RAPPORT_SESSION_IDLE_SECONDS counts from it) in the same HSET as the
# units: no command more per turn (BENCHMARKS.md, "Conversation overhead"). Returns
# {1, left} when taken, {0, left} when the budget lacks the units, false when the session is
# unknown or ended.
CHARGE = """
local function charge_budget(key, limit, units, now)
  local f = redis.call('HMGET', key, 'record', 'ended', 'used')
  if not f[1] or f[2] then return false end
  local used = tonumber(f[3] or '0')
  if limit >= 0 and units > 0 and used + units > limit then return {0, limit - used} end
  used = used + units
  if now then
    redis.call('HSET', key, 'used', used, 'active', now)
  else
    redis.call('HSET', key, 'used', used)
  end
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


class Minting(NamedTuple):
    session: Session
    token: str
    """Shown once; only its digest is stored. A queued session's ticket too."""
    place: Ready | Queued


class SessionStore:
    def __init__(
        self,
        redis: Client,
        *,
        capacity: Capacity,
        connect_seconds: int,
        resume_seconds: int,
        max_seconds: int,
        events_kept: int,
        lease_seconds: int = 15,
        queue_idle_seconds: int = 60,
        idle_seconds: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``idle_seconds``: RAPPORT_SESSION_IDLE_SECONDS (0: no idle end)."""
        self._redis = redis
        self.capacity = capacity
        self._connect_seconds = connect_seconds
        self._resume_ms = resume_seconds * 1000
        self.idle_seconds = idle_seconds
        self._max_seconds = max_seconds
        self._events_kept = events_kept
        # Renewed every third of RAPPORT_SESSION_LEASE_SECONDS (sessions.leases) to two
        # thirds ahead, and swept as often: a dead holder's slots are free within the setting.
        self.lease_ms = lease_seconds * 1000 * 2 // 3
        self._queue_idle_ms = queue_idle_seconds * 1000
        self._clock = clock
        self._read = redis.register_script(_READ)
        self._live = redis.register_script(_LIVE)
        self._mint = redis.register_script(_MINT)
        self._discard = redis.register_script(_DISCARD)
        self._queued = redis.register_script(_QUEUED)
        self._claim = redis.register_script(_CLAIM)
        self._end = redis.register_script(_END)
        self._revoke = redis.register_script(_REVOKE)
        self._attach = redis.register_script(_ATTACH)
        self._detach = redis.register_script(_DETACH)
        self._append = redis.register_script(_APPEND)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _activity(self, account_id: str) -> str:
        """The key a script that may end a session counts its close code in (``finish``)."""
        return activity_key(account_id, self._clock())

    @redis_boundary
    async def mint(
        self,
        account_id: str,
        user_id: str,
        persona: Persona,
        mode: Mode,
        *,
        account_cap: int,
        key_slot: str | None = None,
    ) -> Minting:
        """A new session with ``persona`` in ``mode`` and its token: ready, or queued for a
        slot of the deployment. ``key_slot``, the API key slot minting it, is kept so that
        disabling or regenerating the slot ends the session (:meth:`revoke`).

        The contract's checks, in its order (DESIGN.md, "Live sessions"): ValidationFailed
        when the persona does not allow the mode, SessionTimeLimit outside its opening hours,
        ConcurrentSessionLimit at the account's ``account_cap``, WaitingRoomFull when neither
        a slot nor a place in line is free."""
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
            key_slot=key_slot,
        )
        keys = keyspace.AccountKeys(account_id)
        # The account's slot first, then the deployment's; the first given back when the
        # second is refused (no script may touch both: DESIGN.md, "Slots").
        taken, ended = await self._mint(
            keys=[
                keys.session(record.id),
                keys.sessions,
                keys.session_slots,
                self._activity(account_id),
            ],
            args=[
                keys.session(""),
                *self._end_args(account_id),
                record.id,
                _encode(record),
                self._lifetime(record.duration_limit_s),
                account_cap,
                record.connect_by_ms,
            ],
        )
        await self._release(account_id, ended)
        if not taken:
            raise ConcurrentSessionLimit(
                f"The account has {account_cap} concurrent sessions, its plan's most."
            )
        try:
            place = await self.capacity.take(account_id, record.id, user_id, record.connect_by_ms)
        except BaseException:
            # Redis went away meanwhile: the slot's lease (the connect window) frees it anyway.
            with contextlib.suppress(RapportError, RedisConnectionError, RedisTimeoutError):
                await self._undo(account_id, record.id, handed_out=False)
            raise
        fields = {"record": _encode(record).decode()}
        match place:
            case Full():
                await self._undo(account_id, record.id, handed_out=False)
                raise WaitingRoomFull(headers={"Retry-After": str(FULL_RETRY_AFTER_SECONDS)})
            case Queued(replaced=replaced):
                await self._queued(
                    keys=[keys.session(record.id), keys.session_slots],
                    args=[record.id, now_ms + self._queue_idle_ms, QUEUED_LIFETIME_SECONDS],
                )
                if replaced is not None:
                    # The end user queued again: the new ticket took the old one's place.
                    await self._undo(account_id, replaced, handed_out=True)
                fields["queued"] = "1"
        return Minting(_session(fields)[0], f"{account_id}.{record.id}.{secret}", place)

    def _lifetime(self, duration_limit_s: int) -> int:
        """Unseen, a session outlives its last possible end by the time ended ones are kept.
        (Relative, not PEXPIREAT: Redis's clock decides expiry, ours may be a test's.)"""
        return self._connect_seconds + duration_limit_s + KEEP_ENDED_SECONDS

    async def _undo(self, account_id: str, session_id: str, *, handed_out: bool) -> bool:
        """Discard a session never connected to; ``handed_out``: its ticket was given to a
        client, whose later use must still be told the place is gone."""
        keys = keyspace.AccountKeys(account_id)
        return bool(
            await self._discard(
                keys=[*_ending_keys(keys, session_id), keys.session_left(session_id)],
                args=[session_id, KEEP_ENDED_SECONDS if handed_out else 0],
            )
        )

    async def _release(self, account_id: str, ended: list[str]) -> None:
        """The deployment's slots of sessions just ended: the queue moves on."""
        for session_id in ended:
            await self.capacity.release(account_id, session_id)

    @redis_boundary
    async def claim(self, account_id: str, session_id: str, offer_by_ms: int) -> Session:
        """A queued session was offered a slot until ``offer_by_ms``: its connect window
        runs until then. Claiming again changes nothing. Raises SessionGone if it ended."""
        keys = keyspace.AccountKeys(account_id)
        flat = await self._claim(
            keys=[keys.session(session_id), keys.session_slots],
            args=[session_id, offer_by_ms, self._connect_seconds, KEEP_ENDED_SECONDS],
        )
        if not flat:
            raise SessionGone()
        return _session(_pairs(flat))[0]

    @redis_boundary
    async def leave(self, account_id: str, session_id: str) -> None:
        """A queued client gave its place up (or the slot offered to it, unused): the
        session is as if never minted. Raises SessionGone once a socket has connected to it:
        then it is a live session, ended like any other."""
        if not await self._undo(account_id, session_id, handed_out=True):
            raise SessionGone("The session is live: end it, it has left the waiting room.")
        await self.capacity.release(account_id, session_id)

    @redis_boundary
    async def get(self, account_id: str, session_id: str) -> Session:
        """The session, ended on the way if a window lapsed. Raises SessionGone if unknown."""
        return await self._read_session(account_id, session_id)

    async def _read_session(self, account_id: str, session_id: str) -> Session:
        return _session(await self._fetch(account_id, session_id))[0]

    async def _fetch(self, account_id: str, session_id: str) -> dict[str, str]:
        keys = keyspace.AccountKeys(account_id)
        answer = await self._read(
            keys=[*_ending_keys(keys, session_id), self._activity(account_id)],
            args=[session_id, *self._end_args(account_id)],
        )
        if not answer:
            raise SessionGone()
        ended, flat = answer
        if ended:
            await self._release(account_id, [session_id])
        return _pairs(flat)

    def _end_args(self, account_id: str) -> list[str | int]:
        """_READ's and _LIVE's ARGV 2-7."""
        return [
            account_id,
            self._now_ms(),
            self._resume_ms,
            KEEP_ENDED_SECONDS,
            keyspace.SESSION_CONTROL,
            self.idle_seconds * 1000,
        ]

    @redis_boundary
    async def live(self, account_id: str) -> list[Session]:
        """The account's sessions not ended (queued ones included), oldest first."""
        keys = keyspace.AccountKeys(account_id)
        found, ended = await self._live(
            keys=[keys.sessions, keys.session_slots, self._activity(account_id)],
            args=[keys.session(""), *self._end_args(account_id)],
        )
        await self._release(account_id, ended)
        return [_session(_pairs(flat))[0] for flat in found]

    @redis_boundary
    async def end(self, account_id: str, session_id: str, code: int) -> bool:
        """End the session with close ``code``, tell its socket and free its slot; False
        when it had ended already (the first end wins) or is unknown."""
        keys = keyspace.AccountKeys(account_id)
        ended = await self._end(
            keys=[*_ending_keys(keys, session_id), self._activity(account_id)],
            args=[session_id, account_id, code, KEEP_ENDED_SECONDS, keyspace.SESSION_CONTROL],
        )
        if ended != 1:
            return False
        await self._release(account_id, [session_id])
        return True

    @redis_boundary
    async def revoke(self, account_id: str, key_slot: str) -> list[str]:
        """End every session of the account that ``key_slot`` minted and that has not ended
        (queued ones included), as ``DELETE`` ends one but with 4001: the slot was disabled
        or regenerated, so the credential behind them is revoked. Their sockets close
        wherever they are held, and their tokens are refused from then on. The ids ended."""
        keys = keyspace.AccountKeys(account_id)
        ended = await self._revoke(
            keys=[keys.sessions, keys.session_slots, self._activity(account_id)],
            args=[keys.session(""), *self._end_args(account_id), key_slot],
        )
        await self._release(account_id, ended)
        return ended

    @redis_boundary
    async def admit(self, token: str, session_id: str) -> Session:
        """The session a socket may attach to with ``token``.

        Raises SessionTokenInvalid for a malformed token, another session's, a wrong secret,
        an unknown session, a revoked one, or one not used in time (the session then ends,
        4001); SessionGone for an ended session (the token proved genuine), or one whose
        socket was gone past the resume window."""
        session = await self.verify(token, session_id)
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
    async def verify(self, token: str, session_id: str) -> Session:
        """The session ``token`` was minted for, if it is ``session_id``'s (ended or not).
        Raises SessionTokenInvalid otherwise, the same for an unknown session as for a wrong
        secret: a caller without the secret must not learn which session ids exist
        (DESIGN.md's 4001, "whether or not the session exists"). A revoked session's token
        is refused too."""
        parsed = _TOKEN.fullmatch(token)
        if parsed is None or parsed[2] != session_id:
            raise SessionTokenInvalid()
        account_id, _, secret = parsed.groups()
        try:
            session, digest = _session(await self._fetch(account_id, session_id))
        except SessionGone:
            # A place given up keeps its ticket's digest a while: the genuine ticket is told
            # the place is gone.
            left = await self._redis.get(keyspace.AccountKeys(account_id).session_left(session_id))
            if left is not None and hmac.compare_digest(left, _digest(secret)):
                raise
            raise SessionTokenInvalid() from None
        if not hmac.compare_digest(digest, _digest(secret)):
            raise SessionTokenInvalid()
        if session.revoked:
            raise SessionTokenInvalid(
                "The session was ended: the API key that minted it was disabled or regenerated."
            )
        return session

    @redis_boundary
    async def attach(self, session: Session, owner: str) -> tuple[Session, str | None]:
        """Give the session's socket to connection ``owner``: the first connect starts the
        duration; a previous owner is told it was replaced (close 4009); the slots' leases
        are renewed. Returns the session as now stored and the previous owner. Raises
        SessionGone if it ended meanwhile, is still queued, or its slot's lease ran out."""
        keys = keyspace.AccountKeys(session.account_id)
        now = self._now_ms()
        answer = await self._attach(
            keys=[*_ending_keys(keys, session.id), self._activity(session.account_id)],
            args=[
                now,
                owner,
                session.account_id,
                session.id,
                keyspace.SESSION_CONTROL,
                now + self.lease_ms,
                self._resume_ms,
                KEEP_ENDED_SECONDS,
                self.idle_seconds * 1000,
            ],
        )
        if answer == [-1]:
            await self._release(session.account_id, [session.id])
        if not answer or answer == [-1]:
            raise SessionGone()
        if not await self.capacity.hold(session.account_id, session.id, now + self.lease_ms):
            # The deployment's slot ran out first (a lease not renewed in time): over.
            await self.end(session.account_id, session.id, 1000)
            raise SessionGone()
        previous, flat = answer
        return _session(_pairs(flat))[0], previous or None

    @redis_boundary
    async def detach(self, session: Session, owner: str, closed: int | None = None) -> None:
        """``owner``'s socket went away: the resume window starts (the slots are held
        through it), unless another connection took the session meanwhile. ``closed``: the
        code the server closed it with (1008, 1009, 1011...), which the session ends with if
        the window runs out unresumed (issue 26: it read 1000, as if ended normally); None
        when the client went, which ends it 1000."""
        keys = keyspace.AccountKeys(session.account_id)
        lease = await self._detach(
            keys=[keys.session(session.id), keys.session_slots],
            args=[
                self._now_ms(),
                owner,
                session.id,
                self._resume_ms,
                "" if closed is None else closed,
                self.idle_seconds * 1000,
            ],
        )
        if lease:
            await self.capacity.renew([(session.account_id, session.id)], int(lease))

    @redis_boundary
    async def renew(self, held: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Renew the leases of the slots of the sessions (account id, session id) whose
        sockets this process holds; run every third of the lease (:mod:`sessions.leases`).
        Returns those whose deployment slot is gone: they are ended here (close 1013), and
        their sockets must close."""
        until = self._now_ms() + self.lease_ms
        await self._extend(held, until)
        lost = await self.capacity.renew(held, until)
        for account_id, session_id in lost:
            await self.end(account_id, session_id, SLOT_LOST_CODE)
        return lost

    @redis_boundary
    async def heard(self, queued: list[tuple[str, str]]) -> None:
        """The clients of these queued sessions were heard from: their account slots are
        held for another RAPPORT_QUEUE_IDLE_SECONDS (the deployment's side is
        :meth:`Capacity.status`'s ``touch``)."""
        await self._extend(queued, self._now_ms() + self._queue_idle_ms)

    async def _extend(self, sessions: list[tuple[str, str]], until: int) -> None:
        by_account: dict[str, dict[str, int]] = {}
        for account_id, session_id in sessions:
            by_account.setdefault(account_id, {})[session_id] = until
        if not by_account:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for account_id, leases in by_account.items():
                pipe.zadd(keyspace.AccountKeys(account_id).session_slots, leases, xx=True)
            await pipe.execute()

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
        """Control messages for every session, until cancelled (:func:`subscribe`: a
        socket that missed its end while the channel was down meets it at its next step).
        A message that does not decode is logged and skipped."""
        async for data in subscribe(self._redis, keyspace.SESSION_CONTROL):
            try:
                yield _decode_control(data)
            except msgspec.MsgspecError:
                log.warning("ignored a malformed session control message")


def session_store(
    redis: Client, settings: Settings, observe: Callable[[Sweep], None] = lambda s: None
) -> SessionStore:
    """The session store over the deployment's capacity, as RAPPORT_* configures them."""
    capacity = Capacity(
        redis,
        max_sessions=settings.max_sessions,
        room_size=settings.waiting_room_size,
        connect_seconds=settings.session_connect_seconds,
        idle_seconds=settings.queue_idle_seconds,
        observe=observe,
    )
    return SessionStore(
        redis,
        capacity=capacity,
        connect_seconds=settings.session_connect_seconds,
        resume_seconds=settings.session_resume_seconds,
        max_seconds=settings.session_max_seconds,
        events_kept=settings.session_events,
        lease_seconds=settings.session_lease_seconds,
        queue_idle_seconds=settings.queue_idle_seconds,
        idle_seconds=settings.session_idle_seconds,
    )


def _ending_keys(keys: keyspace.AccountKeys, session_id: str) -> list[str]:
    """The keys of a script that may end the session: its hash, the live set, the account's
    slots, its events (``finish``'s)."""
    return [
        keys.session(session_id),
        keys.sessions,
        keys.session_slots,
        keys.session_events(session_id),
    ]


def token_account(token: str) -> str | None:
    """The account a well-formed token (or ticket) names, unverified: for the handshake
    guards, which read that account's allowed origins before anything of the session."""
    parsed = _TOKEN.fullmatch(token)
    return None if parsed is None else parsed[1]


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
    active = fields.get("active")
    ended = fields.get("ended")
    connect_by = fields.get("connect_by")
    session = Session(
        id=record.id,
        account_id=record.account_id,
        user_id=record.user_id,
        persona_id=record.persona_id,
        persona_name=record.persona_name,
        mode=record.mode,
        created_at=_datetime(record.created_ms),
        connect_by=_datetime(record.connect_by_ms if connect_by is None else int(connect_by)),
        interaction_limit=record.interaction_limit,
        duration_limit_s=record.duration_limit_s,
        used=int(fields.get("used", 0)),
        seq=int(fields.get("seq", 0)),
        connected_at=None if connected is None else _datetime(int(connected)),
        active_at=None if active is None else _datetime(int(active)),
        ended=None if ended is None else int(ended),
        queued="queued" in fields,
        key_slot=record.key_slot,
        revoked="revoked" in fields,
    )
    return session, record.digest
