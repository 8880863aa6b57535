"""The deployment's capacity and its waiting room end to end (DESIGN.md, "Live sessions":
minting, slots, waiting room, handshake guards): real ``rapport serve`` processes, two on one
redis-server where the deployment spans processes, real HTTP and WebSocket clients, the fake
LLM.

Most tests share one deployment of two processes on one Redis with two slots, a waiting
room of twenty and short windows (leases, idle places, connect windows of seconds). Slots
are deployment-wide, so each of those tests ends what it made and leaves the deployment
empty (checked after every test, on /metrics). Tests whose settings or whose damage would
disturb the others (200 mints, rate-limit windows, a process killed) have servers of their
own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from loadtest.fake_llm import FakeOpenAI
from tests.conftest import RedisServer, Server, free_port, llm_env, start_together
from tests.test_sessions import Event, Live, closes_with, on, opened, persona, unique

CAP = 2
"""RAPPORT_MAX_SESSIONS of the shared deployment."""
ROOM = 20
"""Its RAPPORT_WAITING_ROOM_SIZE."""
LEASE_S = 3
"""RAPPORT_SESSION_LEASE_SECONDS (the least allowed): renewed and swept every second."""
IDLE_S = 3
"""RAPPORT_QUEUE_IDLE_SECONDS (the least allowed)."""
CONNECT_S = 2
"""RAPPORT_SESSION_CONNECT_SECONDS of the shared deployment."""
PUSHED_S = 0.5
"""An event pushed "at once" arrives within this; the processes' own timers run every
second (a third of the lease), so an event that was not pushed comes later half the time."""
MAIN_PLAN = 100
"""max_concurrent_sessions of the shared deployment's main account: out of the way."""

SESSION_SOCKET = "/api/sessions/{session_id}/socket"
QUEUE_SOCKET = "/api/waiting-room/{session_id}/socket"


# --- helpers ---------------------------------------------------------------------------------


def start_pair(
    tmp_path_factory: pytest.TempPathFactory, name: str, redis: RedisServer, **env: str
) -> tuple[Server, Server]:
    """Two processes on one Redis: one deployment, started at once (either may make the demo
    account: the tests here use accounts of their own). Nodes on one Redis must share a
    Chroma server (engine/nodes.py); sessions never use it, so its URL here leads nowhere."""
    chroma = f"http://127.0.0.1:{free_port()}"
    env = {"RAPPORT_REDIS_URL": redis.url, "RAPPORT_CHROMA_URL": chroma, **env}
    first = Server(tmp_path_factory.mktemp(f"{name}-a") / "data", **env)
    second = Server(tmp_path_factory.mktemp(f"{name}-b") / "data", **env)
    start_together(first, second)
    return first, second


def stop_pair(pair: tuple[Server, Server]) -> None:
    """Both told to stop at once, then awaited: before the Redis they share stops."""
    for server in pair:
        server.terminate()
    for server in pair:
        server.reap()


def operator(server: Server, *args: str) -> str:
    """Run ``rapport`` (the operator's CLI) against the server's state."""
    done = server.cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_account(server: Server, *, plan: int | None = None, origins: tuple[str, ...] = ()):
    """A new account with its default persona: (name, API key); its plan and allowed origins
    set with the operator's commands, run in this process (setup: a subprocess is ~0.7 s a
    command)."""
    name = unique("wr")
    key = server.new_tenant(name)
    changes = []
    if plan is not None:
        changes.append(("plan", "--account", name, "--max-concurrent-sessions", str(plan)))
    changes += [("origins", "add", "--account", name, origin) for origin in origins]
    for change in changes:
        done = server.cli_in_process("accounts", *change)
        assert done.returncode == 0, done.stderr
    return name, key


def session_of(ticket: str) -> str:
    """The session a ticket waits for (the ticket is its future token)."""
    return ticket.split(".")[1]


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return response.json()


async def samples(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{server.base_url}/metrics")
    assert response.status_code == 200, response.text
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def sample(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def counted(servers: tuple[Server, ...], name: str, **labels: str) -> float:
    """A counter summed over the processes (each counts the moves its own scripts made)."""
    return sum([sample(await samples(s), name, **labels) for s in servers])


async def gauges(server: Server) -> tuple[float, float]:
    found = await samples(server)
    return sample(found, "rapport_live_sessions"), sample(found, "rapport_queued_clients")


async def next_of(live: Live, kind: str, seconds: float) -> tuple[list[Event], float]:
    """The events read up to the first of ``kind`` within ``seconds``, and when it came
    (monotonic)."""
    read = await asyncio.wait_for(live.until(kind, seconds), seconds)
    return read, time.monotonic()


async def moves_to(live: Live, position: int, seconds: float = 3) -> Event:
    """Read a queue socket until its place is ``position``: only places are pushed on the
    way, none of them ahead of it (the same place again, with a new estimate, may come)."""
    while True:
        event = await live.next(seconds)
        assert event["type"] == "queue.position", event
        assert event["position"] >= position, event
        if event["position"] == position:
            return event


async def refused(url: str, origin: str | None = None) -> httpx.Response:
    """The HTTP answer to an upgrade the server refuses (as an httpx.Response, to read)."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, origin=origin, open_timeout=10, close_timeout=2):
            pass
    answer = caught.value.response
    # (The body is a bytearray, which httpx would take for a stream.)
    return httpx.Response(
        answer.status_code, headers=list(answer.headers.raw_items()), content=bytes(answer.body)
    )


@contextlib.asynccontextmanager
async def opened_from(url: str, origin: str) -> AsyncIterator[Live]:
    """A socket opened by a page on ``origin`` (a browser sends its Origin)."""
    async with connect(url, origin=origin, open_timeout=10, close_timeout=2) as socket:
        yield Live(socket)


class Backend:
    """The business backend of one account: mints on either process of a deployment."""

    def __init__(self, key: str, servers: tuple[Server, ...]) -> None:
        self.servers = servers
        self.clients = {
            s.port: httpx.AsyncClient(base_url=s.base_url, headers={"X-Api-Key": key}, timeout=10)
            for s in servers
        }

    def on(self, server: Server | None = None) -> httpx.AsyncClient:
        return self.clients[(server or self.servers[0]).port]

    async def mint(
        self, server: Server | None = None, user: str | None = None, **body: Any
    ) -> httpx.Response:
        body = {"user_id": user or unique("user"), "mode": "chat", **body}
        return await self.on(server).post("/api/sessions", json=body)

    async def ready(self, server: Server | None = None, user: str | None = None, **body: Any):
        response = await self.mint(server, user, **body)
        assert response.status_code == 201, response.text
        minted = response.json()
        assert minted["status"] == "ready"
        return minted

    async def queued(self, server: Server | None = None, user: str | None = None, **body: Any):
        response = await self.mint(server, user, **body)
        assert response.status_code == 202, response.text
        place = response.json()
        assert place["status"] == "queued"
        assert set(place) == {
            "status", "ticket", "position", "queue_ws_url", "poll_url", "starter_prompts",
        }  # fmt: skip
        return place

    async def end(self, session_id: str) -> None:
        response = await self.on().delete(f"/api/sessions/{session_id}")
        assert response.status_code == 204, response.text

    async def status(self, session_id: str) -> str:
        response = await self.on().get(f"/api/sessions/{session_id}")
        assert response.status_code == 200, response.text
        return response.json()["status"]

    async def close(self) -> None:
        """End every session of the account that has not ended (queued ones included)."""
        client = self.on()
        for item in (await client.get("/api/sessions")).json()["items"]:
            await client.delete(f"/api/sessions/{item['session_id']}")
        for each in self.clients.values():
            await each.aclose()


class Room:
    """One test's view of a deployment: its main account's backend, sockets held open
    until the test ends, a keyless client (the browser's polls)."""

    def __init__(self, a: Server, b: Server, main_key: str) -> None:
        self.a, self.b = a, b
        self.backend = Backend(main_key, (a, b))
        self.backends = [self.backend]
        self.stack = contextlib.AsyncExitStack()
        self.browser = httpx.AsyncClient(timeout=10)

    async def tenant(self, **options: Any) -> tuple[str, Backend]:
        """Another account on the deployment (its name, its backend)."""
        name, key = await asyncio.to_thread(new_account, self.a, **options)
        backend = Backend(key, (self.a, self.b))
        self.backends.append(backend)
        return name, backend

    async def hold(self, url: str) -> Live:
        """Connect a session's socket and keep it open (its slot held) until the test ends."""
        live = await self.stack.enter_async_context(opened(url))
        ready = await live.next()
        assert ready["type"] == "session.ready", ready
        return live

    async def watch(self, url: str) -> Live:
        """Open a queue socket, kept open until the test ends (or the server closes it)."""
        return await self.stack.enter_async_context(opened(url))

    async def fill(self, n: int) -> list[tuple[dict[str, Any], Live]]:
        """``n`` ready sessions of the main account, one per process in turn, connected."""
        held = []
        for i in range(n):
            server = (self.a, self.b)[i % 2]
            minted = await self.backend.ready(server)
            held.append((minted, await self.hold(minted["ws_url"])))
        return held

    async def poll(self, url: str) -> httpx.Response:
        return await self.browser.get(url)

    async def position(self, url: str) -> int:
        response = await self.poll(url)
        assert response.status_code == 200, response.text
        update = response.json()
        assert update["type"] == "queue.position", update
        return update["position"]

    async def close(self) -> None:
        await self.stack.aclose()
        for backend in self.backends:
            await backend.close()
        await self.browser.aclose()


async def drained(server: Server, seconds: float = 8) -> None:
    """No slot held and nobody waiting, deployment-wide (the gauges read Redis)."""
    deadline = time.monotonic() + seconds
    while (now := await gauges(server)) != (0, 0):
        assert time.monotonic() < deadline, f"the deployment kept (live, queued) = {now}"
        await asyncio.sleep(0.1)


# --- the shared deployment -------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI
) -> Iterator[tuple[Server, Server, str]]:
    """Two processes on one Redis, CAP slots, a waiting room of ROOM; and the main account."""
    redis = RedisServer(tmp_path_factory.mktemp("waiting-room-redis"))
    redis.start()
    try:
        env = llm_env(
            fake_llm,
            RAPPORT_MAX_SESSIONS=str(CAP),
            RAPPORT_WAITING_ROOM_SIZE=str(ROOM),
            RAPPORT_SESSION_LEASE_SECONDS=str(LEASE_S),
            RAPPORT_QUEUE_IDLE_SECONDS=str(IDLE_S),
            RAPPORT_SESSION_CONNECT_SECONDS=str(CONNECT_S),
        )
        a, b = start_pair(tmp_path_factory, "waiting-room", redis, **env)
        try:
            _, key = new_account(a, plan=MAIN_PLAN)
            yield a, b, key
        finally:
            stop_pair((a, b))
    finally:
        redis.stop()


@pytest.fixture
async def room(deployment: tuple[Server, Server, str]) -> AsyncIterator[Room]:
    """The deployment, empty; left empty again after the test."""
    a, _, _ = deployment
    await drained(a)
    view = Room(*deployment)
    try:
        yield view
    finally:
        await view.close()
    await drained(a)


# --- caps ------------------------------------------------------------------------------------


@pytest.fixture
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, str]]:
    """Two processes, 100 slots, a waiting room of 1000; an account that may hold 1000."""
    redis = RedisServer(tmp_path_factory.mktemp("crowded-redis"))
    redis.start()
    try:
        a, b = start_pair(
            tmp_path_factory, "crowded", redis,
            RAPPORT_MAX_SESSIONS="100", RAPPORT_WAITING_ROOM_SIZE="1000",
        )  # fmt: skip
        try:
            _, key = new_account(a, plan=1000)
            yield a, b, key
        finally:
            stop_pair((a, b))
    finally:
        redis.stop()


async def test_200_concurrent_mints_over_two_processes_get_exactly_the_100_slots_then_places(
    crowded: tuple[Server, Server, str],
) -> None:
    a, b, key = crowded
    backend = Backend(key, (a, b))
    # One client per process, whose pool (100 connections) holds its share: all 200 are in
    # flight at once.
    try:
        answers = await asyncio.gather(*(backend.mint((a, b)[i % 2]) for i in range(200)))
        statuses = Counter(r.status_code for r in answers)
        assert statuses == {201: 100, 202: 100}, [r.text for r in answers if r.status_code >= 400]
        positions = sorted(r.json()["position"] for r in answers if r.status_code == 202)
        assert positions == list(range(1, 101))
        ready = [r.json() for r in answers if r.status_code == 201]
        assert len({m["session_id"] for m in ready}) == 100
        # Both processes see the one deployment.
        assert await gauges(a) == await gauges(b) == (100, 100)
    finally:
        await backend.close()


async def test_one_server_with_two_workers_is_one_deployment(tmp_path: Path) -> None:
    """``rapport serve --workers 2``: the workers share the slots and the line, and an
    admission reaches a queue socket whichever worker holds it. (Several workers need a
    Chroma server; sessions never use it, so its URL here leads nowhere.)"""
    server = Server(
        tmp_path / "data", RAPPORT_WORKERS="2", RAPPORT_MAX_SESSIONS="3",
        RAPPORT_WAITING_ROOM_SIZE="100", RAPPORT_CHROMA_URL=f"http://127.0.0.1:{free_port()}",
    ).start()  # fmt: skip
    try:
        backend = Backend(server.demo_key, (server,))

        # A fresh connection for each mint, so the two workers share them.
        async def mint_alone(i: int) -> httpx.Response:
            async with httpx.AsyncClient(
                base_url=server.base_url, headers={"X-Api-Key": server.demo_key}, timeout=10
            ) as client:
                return await client.post(
                    "/api/sessions", json={"user_id": f"user-{i}", "mode": "chat"}
                )

        try:
            # The demo account's plan holds ten: three slots, seven places.
            answers = await asyncio.gather(*(mint_alone(i) for i in range(10)))
            assert Counter(r.status_code for r in answers) == {201: 3, 202: 7}
            positions = sorted(r.json()["position"] for r in answers if r.status_code == 202)
            assert positions == list(range(1, 8))
            head = next(r.json() for r in answers if r.json().get("position") == 1)
            async with opened(head["queue_ws_url"]) as watch:
                assert (await watch.next())["position"] == 1
                ready = next(r.json() for r in answers if r.status_code == 201)
                await backend.end(ready["session_id"])
                read, _ = await next_of(watch, "queue.admitted", 3)
            assert read[-1]["session_id"] == session_of(head["ticket"])
        finally:
            await backend.close()
    finally:
        server.retire()


async def test_the_accounts_plan_caps_its_sessions_queued_ones_included_and_never_queues(
    room: Room,
) -> None:
    _, shop = await room.tenant(plan=3)
    answers = await asyncio.gather(*(shop.mint((room.a, room.b)[i % 2]) for i in range(20)))
    statuses = Counter(r.status_code for r in answers)
    # The deployment has two slots: two ready, one waiting, and the account is at its three.
    assert statuses == {201: 2, 202: 1, 429: 17}, statuses
    for response in answers:
        if response.status_code == 429:
            assert problem(response)["code"] == "limits.concurrent_session"
    assert await gauges(room.a) == (2, 1)  # the refused ones took nothing


async def test_a_full_waiting_room_answers_503_with_retry_after_and_keeps_nothing(
    room: Room,
) -> None:
    await room.fill(CAP)
    places = [await room.backend.queued((room.a, room.b)[i % 2]) for i in range(ROOM)]
    assert [p["position"] for p in places] == list(range(1, ROOM + 1))
    for server in (room.a, room.b):
        response = await room.backend.mint(server)
        assert response.status_code == 503, response.text
        assert problem(response)["code"] == "limits.waiting_room_full"
        assert int(response.headers["retry-after"]) >= 1
    assert await gauges(room.a) == (CAP, ROOM)
    listed = (await room.backend.on().get("/api/sessions")).json()
    assert listed["total_count"] == CAP + ROOM  # the refused mints left no session behind
    # A place freed is a place to take: at the back of the line.
    assert (await room.browser.delete(places[0]["poll_url"])).status_code == 204
    assert (await room.backend.queued(room.b))["position"] == ROOM


async def test_minting_again_for_a_waiting_user_takes_over_its_place(room: Room) -> None:
    await room.fill(CAP)
    first = await room.backend.queued(room.a, "ada")
    other = await room.backend.queued(room.a, "bob")
    again = await room.backend.queued(room.b, "ada")
    assert (first["position"], other["position"], again["position"]) == (1, 2, 1)
    assert again["ticket"] != first["ticket"]
    gone = await room.poll(first["poll_url"])
    assert gone.status_code == 404 and problem(gone)["code"] == "session.not_found"
    assert await room.position(again["poll_url"]) == 1
    assert await room.position(other["poll_url"]) == 2
    assert await gauges(room.a) == (CAP, 2)


# --- the line moves --------------------------------------------------------------------------


async def test_slots_go_to_the_waiting_strictly_first_come_first_served(room: Room) -> None:
    held = await room.fill(CAP)
    line = [await room.backend.queued((room.a, room.b)[i % 2]) for i in range(ROOM - 2)]
    polls = [
        on((room.b, room.a)[i % 2], place["poll_url"]) for i, place in enumerate(line)
    ]  # each polled through the process it did not mint on
    assert [await room.position(url) for url in polls] == list(range(1, len(line) + 1))
    sockets = [live for _, live in held]
    sessions = [minted["session_id"] for minted, _ in held]
    while line:
        await room.backend.end(sessions.pop(0))
        await sockets.pop(0).closed()
        # Polled tail first: whoever asks first, the head of the line is the one offered.
        answers = list(reversed(await asyncio.gather(*(room.poll(u) for u in reversed(polls)))))
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        head = answers[0].json()
        assert head["type"] == "queue.admitted", head
        assert head["session_id"] == session_of(line[0]["ticket"])
        assert head["token"] == line[0]["ticket"]
        rest = [r.json() for r in answers[1:]]
        assert [(u["type"], u["position"]) for u in rest] == [
            ("queue.position", n) for n in range(1, len(rest) + 1)
        ]
        sockets.append(await room.hold(head["ws_url"]))
        sessions.append(head["session_id"])
        line.pop(0)
        polls.pop(0)
    assert await gauges(room.a) == (CAP, 0)


async def test_admission_is_pushed_when_a_slot_frees_by_delete_by_session_end_and_by_4005(
    room: Room, fake: FakeOpenAI
) -> None:
    one_turn = await persona(room.backend.on(), sessionInteractionLimit=1)
    first = await room.backend.ready(room.a)
    limited = await room.backend.ready(room.b, persona_id=one_turn)
    await room.hold(first["ws_url"])
    short = await room.hold(limited["ws_url"])
    line = [await room.backend.queued(s) for s in (room.a, room.b, room.a)]
    # Each waits on the other process's socket than the one it minted on.
    watching = [
        await room.watch(on((room.b, room.a)[i % 2], p["queue_ws_url"])) for i, p in enumerate(line)
    ]
    assert [(await w.next())["position"] for w in watching] == [1, 2, 3]
    admissions_before = await counted((room.a, room.b), "rapport_waiting_room_admissions_total")

    async def admitted(watch: Live, place: dict[str, Any], since: float) -> dict[str, Any]:
        read, at = await next_of(watch, "queue.admitted", 3)
        assert [e["type"] for e in read[:-1]] == ["queue.position"] * (len(read) - 1)
        offer = read[-1]
        assert at - since < PUSHED_S, f"admitted {at - since:.2f} s after the slot freed"
        assert offer["session_id"] == session_of(place["ticket"])
        assert offer["token"] == place["ticket"]
        assert set(offer) == {"type", "session_id", "token", "ws_url", "expires_at"}
        events, code = await watch.closed()
        assert (events, code) == ([], 1000)
        return offer

    # 1. The backend's DELETE.
    since = time.monotonic()
    await room.backend.end(first["session_id"])
    offer = await admitted(watching[0], line[0], since)
    await moves_to(watching[1], 1)
    await moves_to(watching[2], 2)
    back = await room.hold(offer["ws_url"])
    # 2. The budget spent: 4005.
    await short.send("user.message", text="Only one")
    _, code = await short.closed()
    since = time.monotonic()
    assert code == 4005
    offer = await admitted(watching[1], line[1], since)
    await moves_to(watching[2], 1)
    await room.hold(offer["ws_url"])
    # 3. The client's session.end.
    await back.send("session.end")
    _, code = await back.closed()
    since = time.monotonic()
    assert code == 1000
    offer = await admitted(watching[2], line[2], since)
    await room.hold(offer["ws_url"])
    assert await gauges(room.a) == (CAP, 0)
    after = await counted((room.a, room.b), "rapport_waiting_room_admissions_total")
    assert after - admissions_before == 3


async def test_admission_is_pushed_when_a_sessions_duration_runs_out_4006(room: Room) -> None:
    brief = await persona(room.backend.on(), sessionDurationLimitSeconds=1)
    await room.hold((await room.backend.ready(room.a))["ws_url"])
    timed = await room.hold((await room.backend.ready(room.b, persona_id=brief))["ws_url"])
    place = await room.backend.queued(room.a)
    watch = await room.watch(on(room.b, place["queue_ws_url"]))
    assert (await watch.next())["position"] == 1
    _, code = await timed.closed()
    since = time.monotonic()
    assert code == 4006
    read, at = await next_of(watch, "queue.admitted", 3)
    assert at - since < PUSHED_S, f"admitted {at - since:.2f} s after the slot freed"
    await room.hold(read[-1]["ws_url"])


async def test_places_are_pushed_when_the_line_moves_and_a_leaver_loses_its_place(
    room: Room,
) -> None:
    await room.fill(CAP)
    line = [await room.backend.queued(s) for s in (room.a, room.b, room.a)]
    watching = [
        await room.watch(on(s, p["queue_ws_url"]))
        for s, p in zip((room.a, room.b, room.a), line, strict=True)
    ]
    first = [await w.next() for w in watching]
    assert [(e["type"], e["position"]) for e in first] == [("queue.position", n) for n in (1, 2, 3)]
    for event in first:
        assert set(event) == {"type", "position", "estimated_wait_s"}
        wait = event["estimated_wait_s"]
        assert wait is None or (isinstance(wait, int) and wait >= 0)
    since = time.monotonic()
    assert (await room.browser.delete(line[0]["poll_url"])).status_code == 204
    await moves_to(watching[1], 1)
    await moves_to(watching[2], 2)
    assert time.monotonic() - since < PUSHED_S
    assert await watching[0].closed() == ([], 4004)  # its place is gone
    gone = await room.poll(line[0]["poll_url"])
    assert gone.status_code == 404 and problem(gone)["code"] == "session.not_found"
    assert await room.position(line[1]["poll_url"]) == 1
    assert await gauges(room.a) == (CAP, 2)


async def test_an_offer_not_taken_in_the_connect_window_passes_to_the_next_in_line(
    room: Room,
) -> None:
    held = await room.fill(CAP)
    first = await room.backend.queued(room.a)
    second = await room.backend.queued(room.b)
    late = await room.watch(first["queue_ws_url"])
    waiting = await room.watch(second["queue_ws_url"])
    assert ((await late.next())["position"], (await waiting.next())["position"]) == (1, 2)
    noshows_before = await counted((room.a, room.b), "rapport_waiting_room_noshows_total")
    since = time.monotonic()
    await room.backend.end(held[0][0]["session_id"])
    offer, _ = await next_of(late, "queue.admitted", 3)
    assert offer[-1]["session_id"] == session_of(first["ticket"])
    # ... and never connects. The offer lapses after the connect window; the next sweep
    # (every third of the lease) passes the slot on.
    read, at = await next_of(waiting, "queue.admitted", CONNECT_S + LEASE_S)
    assert CONNECT_S - 0.2 < at - since < CONNECT_S + LEASE_S / 3 + 1, at - since
    assert {(e["type"], e.get("position")) for e in read[:-1]} == {("queue.position", 1)}
    assert read[-1]["session_id"] == session_of(second["ticket"])
    gone = await room.poll(first["poll_url"])
    assert gone.status_code == 404 and problem(gone)["code"] == "session.not_found"
    await room.hold(read[-1]["ws_url"])
    after = await counted((room.a, room.b), "rapport_waiting_room_noshows_total")
    assert after - noshows_before == 1


async def test_a_silent_queued_client_loses_its_place_one_connected_or_polling_keeps_it(
    room: Room,
) -> None:
    await room.fill(CAP)
    evictions_before = await counted((room.a, room.b), "rapport_waiting_room_evictions_total")
    silent = await room.backend.queued(room.a)
    since = time.monotonic()
    kept = await room.backend.queued(room.a)
    polling = await room.backend.queued(room.b)
    watching = await room.watch(on(room.b, kept["queue_ws_url"]))
    assert (await watching.next())["position"] == 2

    async def keep_polling() -> None:
        while True:
            await room.position(polling["poll_url"])
            await asyncio.sleep(0.5)

    poller = asyncio.create_task(keep_polling())
    try:
        # Neither polling nor connected: out after RAPPORT_QUEUE_IDLE_SECONDS (at the next
        # sweep), and the ones behind move up.
        moved = await watching.next(IDLE_S + 3)
        while moved["position"] == 2:  # the same place again (a new estimate of the wait)
            moved = await watching.next(IDLE_S + 3)
        at = time.monotonic() - since
        assert (moved["type"], moved["position"]) == ("queue.position", 1)
        assert IDLE_S - 0.2 < at < IDLE_S + LEASE_S / 3 + 1, at
        gone = await room.poll(silent["poll_url"])
        assert gone.status_code == 404 and problem(gone)["code"] == "session.not_found"
        # The one with its socket open has not polled either, and is still in line; so is the
        # one that polls without a socket.
        await asyncio.sleep(max(0.0, since + IDLE_S + 1.5 - time.monotonic()))
        assert poller.done() is False, "polling failed"
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    assert watching.socket.close_code is None
    assert await room.backend.status(session_of(kept["ticket"])) == "queued"
    assert await room.backend.status(session_of(polling["ticket"])) == "queued"
    assert await gauges(room.a) == (CAP, 2)
    assert await room.position(kept["poll_url"]) == 1
    assert await room.position(polling["poll_url"]) == 2
    after = await counted((room.a, room.b), "rapport_waiting_room_evictions_total")
    assert after - evictions_before == 1


async def test_bad_tickets_get_401_on_the_poll_url_and_4001_on_the_queue_socket(
    room: Room,
) -> None:
    await room.fill(CAP)
    mine, other = await room.backend.queued(room.a), await room.backend.queued(room.b)
    poll_path = mine["poll_url"].split("?")[0]
    socket_path = mine["queue_ws_url"].split("?")[0]
    wrong_secret = mine["ticket"][:-1] + ("B" if mine["ticket"].endswith("A") else "A")
    for ticket in ("garbage", other["ticket"], wrong_secret, ""):
        query = f"?ticket={quote(ticket, safe='')}"
        for answer in (
            await room.poll(poll_path + query),
            await room.browser.delete(poll_path + query),
        ):
            assert answer.status_code == 401, (ticket, answer.text)
            assert problem(answer)["code"] == "auth.session_token_invalid"
        assert await closes_with(socket_path + query) == ([], 4001), ticket
    # Nothing of either place was touched.
    assert await room.position(mine["poll_url"]) == 1
    assert await room.position(other["poll_url"]) == 2


# --- handshake guards ------------------------------------------------------------------------


async def test_sockets_refuse_origins_the_account_does_not_allow_before_any_session_state(
    room: Room,
) -> None:
    _, shop = await room.tenant(origins=("https://shop.example",))
    await room.fill(1)
    minted = await shop.ready(room.a)
    url = minted["ws_url"]
    answer = await refused(url, "https://evil.example")
    assert answer.status_code == 403
    assert problem(answer)["code"] == "auth.origin_not_allowed"
    assert await shop.status(minted["session_id"]) == "ready"  # nothing of it was touched
    async with opened_from(url, "https://shop.example") as live:
        ready = await live.next()
    assert (ready["type"], ready["seq"], ready["resumed"]) == ("session.ready", 1, False)
    async with opened(url) as live:  # no Origin: not a browser, allowed
        assert (await live.next())["type"] == "session.ready"

    place = await shop.queued(room.b)
    queue_url = place["queue_ws_url"]
    answer = await refused(queue_url, "https://evil.example")
    assert answer.status_code == 403
    assert problem(answer)["code"] == "auth.origin_not_allowed"
    async with opened_from(queue_url, "https://shop.example") as live:
        assert (await live.next())["position"] == 1
    async with opened(queue_url) as live:
        assert (await live.next())["position"] == 1
    # A ticket of the account for no session at all: the origin is refused first...
    account_id = place["ticket"].split(".")[0]
    nowhere = str(uuid.uuid4())
    forged = f"{account_id}.{nowhere}.{'x' * 43}"
    forged_url = f"ws://127.0.0.1:{room.b.port}{QUEUE_SOCKET.format(session_id=nowhere)}"
    forged_url += f"?ticket={forged}"
    answer = await refused(forged_url, "https://evil.example")
    assert answer.status_code == 403
    assert problem(answer)["code"] == "auth.origin_not_allowed"
    # ... and without an Origin the socket itself refuses the ticket, without saying
    # whether there is such a place.
    assert await closes_with(forged_url) == ([], 4001)


# --- the rate limits -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One slot; two upgrades a minute per IP on each socket, two queue actions a minute
    per end user."""
    server = Server(
        tmp_path_factory.mktemp("limited") / "data",
        RAPPORT_MAX_SESSIONS="1",
        RAPPORT_SESSION_WS_RPM="2",
        RAPPORT_QUEUE_WS_RPM="2",
        RAPPORT_QUEUE_RPM="2",
    ).start()
    yield server
    server.retire()


@pytest.fixture
async def limited_backend(limited: Server) -> AsyncIterator[Backend]:
    backend = Backend(limited.demo_key, (limited,))
    try:
        yield backend
    finally:
        await backend.close()
    await drained(limited)


def rate_refusal(answer: httpx.Response, scope: str) -> None:
    assert answer.status_code == 429, answer.text
    body = problem(answer)
    assert (body["code"], body["scope"]) == ("limits.rate_exceeded", scope)
    assert 1 <= int(answer.headers["retry-after"]) <= 60


async def test_session_socket_upgrades_are_limited_per_ip(limited_backend: Backend) -> None:
    minted = await limited_backend.ready()
    for _ in range(2):
        async with opened(minted["ws_url"]) as live:
            assert (await live.next())["type"] == "session.ready"
    rate_refusal(await refused(minted["ws_url"]), "ip")


async def test_queue_socket_upgrades_are_limited_per_ip(limited_backend: Backend) -> None:
    await limited_backend.ready()
    place = await limited_backend.queued()
    for _ in range(2):
        async with opened(place["queue_ws_url"]) as live:
            assert (await live.next())["position"] == 1
    rate_refusal(await refused(place["queue_ws_url"]), "ip")


async def test_queue_actions_are_limited_per_end_user(limited_backend: Backend) -> None:
    await limited_backend.ready()
    assert (await limited_backend.queued(user="ada"))["position"] == 1
    assert (await limited_backend.queued(user="ada"))["position"] == 1  # its place again
    rate_refusal(await limited_backend.mint(user="ada"), "user")
    assert (await limited_backend.queued(user="bob"))["position"] == 2  # another end user
    # Leaving the line counts too.
    place = await limited_backend.queued(user="cyd")
    async with httpx.AsyncClient(timeout=10) as browser:
        assert (await browser.delete(place["poll_url"])).status_code == 204
    rate_refusal(await limited_backend.mint(user="cyd"), "user")


# --- a process killed ------------------------------------------------------------------------


@pytest.fixture
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Two processes with one slot between them and 3 s leases; the first is to be killed."""
    redis = RedisServer(tmp_path_factory.mktemp("doomed-redis"))
    redis.start()
    try:
        pair = start_pair(
            tmp_path_factory, "doomed", redis,
            RAPPORT_MAX_SESSIONS="1", RAPPORT_SESSION_LEASE_SECONDS=str(LEASE_S),
            RAPPORT_QUEUE_IDLE_SECONDS=str(IDLE_S),
        )  # fmt: skip
        try:
            yield pair
        finally:
            stop_pair(pair)  # the killed one: reaped already, nothing to stop
    finally:
        redis.stop()


async def test_the_slot_of_a_killed_process_frees_within_the_lease_and_goes_to_the_line(
    doomed: tuple[Server, Server],
) -> None:
    victim, survivor = doomed
    backend = Backend(new_account(victim)[1], (victim, survivor))
    try:
        minted = await backend.ready(victim)
        async with contextlib.AsyncExitStack() as stack:
            live = await stack.enter_async_context(opened(minted["ws_url"]))
            assert (await live.next())["type"] == "session.ready"
            place = await backend.queued(survivor)
            watching = await stack.enter_async_context(opened(place["queue_ws_url"]))
            assert (await watching.next())["position"] == 1
            lapsed_before = sample(await samples(survivor), "rapport_session_leases_lapsed_total")
            assert victim.process is not None
            os.kill(victim.process.pid, signal.SIGKILL)
            since = time.monotonic()
            victim.process.wait(10)
            read, at = await next_of(watching, "queue.admitted", 2 * LEASE_S)
            assert at - since <= 2 * LEASE_S
            offer = read[-1]
            assert offer["session_id"] == session_of(place["ticket"])
            assert await watching.closed() == ([], 1000)
            async with opened(offer["ws_url"]) as taken:
                assert (await taken.next())["type"] == "session.ready"
        lapsed = sample(await samples(survivor), "rapport_session_leases_lapsed_total")
        assert lapsed - lapsed_before == 1
        shown = await backend.on(survivor).get(f"/api/sessions/{minted['session_id']}")
        assert shown.json()["status"] == "ended"
    finally:
        for client in backend.clients.values():
            await client.aclose()


# --- metrics ---------------------------------------------------------------------------------


async def test_operators_list_the_live_ready_and_waiting_sessions(room: Room) -> None:
    name, shop = await room.tenant()
    held = await shop.ready(room.a)
    await room.hold(held["ws_url"])
    idle = await shop.ready(room.b)
    place = await shop.queued(room.a)
    listing = await asyncio.to_thread(operator, room.b, "sessions", "list", "--account", name)
    head, *rows = listing.splitlines()
    assert head == f"slots held {CAP} of {CAP}, waiting 1 of {ROOM}"
    by_id = {row.split()[0]: row for row in rows}
    assert set(by_id) == {held["session_id"], idle["session_id"], session_of(place["ticket"])}
    assert "live since" in by_id[held["session_id"]]
    assert " ready " in by_id[idle["session_id"]]
    assert " queued " in by_id[session_of(place["ticket"])]
    assert all(name in row for row in rows)


async def test_metrics_show_the_deployments_slots_and_line_and_the_sockets_closes(
    room: Room,
) -> None:
    for name in (
        "rapport_waiting_room_admissions_total",
        "rapport_waiting_room_noshows_total",
        "rapport_waiting_room_evictions_total",
        "rapport_session_leases_lapsed_total",
    ):
        for server in (room.a, room.b):
            assert (name, ()) in await samples(server), f"{name} missing on {server.port}"
    held = await room.fill(CAP)
    place = await room.backend.queued(room.a)
    watching = await room.watch(on(room.b, place["queue_ws_url"]))
    assert (await watching.next())["position"] == 1
    # Deployment-wide: every process reports the same.
    assert await gauges(room.a) == await gauges(room.b) == (CAP, 1)

    def closes(found: dict, route: str, code: int) -> float:
        return sample(found, "rapport_websocket_connections_total", route=route, status=str(code))

    before_a, before_b = await samples(room.a), await samples(room.b)
    live = held[0][1]  # connected on room.a
    await live.send("session.end")
    assert (await live.closed())[1] == 1000
    admitted, _ = await next_of(watching, "queue.admitted", 3)
    assert (await watching.closed())[1] == 1000
    await room.hold(admitted[-1]["ws_url"])
    assert await gauges(room.a) == await gauges(room.b) == (CAP, 0)
    after_a, after_b = await samples(room.a), await samples(room.b)
    assert closes(after_a, SESSION_SOCKET, 1000) - closes(before_a, SESSION_SOCKET, 1000) == 1
    assert closes(after_b, QUEUE_SOCKET, 1000) - closes(before_b, QUEUE_SOCKET, 1000) == 1
    admissions = [
        sample(found, "rapport_waiting_room_admissions_total")
        for found in (before_a, before_b, after_a, after_b)
    ]
    assert admissions[2] + admissions[3] - admissions[0] - admissions[1] == 1
