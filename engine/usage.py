"""The counters behind the dashboard's Usage page (issue 23, item 4): turns per UTC day and
sessions ended by close code, per account.

Nothing here adds a round trip: the counting is :data:`COUNT`, a Lua function spliced into
the scripts that already run once per event, the turn's closing script
(:mod:`engine.turn_store`, a turn that spent its request) and the session store's ``finish``
(:mod:`sessions.store`, the one place a session ends, whatever ended it). Each day is one
hash of the account (:meth:`engine.keyspace.AccountKeys.activity`, in the account's cluster
slot like every other key those scripts touch), expiring about :data:`KEEP_SECONDS` after that day
(set as each field is first counted, during the day), so the page's 30 days are always there
and nothing older piles up. Reading is one
pipelined round trip.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import msgspec

from engine import keyspace
from engine.state import Client, redis_boundary

DAYS = 30
"""The days the Usage page shows."""
KEEP_SECONDS = 35 * 86_400
"""A day's counters outlive the page's window by a few days, so a clock a little ahead of
Redis's never reads a day already gone."""
TURNS = "turns"
CLOSED = "closed:"
"""Followed by a close code: the field counting sessions that ended with it."""

# Spliced into the scripts that commit what it counts, in the same round trip. `key` is the
# day's hash (:func:`activity_key`). One HINCRBY a count: the lifetime is set by a field's
# first count only (a turn costs ~19 commands, BENCHMARKS.md "Conversation overhead"; an
# EXPIRE on each would be one more), which is at or after the day's start, so the hash
# outlives the day by KEEP_SECONDS at least.
COUNT = f"""
local function count(key, field)
  if redis.call('HINCRBY', key, field, 1) == 1 then redis.call('EXPIRE', key, {KEEP_SECONDS}) end
end
local function count_turn(key) count(key, '{TURNS}') end
local function count_close(key, code) count(key, '{CLOSED}' .. code) end
"""


def activity_key(account_id: str, at: float) -> str:
    """The hash counting the account's activity on the UTC day of ``at`` (epoch seconds)."""
    day = datetime.fromtimestamp(at, UTC).date()
    return keyspace.AccountKeys(account_id).activity(day.isoformat())


class DayTurns(msgspec.Struct, frozen=True):
    date: str
    """``YYYY-MM-DD``, UTC."""
    turns: int


class Closed(msgspec.Struct, frozen=True):
    code: int
    """The close code the sessions ended with (1000, 4001, 4005, 4006, ...)."""
    count: int


class Activity(msgspec.Struct, frozen=True):
    turns_per_day: list[DayTurns]
    """One per day, oldest first, today last; a day without turns is 0."""
    sessions_closed: list[Closed]
    """Sessions ended in those days, by close code, codes ascending."""


@redis_boundary
async def read(redis: Client, account_id: str, *, today: date, days: int = DAYS) -> Activity:
    """The account's counters of the ``days`` UTC days up to ``today``, included."""
    dates = [today - timedelta(days=back) for back in range(days - 1, -1, -1)]
    keys = keyspace.AccountKeys(account_id)
    async with redis.pipeline(transaction=False) as pipe:
        for day in dates:
            pipe.hgetall(keys.activity(day.isoformat()))
        counted: list[dict[str, str]] = await pipe.execute()
    closed: dict[int, int] = {}
    for fields in counted:
        for field, value in fields.items():
            if field.startswith(CLOSED):
                code = int(field.removeprefix(CLOSED))
                closed[code] = closed.get(code, 0) + int(value)
    return Activity(
        turns_per_day=[
            DayTurns(day.isoformat(), int(fields.get(TURNS, 0)))
            for day, fields in zip(dates, counted, strict=True)
        ],
        sessions_closed=[Closed(code, closed[code]) for code in sorted(closed)],
    )
