"""What a turn reads and writes in Redis: one script to open it, one to close it.

A turn needs, before the model: the API key's rate window, the idempotency claim, one
request of the balance, the turn's persona (a live session's, else the account's default),
the user's memory and the persona's active documents; after it: the turn remembered, the
key settled (and, when the turn failed, the request given back). Asked one by one, that
was a dozen round trips and 55 commands; here it is two scripts of about 15 commands in
all (BENCHMARKS.md, "Conversation overhead").

Each rule stays where it lives: the scripts are put together from the Lua functions of
:mod:`engine.ratelimit` (``window_hit``), :mod:`engine.idempotency` (``claim``,
``settle``), :mod:`engine.balance` (``spend``) and :mod:`engine.memory` (``recall``,
``remember``); the Python that prepares their arguments and reads their answers is theirs
too.

Every key either script touches carries the account's hash tag, so both stay legal in Redis
Cluster. The persona's key and its active set are named inside the opening script, from
the persona id it is given or reads there (:meth:`engine.keyspace.AccountKeys.persona` and
``persona_docs`` are the same string plus the id): they are in the same cluster slot as the
keys the script declares.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from engine import keyspace
from engine.balance import SPEND
from engine.errors import (
    IdempotencyUnavailable,
    InternalError,
    NoRequests,
    NotFound,
    SessionGone,
    SessionInteractionLimit,
    StateUnavailable,
)
from engine.idempotency import CLAIM, SETTLE, Claim, Idempotency, IdempotencyKey
from engine.memory import NOTHING_TO_REMEMBER, RECALL, REMEMBER, Memory, MemoryStore, Turn
from engine.personas import Persona
from engine.ratelimit import HIT, WINDOW_MS, Quota, Window, now_ms
from engine.state import Client, unavailable_as
from engine.usage import COUNT, activity_key

# KEYS: 1 the key's rate window, 2 the idempotency key, 3 balance, 4 account, 5 memory turns,
# 6 memory meta, 7 the caller's own budget. ARGV: 1 now (ms), 2 window (ms), 3 the key's limit
# (0: not counted here), 4 the claim's in-flight record ('' without a key), 5 its lifetime
# (s), 6 turns recalled, 7 the prefix of the account's persona keys, 8 the budget's limit
# (-1: unlimited), 9 its units ('' : no budget), 10 the persona's id ('': the account's default).
_OPEN = """
local quota = false
local limit = tonumber(ARGV[3])
if limit > 0 then
  quota = window_hit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), limit, 1)
  if quota[1] == 0 then return {'limited', quota} end
end
if ARGV[4] ~= '' then
  local existing = claim(KEYS[2], ARGV[4], tonumber(ARGV[5]))
  if existing then return {'claimed', quota, existing} end
end
local function undo()
  if ARGV[4] ~= '' then redis.call('DEL', KEYS[2]) end
end
local left = spend(KEYS[3])
if left < 0 then undo(); return {'no_requests', quota} end
local budget = false
if ARGV[9] ~= '' then
  -- A user message opens the turn: its time is the session's last activity.
  budget = charge_budget(KEYS[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[1]))
  if not budget or budget[1] == 0 then
    redis.call('INCR', KEYS[3])
    undo()
    return {budget and 'budget_spent' or 'budget_gone', quota, budget and budget[2] or false}
  end
end
local persona_id = ARGV[10]
if persona_id == '' then
  local account = redis.call('GET', KEYS[4])
  persona_id = account and cjson.decode(account)['default_persona_id']
end
local persona = false
if type(persona_id) == 'string' then persona = redis.call('GET', ARGV[7] .. persona_id) end
if not persona then
  redis.call('INCR', KEYS[3])
  if budget then charge_budget(KEYS[7], -1, -tonumber(ARGV[9])) end
  undo()
  return {'no_persona', quota}
end
return {'open', quota, persona, recall(KEYS[5], KEYS[6], tonumber(ARGV[6])),
        redis.call('SMEMBERS', ARGV[7] .. persona_id .. ':docs'), budget and budget[2] or false}
"""

# KEYS: 1 memory turns, 2 memory meta, 3 the account's users index, 4 the idempotency key,
# 5 balance, 6 the caller's own budget, 7 the account's activity of the day. ARGV: 1-5 the
# arguments of `remember` (1 is '' when nothing is remembered), 6-9 those of `settle` (6 is
# '' without a key), 10 '1' to give the request back, 11 the budget's units to give back
# ('' : none). A turn that keeps its request is counted for the Usage page (engine/usage.py):
# this script runs once per turn that opened, so a replay (never opened) or a refusal is not.
# Returns the turns `remember` pushed out of the memory, for the summary.
_CLOSE = """
local trimmed = {}
if ARGV[1] ~= '' then
  trimmed = remember(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4],
                     tonumber(ARGV[5]))
end
if ARGV[6] ~= '' then
  settle(KEYS[4], ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]))
end
if ARGV[10] == '1' then redis.call('INCR', KEYS[5]) else count_turn(KEYS[7]) end
if ARGV[11] ~= '' then charge_budget(KEYS[6], -1, -tonumber(ARGV[11])) end
return trimmed
"""
_decode_persona = msgspec.json.Decoder(Persona).decode


class Budget(msgspec.Struct, frozen=True):
    """A transport's own budget that a turn spends as it opens (a live session's
    interactions): the account's hash that holds it, its limit, what the turn costs."""

    key: str
    limit: int | None
    """None: unlimited."""
    units: int


class Opened(msgspec.Struct, frozen=True):
    """A turn that may run: its request is spent, its key (if any) claimed, its budget (if
    any) charged."""

    persona: Persona
    memory: Memory
    active: list[str]
    """external_ids active for the persona, as the retriever gets them."""
    quota: Quota | None
    claim: Claim | None
    budget: Budget | None = None
    budget_left: int | None = None
    """What the budget has left after this turn's units; None when unlimited or none."""


class Replay(msgspec.Struct, frozen=True):
    """The key was used before with this payload: its kept outcome (JSON)."""

    outcome: str
    quota: Quota | None


class TurnStore:
    def __init__(
        self,
        redis: Client,
        *,
        memory: MemoryStore,
        idempotency: Idempotency,
        key_rpm: int,
        budget: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``budget``: the Lua function ``charge_budget(key, limit, units)`` of the budget a
        transport may bring (:data:`sessions.store.CHARGE`, handed in by the wiring)."""
        opening = redis.register_script(HIT + CLAIM + SPEND + RECALL + budget + _OPEN)
        # A Redis failure while a key is being claimed is the idempotency store's (seed 004:
        # idempotency_unavailable); any other, the state store's.
        self._open = unavailable_as(StateUnavailable)(opening)
        self._open_claiming = unavailable_as(IdempotencyUnavailable)(opening)
        closing = redis.register_script(REMEMBER + SETTLE + budget + COUNT + _CLOSE)
        self._close = unavailable_as(StateUnavailable)(closing)
        self._close_settling = unavailable_as(IdempotencyUnavailable)(closing)
        self._memory = memory
        self._idempotency = idempotency
        self._key_rpm = key_rpm
        self._clock = clock

    async def open(
        self,
        account_id: str,
        user_id: str,
        *,
        key_slot: str | None,
        idempotency_key: IdempotencyKey | None,
        budget: Budget | None = None,
        persona_id: str | None = None,
    ) -> Opened | Replay:
        """Count the API key's request (``key_slot``: the slot of the key that sent it;
        None when the transport counted it already), claim ``idempotency_key``, spend a
        request and ``budget``'s units, and read what the turn needs. A repeat of a claimed
        key spends nothing.

        Raises RateLimited, IdempotencyKeyReused or IdempotencyInFlight, NoRequests,
        SessionInteractionLimit (the budget lacks the units), SessionGone (its session
        ended), NotFound (``persona_id`` names no persona of the account; None reads the
        account's default)."""
        keys = keyspace.AccountKeys(account_id)
        claim = None
        if idempotency_key is not None:
            claim = self._idempotency.claim(account_id, idempotency_key)
        limit = self._key_rpm if key_slot is not None else 0
        script = self._open if claim is None else self._open_claiming
        answer = await script(
            keys=[
                keys.rate_window("v1-key", key_slot or "-"),
                claim.redis_key if claim else keys.idempotency("-"),
                keys.balance,
                keys.account,
                *self._memory.keys(account_id, user_id),
                budget.key if budget else keys.balance,
            ],
            args=[
                now_ms(self._clock),
                WINDOW_MS,
                limit,
                claim.record if claim else "",
                self._idempotency.in_flight_ttl,
                self._memory.recent_turns,
                keys.persona(""),
                *_budget_args(budget),
                persona_id or "",
            ],
        )
        status, window = answer[0], answer[1]
        quota = Quota.of(self._key_rpm, Window(*window)) if window else None
        match status:
            case "limited":
                assert quota is not None
                raise quota.refuse()
            case "claimed":
                assert claim is not None
                return Replay(self._idempotency.existing(claim, answer[2]), quota)
            case "no_requests":
                raise NoRequests()
            case "budget_spent":
                assert budget is not None
                raise SessionInteractionLimit(
                    f"The session has {answer[2]} billing units left; a turn costs {budget.units}."
                )
            case "budget_gone":
                raise SessionGone()
            case "no_persona" if persona_id:
                # Deleted since the session was minted: nothing to answer as.
                raise NotFound("Persona not found.")
            case "no_persona":
                raise InternalError(f"Account {account_id} has no default persona.")
        return Opened(
            persona=_decode_persona(answer[2]),
            memory=MemoryStore.recalled(answer[3]),
            active=sorted(answer[4]),
            quota=quota,
            claim=claim,
            budget=budget,
            budget_left=None if budget is None or budget.limit is None else int(answer[5]),
        )

    async def close(
        self,
        account_id: str,
        user_id: str,
        *,
        turn: Turn | None,
        claim: Claim | None,
        outcome: bytes | None,
        refund: bool,
        budget: Budget | None = None,
    ) -> bool:
        """Remember ``turn``, keep ``outcome`` for the claim (None: release it), and give
        the request back when ``refund``, with ``budget``'s units. Returns whether the
        summary grew."""
        keys = keyspace.AccountKeys(account_id)
        remember = (
            self._memory.remember_args(user_id, turn)
            if turn is not None
            else list(NOTHING_TO_REMEMBER)
        )
        script = self._close if claim is None else self._close_settling
        trimmed = await script(
            keys=[
                *self._memory.remember_keys(account_id, user_id),
                claim.redis_key if claim else keys.idempotency("-"),
                keys.balance,
                budget.key if budget else keys.balance,
                activity_key(account_id, self._clock()),
            ],
            args=[
                *remember,
                *self._idempotency.settle_args(claim, outcome),
                "1" if refund else "0",
                budget.units if refund and budget else "",
            ],
        )
        return await self._memory.fold(account_id, user_id, trimmed)


def _budget_args(budget: Budget | None) -> list[int | str]:
    if budget is None:
        return [-1, ""]
    return [-1 if budget.limit is None else budget.limit, budget.units]
