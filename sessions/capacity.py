"""The deployment's capacity and its waiting room, in Redis (DESIGN.md, "Live sessions":
slots, waiting room).

``RAPPORT_MAX_SESSIONS`` slots are shared by every process and node on one Redis. A session
holds one, as ``<account>/<session>`` in a sorted set scored by the time its lease runs out,
from minting until it ends; the rest wait in a strict first-come-first-served queue. Every
step is one Lua script over the deployment's keys (:class:`engine.keyspace.DeploymentKeys`),
so no two processes can both take the last slot: the failure of peers whose cap was checked
against a load figure refreshed every half second. The account's own cap is the session
store's (:mod:`sessions.store`): no script touches both, because Redis Cluster refuses
cross-slot scripts, so minting takes the account's slot first, then the deployment's, and
gives the first back when the second is refused.

A lease runs out unless renewed: the process holding a session's socket renews it
(:mod:`sessions.leases`), so the slots of a process killed outright free themselves within
``RAPPORT_SESSION_LEASE_SECONDS``; a minted session's lease is its connect window, a
dropped socket's its resume window. Every script first sweeps what ran out (slots, offers not
taken, queued clients not heard from for ``RAPPORT_QUEUE_IDLE_SECONDS``) and then offers each
free slot to the head of the line, so the queue moves whichever process looks next. Each
change is published on :data:`engine.keyspace.QUEUE_EVENTS`: the processes holding the
waiting clients' sockets push ``queue.admitted`` and ``queue.position`` from it, with no
polling loop of their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import msgspec

from engine import keyspace
from engine.state import Client, redis_boundary

K = keyspace.DeploymentKeys
_KEYS = [K.slots, K.queue, K.queue_seq, K.queue_seen, K.tickets, K.queue_users, K.admissions]

ADMISSIONS_KEPT = 32
"""Latest admission times kept for the wait estimate."""
ESTIMATE_MIN_ADMISSIONS = 5
"""Fewer admissions in the estimate's window than this, and the wait is unknown (null)."""
ESTIMATE_WINDOW_MS = 600_000
"""Admissions older than this say nothing about the rate now."""

# Lua shared by the scripts. KEYS are always _KEYS: 1 slots, 2 queue, 3 queue seq, 4 seen,
# 5 tickets, 6 users, 7 admissions. A ticket is {a = account, u = '<account>/<user_id>',
# o = offer deadline (ms), 0 while waiting}. `advance` sweeps what ran out, then offers free
# slots to the head of the line; it returns {admitted {{account, id, offer deadline}, ...},
# no-shows, evictions, lapsed slots, moved 0|1}.
_FUNCTIONS = """
local S, Q, SEQ, SEEN, T, U, A = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local function drop_ticket(id)
  local raw = redis.call('HGET', T, id)
  if raw then
    local t = cjson.decode(raw)
    if redis.call('HGET', U, t.u) == id then redis.call('HDEL', U, t.u) end
    redis.call('HDEL', T, id)
  end
  local was_queued = redis.call('ZREM', Q, id)
  redis.call('ZREM', SEEN, id)
  return was_queued
end
local function advance(now, cap, connect_ms, idle_ms)
  local noshows, evicted, lapsed, moved = 0, 0, 0, 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', S, '-inf', now)) do
    redis.call('ZREM', S, member)
    local id = string.match(member, '/([^/]*)$')
    if redis.call('HEXISTS', T, id) == 1 then
      noshows = noshows + 1
      drop_ticket(id)
    else
      lapsed = lapsed + 1
    end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', SEEN, '-inf', now - idle_ms)) do
    drop_ticket(id)
    evicted = evicted + 1
    moved = 1
  end
  local admitted = {}
  local free = cap - redis.call('ZCARD', S)
  while free > 0 do
    local head = redis.call('ZRANGE', Q, 0, 0)[1]
    if not head then break end
    redis.call('ZREM', Q, head)
    redis.call('ZREM', SEEN, head)
    local t = cjson.decode(redis.call('HGET', T, head))
    t.o = now + connect_ms
    redis.call('HSET', T, head, cjson.encode(t))
    redis.call('ZADD', S, t.o, t.a .. '/' .. head)
    redis.call('LPUSH', A, now)
    table.insert(admitted, {t.a, head, t.o})
    free = free - 1
    moved = 1
  end
  if #admitted > 0 then redis.call('LTRIM', A, 0, ADMISSIONS_KEPT - 1) end
  return {admitted, noshows, evicted, lapsed, moved}
end
local function told(channel, swept)
  if swept[5] == 1 then
    redis.call('PUBLISH', channel, cjson.encode({admitted = swept[1]}))
  end
  return swept
end
""".replace("ADMISSIONS_KEPT", str(ADMISSIONS_KEPT))

# ARGV: 1 now, 2 cap, 3 connect window (ms), 4 idle (ms), 5 channel. The sweep.
_ADVANCE = f"""{_FUNCTIONS}
return told(ARGV[5], advance(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])))
"""

# ARGV: 1-5 as _ADVANCE's, 6 waiting room size, 7 account, 8 session id, 9 user key,
# 10 the slot's lease (ms). A free slot with nobody waiting: {1, sweep}. Otherwise a place
# at the back of the line, or the place the same end user already holds (which it takes
# over: {2, sweep, position, replaced id}); a full waiting room: {3, sweep}.
_TAKE = f"""{_FUNCTIONS}
local swept = advance(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]))
local id = ARGV[8]
local prior = redis.call('HGET', U, ARGV[9])
local score = prior and redis.call('ZSCORE', Q, prior)
local replaced = ''
if score then
  drop_ticket(prior)
  replaced = prior
else
  if redis.call('ZCARD', Q) == 0 and redis.call('ZCARD', S) < tonumber(ARGV[2]) then
    redis.call('ZADD', S, ARGV[10], ARGV[7] .. '/' .. id)
    return {{1, told(ARGV[5], swept)}}
  end
  if redis.call('ZCARD', Q) >= tonumber(ARGV[6]) then return {{3, told(ARGV[5], swept)}} end
  score = redis.call('INCR', SEQ)
end
redis.call('ZADD', Q, score, id)
redis.call('ZADD', SEEN, ARGV[1], id)
redis.call('HSET', T, id, cjson.encode({{a = ARGV[7], u = ARGV[9], o = 0}}))
redis.call('HSET', U, ARGV[9], id)
return {{2, told(ARGV[5], swept), redis.call('ZRANK', Q, id) + 1, replaced}}
"""

# ARGV: 1-5 as _ADVANCE's, 6 account, 7 session id. Gives the session's slot or its place in
# line back (an end, a client leaving the queue, a mint undone), then moves the queue.
_RELEASE = f"""{_FUNCTIONS}
redis.call('ZREM', S, ARGV[6] .. '/' .. ARGV[7])
local moved = drop_ticket(ARGV[7])
local swept = advance(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]))
if moved == 1 then swept[5] = 1 end
return told(ARGV[5], swept)
"""

# ARGV: 1 the lease's end (ms), 2 account, 3 session id. A socket took the session: its slot's
# lease is renewed and an offer it came from is taken. 0 when the slot is gone (its lease ran
# out: the session is over).
_HOLD = f"""{_FUNCTIONS}
local member = ARGV[2] .. '/' .. ARGV[3]
if not redis.call('ZSCORE', S, member) then return 0 end
redis.call('ZADD', S, ARGV[1], member)
drop_ticket(ARGV[3])
return 1
"""

# ARGV: 1 the leases' end (ms), then account and session id pairs. Renews each slot still
# there; returns the pairs whose slot is gone (swept after its lease ran out).
_RENEW = f"""{_FUNCTIONS}
local lost = {{}}
for i = 2, #ARGV, 2 do
  local member = ARGV[i] .. '/' .. ARGV[i + 1]
  if redis.call('ZSCORE', S, member) then
    redis.call('ZADD', S, ARGV[1], member)
  else
    table.insert(lost, {{ARGV[i], ARGV[i + 1]}})
  end
end
return lost
"""

# ARGV: 1 now, 2 touch 0|1, then session ids. For each: {1, position} while waiting, {2,
# offer deadline} once offered, {0} when neither (it left, was evicted, or its offer lapsed);
# then the latest admission times. With touch, the waiting ones count as heard from now.
_STATUS = f"""{_FUNCTIONS}
local answers = {{}}
for i = 3, #ARGV do
  local id = ARGV[i]
  local rank = redis.call('ZRANK', Q, id)
  if rank then
    if ARGV[2] == '1' then redis.call('ZADD', SEEN, 'XX', ARGV[1], id) end
    table.insert(answers, {{1, rank + 1}})
  else
    local raw = redis.call('HGET', T, id)
    if raw then table.insert(answers, {{2, cjson.decode(raw).o}})
    else table.insert(answers, {{0}}) end
  end
end
return {{answers, redis.call('LRANGE', A, 0, -1)}}
"""


class Admitted(msgspec.Struct, frozen=True, array_like=True):
    """A queued session offered a slot: its socket must connect by ``offer_by_ms``."""

    account_id: str
    session_id: str
    offer_by_ms: int


class Moved(msgspec.Struct, frozen=True):
    """What :data:`engine.keyspace.QUEUE_EVENTS` carries: the line moved (places changed),
    and these sessions were offered a slot. (Lua's cjson writes an empty list as {}.)"""

    admitted: list[Admitted] | dict[str, int] = []


decode_moved = msgspec.json.Decoder(Moved).decode


class Sweep(msgspec.Struct, frozen=True):
    """What one script's sweep did: sessions offered a slot, offers lapsed untaken (no-shows),
    queued clients evicted for silence, slots freed by a lease running out."""

    admitted: list[Admitted]
    noshows: int
    evicted: int
    lapsed: int


class Ready(msgspec.Struct, frozen=True):
    pass


class Queued(msgspec.Struct, frozen=True):
    position: int
    replaced: str | None
    """The session whose place this one took (the same end user, queued already)."""


class Full(msgspec.Struct, frozen=True):
    pass


Place = Ready | Queued | Full


class Waiting(msgspec.Struct, frozen=True):
    position: int
    estimated_wait_s: int | None


class Offered(msgspec.Struct, frozen=True):
    offer_by_ms: int
    """The offer lapses at this time unless the session's socket connects."""


class Gone(msgspec.Struct, frozen=True):
    pass


Standing = Waiting | Offered | Gone


def _sweep(raw: list) -> Sweep:
    admitted, noshows, evicted, lapsed, _ = raw
    return Sweep([Admitted(a, s, int(o)) for a, s, o in admitted], noshows, evicted, lapsed)


def estimate(position: int, admissions_ms: list[int], now_ms: int) -> int | None:
    """Seconds until ``position`` is admitted at the recent admission rate, or None when the
    recent history is too short to say (Cloudflare's ``waitTimeKnown``, research notes)."""
    recent = [t for t in admissions_ms if now_ms - t <= ESTIMATE_WINDOW_MS]
    if len(recent) < ESTIMATE_MIN_ADMISSIONS:
        return None
    span = max(recent) - min(recent)
    if span <= 0:
        return None
    per_ms = (len(recent) - 1) / span
    return math.ceil(position / per_ms / 1000)


class Capacity:
    def __init__(
        self,
        redis: Client,
        *,
        max_sessions: int,
        room_size: int,
        connect_seconds: int,
        idle_seconds: int,
        observe: Callable[[Sweep], None] = lambda sweep: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_sessions = max_sessions
        self.room_size = room_size
        self._connect_ms = connect_seconds * 1000
        self._idle_ms = idle_seconds * 1000
        self._observe = observe
        self._clock = clock
        self._advance = redis.register_script(_ADVANCE)
        self._take = redis.register_script(_TAKE)
        self._release = redis.register_script(_RELEASE)
        self._hold = redis.register_script(_HOLD)
        self._renew = redis.register_script(_RENEW)
        self._status = redis.register_script(_STATUS)
        self._redis = redis

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _args(self) -> list[str | int]:
        return [
            self.now_ms(),
            self.max_sessions,
            self._connect_ms,
            self._idle_ms,
            keyspace.QUEUE_EVENTS,
        ]

    def _swept(self, raw: list) -> Sweep:
        sweep = _sweep(raw)
        self._observe(sweep)
        return sweep

    @redis_boundary
    async def take(self, account_id: str, session_id: str, user_id: str, lease_ms: int) -> Place:
        """A slot for the session (its lease until ``lease_ms``), else a place in line (one
        per end user of an account), else Full."""
        answer = await self._take(
            keys=_KEYS,
            args=[
                *self._args(),
                self.room_size,
                account_id,
                session_id,
                f"{account_id}/{user_id}",
                lease_ms,
            ],
        )
        self._swept(answer[1])
        match answer[0]:
            case 1:
                return Ready()
            case 2:
                return Queued(position=answer[2], replaced=answer[3] or None)
        return Full()

    @redis_boundary
    async def release(self, account_id: str, session_id: str) -> Sweep:
        """The session's slot, or its place in line, is free: the next in line is offered it."""
        return self._swept(
            await self._release(keys=_KEYS, args=[*self._args(), account_id, session_id])
        )

    @redis_boundary
    async def advance(self) -> Sweep:
        """Sweep what ran out and offer free slots: run now and then by every process, so
        the queue moves when leases run out with nobody else looking."""
        return self._swept(await self._advance(keys=_KEYS, args=self._args()))

    @redis_boundary
    async def hold(self, account_id: str, session_id: str, until_ms: int) -> bool:
        """A socket took the session: renew its slot's lease to ``until_ms`` (an offer it
        came from is taken). False when the slot is gone: its lease ran out."""
        return bool(await self._hold(keys=_KEYS, args=[until_ms, account_id, session_id]))

    @redis_boundary
    async def renew(self, sessions: list[tuple[str, str]], until_ms: int) -> list[tuple[str, str]]:
        """Renew the leases of the slots of ``sessions`` (account id, session id) to
        ``until_ms``; returns those whose slot is gone (its lease ran out and was swept, say
        while this process hung): they must end, or the cap would be exceeded."""
        if not sessions:
            return []
        # One ZADD renews them all; only when it changed fewer than asked (a slot gone,
        # which is rare) does the script name the ones gone. Ten thousand slots a round made
        # the script alone cost ~6 % of a core (BENCHMARKS.md, "Live sessions").
        leases = {f"{account_id}/{session_id}": until_ms for account_id, session_id in sessions}
        if await self._redis.zadd(K.slots, leases, xx=True, ch=True) == len(leases):
            return []
        pairs = [part for session in sessions for part in session]
        lost = await self._renew(keys=_KEYS, args=[until_ms, *pairs])
        return [(account_id, session_id) for account_id, session_id in lost]

    @redis_boundary
    async def status(self, session_ids: list[str], *, touch: bool) -> list[Standing]:
        """Where each queued session stands; with ``touch``, its client was heard from."""
        if not session_ids:
            return []
        now = self.now_ms()
        answers, admissions = await self._status(keys=_KEYS, args=[now, int(touch), *session_ids])
        times = [int(t) for t in admissions]
        standings: list[Standing] = []
        for answer in answers:
            match answer:
                case [1, position]:
                    standings.append(Waiting(position, estimate(position, times, now)))
                case [2, offer_by]:
                    standings.append(Offered(int(offer_by)))
                case _:
                    standings.append(Gone())
        return standings

    @redis_boundary
    async def counts(self) -> tuple[int, int]:
        """Slots held and clients queued, deployment-wide (for /metrics)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(K.slots)
            pipe.zcard(K.queue)
            held, queued = await pipe.execute()
        return int(held), int(queued)
