"""The session store against a real redis-server, with a clock the test moves: minting and
its checks, the token (only a digest stored), admission, lazy ends of lapsed windows, socket
ownership, exact budgets under concurrency, the resume stream, ends, and the control channel."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest
import redis.asyncio as aioredis

from engine import keyspace
from engine.accounts import AccountStore
from engine.balance import Balance
from engine.errors import (
    SessionGone,
    SessionInteractionLimit,
    SessionTimeLimit,
    SessionTokenInvalid,
    ValidationFailed,
)
from engine.idempotency import Idempotency
from engine.memory import MemoryStore
from engine.personas import Availability, Persona, PersonaStore, PublishSettings, Window
from engine.state import Client
from engine.tenants import create_tenant
from engine.turn_store import Opened, TurnStore
from sessions.capacity import Capacity
from sessions.protocol import COST
from sessions.store import CHARGE, Control, SessionStore
from tests.conftest import ON_BOTH, Clock, subscribers

# Monday 2 June 2025, 10:00 UTC.
START = datetime(2025, 6, 2, 10, 0, tzinfo=UTC).timestamp()
CONNECT, RESUME, MAX = 60, 30, 3600
CAP = 100
ACCOUNT, OTHER = "a1a1a1a1a1a1", "b2b2b2b2b2b2"


def persona(**publish: object) -> Persona:
    return Persona(
        id="p1p1p1p1p1p1", name="Nora", publish_settings=msgspec.convert(publish, PublishSettings)
    )


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def redis(state: Client) -> Client:
    """Every store here runs on ``state``: the test's own Redis, and the cluster as well for
    the tests marked ON_BOTH (all but the one that restarts its Redis)."""
    return state


def make_store(redis: aioredis.Redis, clock: Clock, events_kept: int = 512) -> SessionStore:
    return SessionStore(
        redis,
        capacity=Capacity(
            redis,
            max_sessions=1000,
            room_size=1000,
            connect_seconds=CONNECT,
            idle_seconds=60,
            clock=clock,
        ),
        connect_seconds=CONNECT,
        resume_seconds=RESUME,
        max_seconds=MAX,
        events_kept=events_kept,
        clock=clock,
    )


@pytest.fixture
def store(redis: aioredis.Redis, clock: Clock) -> SessionStore:
    return make_store(redis, clock)


Heard = asyncio.Queue[Control]


@contextlib.asynccontextmanager
async def listening(store: SessionStore, redis: aioredis.Redis) -> AsyncIterator[Heard]:
    """The store's listener running in a task, subscribed; what it hears, as it hears it."""
    heard: Heard = asyncio.Queue()

    async def listen() -> None:
        async for control in store.listen():
            heard.put_nowait(control)

    task = asyncio.create_task(listen())
    await subscribed(redis)
    try:
        yield heard
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_heard(heard: Heard) -> Control:
    return await asyncio.wait_for(heard.get(), 5)


async def nothing_more(heard: Heard, redis: aioredis.Redis) -> None:
    """Nothing else was published before now: the next message heard is a marker sent now."""
    marker = Control("-", "-", "ended", "marker")
    await redis.publish(keyspace.SESSION_CONTROL, msgspec.json.encode(marker))
    assert await next_heard(heard) == marker


async def subscribed(redis: aioredis.Redis) -> None:
    """Wait until a listener is subscribed to the control channel."""
    for _ in range(1000):
        if await subscribers(redis, keyspace.SESSION_CONTROL) >= 1:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("nobody subscribed to the control channel")


@ON_BOTH
async def test_minting_fixes_the_budgets_and_stores_only_a_digest(store, redis, clock) -> None:
    session, token, _ = await store.mint(
        ACCOUNT, "usr-42", persona(session_interaction_limit=40), "full", account_cap=CAP
    )
    account_id, session_id, secret = token.split(".")
    assert (account_id, session_id) == (ACCOUNT, session.id)
    assert len(secret) == 43
    assert session.created_at.timestamp() == START
    assert session.connect_by.timestamp() == START + CONNECT
    assert (session.persona_id, session.persona_name, session.mode) == (
        "p1p1p1p1p1p1",
        "Nora",
        "full",
    )
    assert (session.interaction_limit, session.duration_limit_s) == (40, MAX)
    assert session.interactions_left() == 40
    assert session.ends_at() is None and session.connected_at is None and session.ended is None
    now = datetime.fromtimestamp(START, UTC)
    assert session.seconds_left(now) == MAX and session.expires_at(now) == session.connect_by
    assert await store.get(ACCOUNT, session.id) == session

    stored = await redis.hgetall(keyspace.AccountKeys(ACCOUNT).session(session.id))
    assert set(stored) == {"record", "used", "seq"}
    assert not any(secret in value for value in stored.values()), "the secret is never stored"
    assert await redis.ttl(keyspace.AccountKeys(ACCOUNT).session(session.id)) > 0

    limited, _, _ = await store.mint(
        ACCOUNT, "u", persona(session_duration_limit_seconds=900), "chat", account_cap=CAP
    )
    assert (limited.interaction_limit, limited.duration_limit_s) == (None, 900)
    assert limited.interactions_left() is None


@ON_BOTH
async def test_a_mode_the_persona_does_not_allow_is_refused(store) -> None:
    with pytest.raises(ValidationFailed) as refused:
        await store.mint(ACCOUNT, "u", persona(allowed_modes=["chat"]), "full", account_cap=CAP)
    assert refused.value.errors == {"mode": ["one of chat"]}
    assert await store.live(ACCOUNT) == []


def weekly(time_zone: str, *windows: tuple[str, str, str]) -> Availability:
    return Availability(time_zone, [Window(*w) for w in windows])


def test_availability_windows_are_local_weekdays_start_included_end_excluded() -> None:
    # 10:00 UTC on Monday 2 June 2025 is 11:00 in Lisbon (WEST) and 19:00 in Tokyo.
    monday = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
    assert weekly("Europe/Lisbon", ("mon", "11:00", "12:00")).open_at(monday)
    assert not weekly("Europe/Lisbon", ("mon", "09:00", "11:00")).open_at(monday)
    assert not weekly("Europe/Lisbon", ("tue", "00:00", "23:59")).open_at(monday)
    assert weekly("Asia/Tokyo", ("sun", "00:00", "23:59"), ("mon", "18:59", "19:01")).open_at(
        monday
    )
    assert not weekly("UTC").open_at(monday), "no windows: never open"


@ON_BOTH
async def test_outside_the_opening_hours_no_session_starts(store, clock) -> None:
    hours = {
        "time_zone": "Europe/Lisbon",
        "windows": [{"day": "mon", "start": "09:00", "end": "11:00"}],
    }
    with pytest.raises(SessionTimeLimit):
        await store.mint(ACCOUNT, "u", persona(availability=hours), "chat", account_cap=CAP)
    clock.now = START - 60  # 10:59 in Lisbon
    assert (await store.mint(ACCOUNT, "u", persona(availability=hours), "chat", account_cap=CAP))[
        0
    ].id


@ON_BOTH
async def test_live_lists_oldest_first_and_ends_lapsed_sessions_on_the_way(
    store, redis, clock
) -> None:
    first, _, _ = await store.mint(ACCOUNT, "u1", persona(), "chat", account_cap=CAP)
    clock.now += 1
    second, _, _ = await store.mint(ACCOUNT, "u2", persona(), "chat", account_cap=CAP)
    await store.mint(OTHER, "u3", persona(), "chat", account_cap=CAP)
    assert [s.id for s in await store.live(ACCOUNT)] == [first.id, second.id]

    await store.attach(second, "conn-1")
    async with listening(store, redis) as heard:
        clock.now = START + CONNECT + 0.5  # the first's token was never used
        await store.renew([(ACCOUNT, second.id)])  # as its socket's process does all along
        assert [s.id for s in await store.live(ACCOUNT)] == [second.id]
        ended = await next_heard(heard)
    assert ended == Control(ACCOUNT, first.id, "ended", "", 4001)
    assert (await store.get(ACCOUNT, first.id)).ended == 4001
    assert await redis.zrange(keyspace.AccountKeys(ACCOUNT).sessions, 0, -1) == [second.id]

    clock.now = START + 1 + MAX  # the second connected at START + 1: its duration is spent
    await store.renew([(ACCOUNT, second.id)])
    assert await store.live(ACCOUNT) == []
    assert (await store.get(ACCOUNT, second.id)).ended == 4006


@ON_BOTH
async def test_a_session_whose_hash_expired_leaves_the_listing(store, redis) -> None:
    session, _, _ = await store.mint(ACCOUNT, "u", persona(), "chat", account_cap=CAP)
    await redis.delete(keyspace.AccountKeys(ACCOUNT).session(session.id))
    assert await store.live(ACCOUNT) == []
    assert await redis.zcard(keyspace.AccountKeys(ACCOUNT).sessions) == 0
    with pytest.raises(SessionGone):
        await store.get(ACCOUNT, session.id)


@ON_BOTH
async def test_admission_checks_the_token(store) -> None:
    session, token, _ = await store.mint(ACCOUNT, "u", persona(), "chat", account_cap=CAP)
    other, other_token, _ = await store.mint(ACCOUNT, "u", persona(), "chat", account_cap=CAP)
    assert await store.admit(token, session.id) == session

    with pytest.raises(SessionTokenInvalid):
        await store.admit(other_token, session.id)  # a valid token, of another session
    account_id, session_id, secret = token.split(".")
    forged = ".".join([account_id, session_id, other_token.split(".")[2]])
    with pytest.raises(SessionTokenInvalid):
        await store.admit(forged, session.id)  # the right session, another's secret
    for malformed in (
        "",
        "nope",
        token + ".x",
        token.replace(".", ":"),
        f"{{x}}.{session_id}.{secret}",
    ):
        with pytest.raises(SessionTokenInvalid):
            await store.admit(malformed, session.id)
    # An unknown session answers as a wrong secret does: no telling which ids exist.
    unknown = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    with pytest.raises(SessionTokenInvalid):
        await store.admit(f"{account_id}.{unknown}.{secret}", unknown)
    with pytest.raises(SessionTokenInvalid):
        await store.admit(f"{OTHER}.{session_id}.{secret}", session.id)  # not that account's

    assert await store.end(ACCOUNT, other.id, 1000)
    with pytest.raises(SessionGone):
        await store.admit(other_token, other.id)


@ON_BOTH
async def test_a_token_unused_past_the_connect_window_is_expired_and_ends_the_session(
    store, clock
) -> None:
    session, token, _ = await store.mint(ACCOUNT, "u", persona(), "chat", account_cap=CAP)
    clock.now = START + CONNECT
    assert (await store.admit(token, session.id)).id == session.id, "the deadline itself is in"
    clock.now = START + CONNECT + 0.01
    with pytest.raises(SessionTokenInvalid, match="expired"):
        await store.admit(token, session.id)
    assert (await store.get(ACCOUNT, session.id)).ended == 4001
    assert await store.live(ACCOUNT) == []
    with pytest.raises(SessionTokenInvalid, match="expired"):
        await store.admit(token, session.id)  # the same answer when asked again


@ON_BOTH
async def test_a_socket_gone_past_the_resume_window_ends_the_session(store, clock) -> None:
    session, token, _ = await store.mint(ACCOUNT, "u", persona(), "chat", account_cap=CAP)
    session, _ = await store.attach(await store.admit(token, session.id), "conn-1")
    await store.detach(session, "conn-1")
    clock.now = START + RESUME  # within the window: the session may resume
    resumed, previous = await store.attach(await store.admit(token, session.id), "conn-2")
    assert previous == "conn-1" and resumed.connected_at == session.connected_at
    await store.detach(resumed, "conn-1")  # an old owner's late detach changes nothing
    clock.now = START + 10 * RESUME
    await store.renew([(ACCOUNT, session.id)])  # conn-2's process renews all along
    assert (await store.admit(token, session.id)).ended is None, "conn-2 is still there"

    await store.detach(resumed, "conn-2")
    clock.now += RESUME + 0.01
    with pytest.raises(SessionGone):
        await store.admit(token, session.id)
    assert (await store.get(ACCOUNT, session.id)).ended == 1000


@ON_BOTH
async def test_attaching_starts_the_duration_and_replaces_the_previous_owner(
    store, redis, clock
) -> None:
    session, _, _ = await store.mint(ACCOUNT, "u", persona(), "chat", account_cap=CAP)
    clock.now = START + 5
    attached, previous = await store.attach(session, "conn-1")
    assert previous is None
    assert attached.connected_at == datetime.fromtimestamp(START + 5, UTC)
    assert attached.ends_at() == datetime.fromtimestamp(START + 5 + MAX, UTC)
    now = datetime.fromtimestamp(START + 65, UTC)
    assert attached.seconds_left(now) == MAX - 60 and attached.expires_at(now) == attached.ends_at()

    async with listening(store, redis) as heard:
        clock.now = START + 20
        await store.renew([(ACCOUNT, session.id)])  # conn-1's process renews all along
        again, previous = await store.attach(session, "conn-1")  # the same connection
        assert previous == "conn-1" and again.connected_at == attached.connected_at
        newer, previous = await store.attach(session, "conn-2")
        assert previous == "conn-1" and newer.connected_at == attached.connected_at
        replaced = await next_heard(heard)
        await nothing_more(heard, redis)
    assert replaced == Control(ACCOUNT, session.id, "replaced", "conn-1", 4009)

    assert await store.end(ACCOUNT, session.id, 1000)
    with pytest.raises(SessionGone):
        await store.attach(session, "conn-3")


async def opener(redis: aioredis.Redis) -> tuple[TurnStore, str, Persona]:
    """A turn store wired as the server wires it (the session budget's Lua handed in), and
    a real account with its default persona and balance, which opening a turn needs."""
    accounts, personas = AccountStore(redis), PersonaStore(redis)
    account = await create_tenant(accounts, personas, f"budget-{uuid.uuid4().hex[:8]}")
    assert account.default_persona_id is not None
    default = await personas.get(account.id, account.default_persona_id)
    turns = TurnStore(
        redis,
        memory=MemoryStore(redis),
        idempotency=Idempotency(in_flight_ttl=60),
        key_rpm=60,
        budget=CHARGE,
    )
    return turns, account.id, default


@ON_BOTH
async def test_a_sessions_budget_is_spent_exactly_under_concurrency(redis, store) -> None:
    turns, account_id, default = await opener(redis)
    limited = msgspec.structs.replace(
        default, publish_settings=PublishSettings(session_interaction_limit=10)
    )
    session, _, _ = await store.mint(account_id, "u", limited, "chat", account_cap=CAP)
    results = await asyncio.gather(
        *(
            turns.open(account_id, "u", key_slot=None, idempotency_key=None,
                       budget=session.budget(COST["chat"]))
            for _ in range(50)
        ),
        return_exceptions=True,
    )  # fmt: skip
    opened = [r for r in results if isinstance(r, Opened)]
    assert sorted(o.budget_left for o in opened) == list(range(10))
    assert all(isinstance(r, SessionInteractionLimit) for r in results if r not in opened)
    assert (await store.get(account_id, session.id)).used == 10
    # Refused turns gave their request back: ten were spent of the account's balance.
    assert await Balance(redis).get(account_id) == 10_000 - 10


@ON_BOTH
async def test_a_full_mode_turn_needs_two_units_and_a_failed_one_gives_them_back(
    redis, store
) -> None:
    turns, account_id, default = await opener(redis)
    three = msgspec.structs.replace(
        default, publish_settings=PublishSettings(session_interaction_limit=3)
    )
    session, _, _ = await store.mint(account_id, "u", three, "full", account_cap=CAP)
    full = session.budget(COST["full"])
    first = await turns.open(account_id, "u", key_slot=None, idempotency_key=None, budget=full)
    assert isinstance(first, Opened) and first.budget_left == 1
    with pytest.raises(SessionInteractionLimit):
        await turns.open(account_id, "u", key_slot=None, idempotency_key=None, budget=full)
    assert (await store.get(account_id, session.id)).interactions_left() == 1, "nothing spent"
    await turns.close(account_id, "u", turn=None, claim=None, outcome=None, refund=True,
                      budget=first.budget)  # fmt: skip
    assert (await store.get(account_id, session.id)).interactions_left() == 3, "given back"

    unlimited, _, _ = await store.mint(account_id, "u", default, "full", account_cap=CAP)
    for _ in range(3):
        opened = await turns.open(account_id, "u", key_slot=None, idempotency_key=None,
                                  budget=unlimited.budget(COST["full"]))  # fmt: skip
        assert isinstance(opened, Opened) and opened.budget_left is None
    assert (await store.get(account_id, unlimited.id)).used == 6
    assert await store.end(account_id, unlimited.id, 1000)
    with pytest.raises(SessionGone):
        await turns.open(account_id, "u", key_slot=None, idempotency_key=None,
                         budget=unlimited.budget(COST["full"]))  # fmt: skip


def event(seq: int) -> tuple[int, bytes]:
    return seq, b'{"type":"reply.delta","seq":%d}' % seq


@ON_BOTH
async def test_events_replay_exactly_after_a_seq(store) -> None:
    session, _, _ = await store.mint(ACCOUNT, "u", persona(), "chat", account_cap=CAP)
    assert await store.replay(session, 0) == []
    await store.append(session, [event(1), event(2)])
    await store.append(session, [event(3)])
    await store.append(session, [])
    assert (await store.get(ACCOUNT, session.id)).seq == 3
    assert await store.replay(session, 0) == [event(n)[1] for n in (1, 2, 3)]
    assert await store.replay(session, 2) == [event(3)[1]]
    assert await store.replay(session, 3) == []
    assert await store.replay(session, 4) is None, "a seq never sent cannot be resumed from"


@ON_BOTH
async def test_replay_is_refused_once_events_were_trimmed(redis, clock) -> None:
    store = make_store(redis, clock, events_kept=16)
    session, _, _ = await store.mint(ACCOUNT, "u", persona(), "chat", account_cap=CAP)
    await store.append(session, [event(n) for n in range(1, 301)])
    stream = keyspace.AccountKeys(ACCOUNT).session_events(session.id)
    kept = await redis.xlen(stream)
    assert 16 <= kept < 300
    assert await store.replay(session, 0) is None
    assert await store.replay(session, 300 - kept - 1) is None, "one missing is too many"
    assert await store.replay(session, 300 - kept) == [event(n)[1] for n in range(301 - kept, 301)]
    assert await redis.pttl(stream) > 0, "the stream goes with its session"


@ON_BOTH
async def test_ending_is_first_wins_drops_the_events_and_is_heard(store, redis) -> None:
    session, _, _ = await store.mint(ACCOUNT, "u", persona(), "chat", account_cap=CAP)
    await store.attach(session, "conn-1")
    await store.append(session, [event(1)])
    async with listening(store, redis) as heard:
        assert await store.end(ACCOUNT, session.id, 4005)
        assert not await store.end(ACCOUNT, session.id, 1000)
        assert not await store.end(ACCOUNT, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", 1000)
        ended = await next_heard(heard)
        await nothing_more(heard, redis)
    assert ended == Control(ACCOUNT, session.id, "ended", "conn-1", 4005)
    assert (await store.get(ACCOUNT, session.id)).ended == 4005
    assert await store.live(ACCOUNT) == []
    keys = keyspace.AccountKeys(ACCOUNT)
    assert not await redis.exists(keys.session_events(session.id))
    await store.append(session, [event(2)])
    assert not await redis.exists(keys.session_events(session.id)), "no events after the end"
    assert await redis.ttl(keys.session(session.id)) <= 3600


async def test_the_listener_skips_bad_messages_and_survives_a_redis_restart(
    store, redis, redis_server
) -> None:
    async with listening(store, redis) as heard:
        await redis.publish(keyspace.SESSION_CONTROL, "not json")
        await redis.publish(keyspace.SESSION_CONTROL, '{"kind": "unknown"}')
        good = Control(ACCOUNT, "s1", "ended", "conn-1", 1000)
        await redis.publish(keyspace.SESSION_CONTROL, msgspec.json.encode(good))
        assert await next_heard(heard) == good

        redis_server.stop()
        # Down for longer than the client's own quick retry: the listener must dial again.
        await asyncio.sleep(0.3)
        redis_server.start()
        await subscribed(redis)
        again = Control(ACCOUNT, "s2", "replaced", "conn-2", 4009)
        await redis.publish(keyspace.SESSION_CONTROL, msgspec.json.encode(again))
        assert await next_heard(heard) == again
