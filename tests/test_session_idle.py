"""Quiet sessions give their slot back (issue 24, item 4; DESIGN.md, "Slots"): a live session
with no user message for RAPPORT_SESSION_IDLE_SECONDS ends with its own close code, 4007,
after a ``session.closing`` that names it; its slot goes to the next client in line.

Real ``rapport serve`` processes on one Redis, started at once: A and B with a 2 s idle
window (and one slot for the whole deployment, so that a second session waits in line), C
with the window off.
Only user messages (and the first connect) are activity: pings and reconnects are not, and
the deadline holds whichever process saw the last message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from engine import usage
from loadtest.fake_llm import FakeOpenAI
from sessions.store import token_account
from tests.conftest import ChromaServer, RedisServer, Server, llm_env
from tests.test_sessions import Live, mint, on, opened, types, unique
from tests.test_waiting_room import next_of

IDLE = 2.0
"""RAPPORT_SESSION_IDLE_SECONDS of A and B."""


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path_factory.mktemp("idle-redis"))
    redis.start()
    yield redis
    redis.stop()


def _node(
    factory: pytest.TempPathFactory, name: str, fake_llm: FakeOpenAI, redis: RedisServer,
    chroma: ChromaServer, idle: float,
) -> Server:  # fmt: skip
    env = llm_env(
        fake_llm, RAPPORT_REDIS_URL=redis.url, RAPPORT_CHROMA_URL=chroma.url,
        RAPPORT_SESSION_IDLE_SECONDS=str(int(idle)), RAPPORT_MAX_SESSIONS="1",
        # A slot whose lease ran out is swept within a second (a third of the lease).
        RAPPORT_SESSION_LEASE_SECONDS="3",
    )  # fmt: skip
    return Server(factory.mktemp(f"idle-{name}") / "data", **env)


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI, shared_redis: RedisServer,
    chroma_server: ChromaServer,
) -> Iterator[tuple[Server, Server, Server]]:  # fmt: skip
    """A and B, with the idle window, and C, with it off: started at once."""
    made = [
        _node(tmp_path_factory, name, fake_llm, shared_redis, chroma_server, idle)
        for name, idle in (("a", IDLE), ("b", IDLE), ("off", 0))
    ]
    try:
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(Server.start, made))
        yield made[0], made[1], made[2]
    finally:
        # Stopped before the Redis they share (its fixture's teardown comes next): all
        # told at once, then each awaited.
        for running in made:
            running.terminate()
        for running in made:
            running.reap()


@pytest.fixture(scope="module")
def api_key(nodes: tuple[Server, Server, Server]) -> str:
    return nodes[0].new_tenant(unique("idle"))


@pytest.fixture
async def http(
    nodes: tuple[Server, Server, Server], api_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The backend on A; whatever a test left live is ended after it (one slot in all)."""
    async with httpx.AsyncClient(
        base_url=nodes[0].base_url, headers={"X-Api-Key": api_key}, timeout=10
    ) as client:
        yield client
        for item in (await client.get("/api/sessions")).json()["items"]:
            await client.delete(f"/api/sessions/{item['session_id']}")


async def ended_code(http: httpx.AsyncClient, session_id: str) -> int | None:
    shown = (await http.get(f"/api/sessions/{session_id}")).json()
    return shown["ended_code"] if shown["status"] == "ended" else None


async def closes_4007(live: Live, seconds: float = 5) -> None:
    events, code = await live.closed(seconds)
    assert types(events) == ["session.closing"], events
    assert (events[0]["code"], events[0]["reason"]) == (4007, "session.idle_timeout")
    assert code == 4007


async def alive(live: Live) -> None:
    await live.send("ping")
    assert (await live.next(1))["type"] == "pong"


async def at(moment: float) -> None:
    """Wait until ``moment`` (monotonic)."""
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def talk(live: Live) -> None:
    """A user message, its reply read to the end."""
    await live.send("user.message", text="Hello")
    await live.until("budget")


async def test_a_quiet_session_pinging_all_along_closes_4007_and_shows_it_ended_4007(
    http: httpx.AsyncClient, shared_redis: RedisServer
) -> None:
    minted = await mint(http)
    account = token_account(parse_qs(urlsplit(minted["ws_url"]).query)["token"][0])
    assert account is not None
    before = await closes_counted(shared_redis, account)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        # Pings every 0.4 s are no activity: the session ends IDLE after the first connect.
        with contextlib.suppress(ConnectionClosed):
            for _ in range(int(2 * IDLE / 0.4)):
                await live.send("ping")
                await asyncio.sleep(0.4)
        events, code = await live.closed(2)
    assert types(events) == ["pong"] * (len(events) - 1) + ["session.closing"]
    assert len(events) > IDLE / 0.4
    assert (events[-1]["code"], events[-1]["reason"]) == (4007, "session.idle_timeout")
    assert code == 4007
    assert await ended_code(http, minted["session_id"]) == 4007
    # Counted once, as 4007, for the Usage page.
    assert await closes_counted(shared_redis, account) == before + 1


async def closes_counted(redis: RedisServer, account_id: str) -> int:
    """Today's 4007 closes of the account (engine/usage.py)."""
    client = aioredis.from_url(redis.url, decode_responses=True)
    try:
        key = usage.activity_key(account_id, time.time())
        return int(await client.hget(key, f"{usage.CLOSED}4007") or 0)
    finally:
        await client.aclose()


async def test_a_user_message_puts_the_deadline_off(http: httpx.AsyncClient) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        connected = time.monotonic()
        await at(connected + 0.5 * IDLE)
        await talk(live)
        # Past the deadline the first connect set: still open.
        await at(connected + 1.2 * IDLE)
        await alive(live)
        await closes_4007(live)
    assert await ended_code(http, minted["session_id"]) == 4007


async def test_the_next_client_in_line_is_admitted_when_the_quiet_session_ends(
    http: httpx.AsyncClient,
) -> None:
    first = await mint(http)
    async with opened(first["ws_url"]) as live:
        await live.next()
        queued = await http.post("/api/sessions", json={"user_id": unique("u"), "mode": "chat"})
        assert queued.status_code == 202, queued.text
        async with opened(queued.json()["queue_ws_url"]) as watch:
            await closes_4007(live)
            read, _ = await next_of(watch, "queue.admitted", 3)
    admitted = read[-1]
    async with opened(admitted["ws_url"]) as second:
        assert (await second.next())["type"] == "session.ready"


async def test_a_disconnected_session_ends_4007_within_its_resume_window_and_frees_its_slot(
    http: httpx.AsyncClient,
) -> None:
    # The resume window (30 s) outlasts the idle one: the slot is given back at the latter.
    first = await mint(http)
    async with opened(first["ws_url"]) as live:
        await live.next()
    queued = await http.post("/api/sessions", json={"user_id": unique("u"), "mode": "chat"})
    assert queued.status_code == 202, queued.text
    async with opened(queued.json()["queue_ws_url"]) as watch:
        read, _ = await next_of(watch, "queue.admitted", IDLE + 3)
    assert read[-1]["type"] == "queue.admitted"
    assert await ended_code(http, first["session_id"]) == 4007


async def test_a_message_on_one_process_holds_on_the_other_after_a_reconnect(
    http: httpx.AsyncClient, nodes: tuple[Server, Server, Server]
) -> None:
    b = nodes[1]
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await talk(live)
        spoke = time.monotonic()
    # A reconnect on B, late in the window, is no activity: B ends it IDLE after the message
    # A saw, not IDLE after the reconnect.
    await at(spoke + 0.75 * IDLE)
    async with opened(on(b, minted["ws_url"])) as live:
        await live.next()
        events, code = await live.closed(5)
        closed = time.monotonic()
    assert types(events) == ["session.closing"] and code == 4007
    assert closed < spoke + 1.6 * IDLE, "counted from the message on A, not the reconnect on B"


async def test_a_message_on_another_process_puts_the_deadline_off_for_this_one(
    http: httpx.AsyncClient, nodes: tuple[Server, Server, Server]
) -> None:
    b = nodes[1]
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        connected = time.monotonic()
    await at(connected + 0.25 * IDLE)
    async with opened(on(b, minted["ws_url"])) as live:
        await live.next()
        await talk(live)
    # Back on A, past the deadline its own first connect set: B's message counts here.
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await at(connected + 1.2 * IDLE)
        await alive(live)
        await closes_4007(live)


async def test_an_idle_limit_of_zero_never_ends_a_quiet_session(
    nodes: tuple[Server, Server, Server], api_key: str
) -> None:
    off = nodes[2]
    async with httpx.AsyncClient(
        base_url=off.base_url, headers={"X-Api-Key": api_key}, timeout=10
    ) as backend:
        minted = await mint(backend)
        async with opened(minted["ws_url"]) as live:
            await live.next()
            connected = time.monotonic()
            await at(connected + 1.3 * IDLE)
            await alive(live)
        # Read where the window is off (A would end it: every node must be set alike).
        assert await ended_code(backend, minted["session_id"]) is None
        await backend.delete(f"/api/sessions/{minted['session_id']}")
