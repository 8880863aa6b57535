"""The deployment's capacity and the account's cap, in a real redis-server, with a clock the
test moves: caps exact under concurrency, strict FIFO, offers handed on, no-shows, idle
evictions, leases that run out, one place per end user, the wait estimate, and what the
waiting room publishes."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest
import redis.asyncio as aioredis

from engine import keyspace
from engine.errors import ConcurrentSessionLimit, SessionGone, WaitingRoomFull
from engine.personas import Persona, PublishSettings
from engine.state import Client, subscribe
from sessions.capacity import (
    Capacity,
    Gone,
    Moved,
    Offered,
    Queued,
    Ready,
    Sweep,
    Waiting,
    decode_moved,
    estimate,
)
from sessions.store import SessionStore
from tests.conftest import ON_BOTH, Clock, subscribers

START = 1_750_000_000.0
CONNECT, RESUME, IDLE, LEASE = 60, 30, 60, 15
ACCOUNT, OTHER = "a1a1a1a1a1a1", "b2b2b2b2b2b2"
MANY = 1000
PERSONA = Persona(id="p1p1p1p1p1p1", name="Nora", publish_settings=PublishSettings())


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def redis(state: Client) -> Client:
    """Every case here runs on one Redis and on the cluster (ON_BOTH): the capacity is Lua
    scripts over the deployment's slot, pub/sub, and the sessions' per-account scripts."""
    return state


class Rig:
    """A store over a capacity of ``slots``, and what its sweeps reported."""

    def __init__(self, redis: aioredis.Redis, clock: Clock, slots: int, room: int) -> None:
        self.sweeps: list[Sweep] = []
        self.capacity = Capacity(
            redis, max_sessions=slots, room_size=room, connect_seconds=CONNECT,
            idle_seconds=IDLE, observe=self.sweeps.append, clock=clock,
        )  # fmt: skip
        self.store = SessionStore(
            redis, capacity=self.capacity, connect_seconds=CONNECT, resume_seconds=RESUME,
            max_seconds=3600, events_kept=64, lease_seconds=LEASE, queue_idle_seconds=IDLE,
            clock=clock,
        )  # fmt: skip

    async def mint(self, user: str, account: str = ACCOUNT, cap: int = MANY):
        return await self.store.mint(account, user, PERSONA, "chat", account_cap=cap)

    def admitted(self) -> list[str]:
        return [a.session_id for sweep in self.sweeps for a in sweep.admitted]


def rig(redis: aioredis.Redis, clock: Clock, slots: int = 2, room: int = 100) -> Rig:
    return Rig(redis, clock, slots, room)


@ON_BOTH
async def test_the_deployment_cap_is_exact_under_200_concurrent_mints(redis, clock) -> None:
    r = rig(redis, clock, slots=100, room=1000)
    mints = await asyncio.gather(*(r.mint(f"user-{i}") for i in range(200)))
    places = [m.place for m in mints]
    assert sum(isinstance(p, Ready) for p in places) == 100
    positions = sorted(p.position for p in places if isinstance(p, Queued))
    assert positions == list(range(1, 101)), "every queued mint has its own place"
    assert await redis.zcard(keyspace.DeploymentKeys.slots) == 100


@ON_BOTH
async def test_the_account_cap_is_exact_and_never_queues(redis, clock) -> None:
    r = rig(redis, clock, slots=2, room=100)
    results = await asyncio.gather(
        *(r.mint(f"user-{i}", cap=3) for i in range(30)), return_exceptions=True
    )
    taken = [m for m in results if not isinstance(m, BaseException)]
    refused = [e for e in results if isinstance(e, BaseException)]
    assert len(taken) == 3 and all(isinstance(e, ConcurrentSessionLimit) for e in refused)
    assert sorted(type(m.place).__name__ for m in taken) == ["Queued", "Ready", "Ready"]
    # Another account has its own cap, and the deployment its line.
    other = await r.mint("u", account=OTHER, cap=3)
    assert other.place == Queued(position=2, replaced=None)


@ON_BOTH
async def test_a_refused_deployment_slot_gives_the_account_slot_back(redis, clock) -> None:
    r = rig(redis, clock, slots=1, room=1)
    await r.mint("first", cap=3)
    await r.mint("second", cap=3)  # queued: the room's only place
    with pytest.raises(WaitingRoomFull) as full:
        await r.mint("third", cap=3)
    assert full.value.headers["Retry-After"].isdigit()
    slots = keyspace.AccountKeys(ACCOUNT).session_slots
    assert await redis.zcard(slots) == 2, "the refused mint holds nothing"
    assert len(await r.store.live(ACCOUNT)) == 2


@ON_BOTH
async def test_the_line_is_strict_fifo_and_moves_on_every_end(redis, clock) -> None:
    r = rig(redis, clock, slots=1)
    first = await r.mint("first")
    line = [await r.mint(f"user-{i}") for i in range(20)]
    assert [m.place for m in line] == [Queued(i + 1, None) for i in range(20)]
    # A new mint waits behind the line even when a slot frees meanwhile.
    holder = first.session
    for i, waiting in enumerate(line):
        assert await r.store.end(ACCOUNT, holder.id, 1000)
        assert r.admitted()[-1] == waiting.session.id, f"admission {i} in queue order"
        [offered] = await r.capacity.status([waiting.session.id], touch=False)
        assert isinstance(offered, Offered)
        holder = await r.store.claim(ACCOUNT, waiting.session.id, offered.offer_by_ms)
        assert not holder.queued and holder.connect_by.timestamp() * 1000 == offered.offer_by_ms
        await r.store.attach(holder, f"conn-{i}")
    assert r.admitted() == [m.session.id for m in line]


@ON_BOTH
async def test_waiting_clients_see_their_places_and_leaving_moves_the_rest(redis, clock) -> None:
    r = rig(redis, clock, slots=1)
    await r.mint("holder")
    a, b, c = [await r.mint(u) for u in ("a", "b", "c")]
    ids = [m.session.id for m in (a, b, c)]
    assert await r.capacity.status(ids, touch=False) == [Waiting(1, None), Waiting(2, None),
                                                         Waiting(3, None)]  # fmt: skip
    await r.store.leave(ACCOUNT, a.session.id)
    assert await r.capacity.status(ids, touch=False) == [Gone(), Waiting(1, None), Waiting(2, None)]
    with pytest.raises(SessionGone):
        await r.store.get(ACCOUNT, a.session.id)


@ON_BOTH
async def test_an_offer_not_taken_in_the_connect_window_passes_to_the_next(redis, clock) -> None:
    r = rig(redis, clock, slots=1)
    holder = await r.mint("holder")
    late, next_ = await r.mint("late"), await r.mint("next")
    await r.store.end(ACCOUNT, holder.session.id, 1000)
    assert r.admitted() == [late.session.id]
    clock.now += CONNECT + 1  # nobody took it; the next keeps polling
    await r.capacity.status([next_.session.id], touch=True)
    sweep = await r.capacity.advance()
    assert sweep.noshows == 1 and [a.session_id for a in sweep.admitted] == [next_.session.id]
    assert await r.capacity.status([late.session.id], touch=False) == [Gone()]


@ON_BOTH
async def test_a_queued_client_not_heard_from_loses_its_place(redis, clock) -> None:
    r = rig(redis, clock, slots=1)
    holder = (await r.mint("holder")).session
    await r.store.attach(holder, "conn-1")
    quiet, heard = await r.mint("quiet"), await r.mint("heard")
    clock.now += IDLE / 2
    await r.capacity.status([heard.session.id], touch=True)
    clock.now += IDLE / 2 + 1
    await r.store.renew([(ACCOUNT, holder.id)])  # the holder's process renews all along
    sweep = await r.capacity.advance()
    assert sweep.evicted == 1
    assert await r.capacity.status([quiet.session.id, heard.session.id], touch=False) == [
        Gone(),
        Waiting(1, None),
    ]


@ON_BOTH
async def test_a_lease_not_renewed_frees_the_slot_and_ends_the_session(redis, clock) -> None:
    r = rig(redis, clock, slots=1)
    holder = await r.mint("holder")
    waiting = await r.mint("waiting")
    session, _ = await r.store.attach(holder.session, "conn-1")
    clock.now += r.store.lease_ms / 1000 - 1
    await r.store.renew([(ACCOUNT, session.id)])  # its process renews on time once
    clock.now += r.store.lease_ms / 1000 + 1  # then it is killed: nothing renews
    sweep = await r.capacity.advance()
    assert sweep.lapsed == 1 and [a.session_id for a in sweep.admitted] == [waiting.session.id]
    with pytest.raises(SessionGone):
        await r.store.attach(session, "conn-2")  # the client's reconnect comes too late
    assert (await r.store.get(ACCOUNT, session.id)).ended == 1000
    assert await r.store.live(ACCOUNT) == [await r.store.get(ACCOUNT, waiting.session.id)]


@ON_BOTH
async def test_a_dropped_socket_holds_its_slot_through_the_resume_window(redis, clock) -> None:
    r = rig(redis, clock, slots=1)
    holder = await r.mint("holder")
    waiting = (await r.mint("waiting")).session.id
    session, _ = await r.store.attach(holder.session, "conn-1")
    await r.store.detach(session, "conn-1")
    clock.now += RESUME - 1
    assert (await r.capacity.advance()).admitted == []
    await r.store.attach(session, "conn-2")  # resumed in time
    await r.store.detach(session, "conn-2")
    clock.now += RESUME + 1
    await r.capacity.status([waiting], touch=True)  # its client keeps polling
    assert [a.session_id for a in (await r.capacity.advance()).admitted] == [waiting]


@ON_BOTH
async def test_one_place_per_end_user_the_newest_ticket_keeps_it(redis, clock) -> None:
    r = rig(redis, clock, slots=1)
    await r.mint("holder")
    await r.mint("before")
    first = await r.mint("ada")
    await r.mint("after")
    again = await r.mint("ada")
    assert first.place == Queued(2, None) and again.place == Queued(2, first.session.id)
    assert await r.capacity.status([first.session.id, again.session.id], touch=False) == [
        Gone(),
        Waiting(2, None),
    ]
    with pytest.raises(SessionGone):
        await r.store.get(ACCOUNT, first.session.id)
    # Another account's end user of the same id has a place of its own.
    other = await r.mint("ada", account=OTHER)
    assert other.place == Queued(4, None)


async def test_the_estimate_is_unknown_until_there_is_history() -> None:
    assert estimate(3, [], 0) is None
    now = 1_000_000
    times = [now - i * 2000 for i in range(5)]  # one admission every two seconds
    assert estimate(3, times, now) == 6
    assert estimate(3, [t - 3_600_000 for t in times], now) is None, "old history says nothing"


@ON_BOTH
async def test_the_waiting_room_publishes_its_moves(redis, clock) -> None:
    r = rig(redis, clock, slots=1)
    holder = await r.mint("holder")
    waiting = await r.mint("waiting")
    heard: asyncio.Queue[Moved] = asyncio.Queue()

    async def listen() -> None:
        async for data in subscribe(redis, keyspace.QUEUE_EVENTS):
            heard.put_nowait(decode_moved(data))

    task = asyncio.create_task(listen())
    try:
        for _ in range(500):
            if await subscribers(redis, keyspace.QUEUE_EVENTS):
                break
            await asyncio.sleep(0.01)
        await r.store.end(ACCOUNT, holder.session.id, 1000)
        moved = await asyncio.wait_for(heard.get(), 5)
        [admitted] = moved.admitted  # type: ignore[misc]
        assert (admitted.account_id, admitted.session_id) == (ACCOUNT, waiting.session.id)
        assert admitted.offer_by_ms == int(START * 1000) + CONNECT * 1000
        # An empty list as Lua's cjson writes it still decodes.
        assert decode_moved(msgspec.json.encode({"admitted": {}})).admitted == {}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@ON_BOTH
async def test_leaving_the_line_never_undoes_a_session_that_connected(redis, clock) -> None:
    r = rig(redis, clock, slots=1)
    holder = await r.mint("holder")
    waiting = await r.mint("waiting")
    await r.store.end(ACCOUNT, holder.session.id, 1000)
    [offered] = await r.capacity.status([waiting.session.id], touch=False)
    assert isinstance(offered, Offered)
    claimed = await r.store.claim(ACCOUNT, waiting.session.id, offered.offer_by_ms)
    await r.store.attach(claimed, "conn-1")
    with pytest.raises(SessionGone):
        await r.store.leave(ACCOUNT, claimed.id)  # a late DELETE of its poll_url
    assert (await r.store.get(ACCOUNT, claimed.id)).ended is None
    assert await redis.zcard(keyspace.DeploymentKeys.slots) == 1, "its slot is still its own"


@ON_BOTH
async def test_a_slot_swept_while_its_session_lives_ends_it_at_the_next_renewal(
    redis, clock
) -> None:
    r = rig(redis, clock, slots=1)
    hung = (await r.mint("hung")).session
    waiting = (await r.mint("waiting")).session
    await r.store.attach(hung, "conn-1")
    clock.now += r.store.lease_ms / 1000 + 1  # its process hung past the lease
    await r.capacity.status([waiting.id], touch=True)
    assert [a.session_id for a in (await r.capacity.advance()).admitted] == [waiting.id]
    # It wakes and renews: the slot is another's now, so the session ends (1013).
    assert await r.store.renew([(ACCOUNT, hung.id)]) == [(ACCOUNT, hung.id)]
    assert (await r.store.get(ACCOUNT, hung.id)).ended == 1013
    assert await redis.zcard(keyspace.DeploymentKeys.slots) == 1, "the cap holds"
