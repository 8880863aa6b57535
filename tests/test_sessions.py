"""Live sessions end to end: a real ``rapport serve`` (two, on one Redis, where a test needs a
second node), real ``websockets`` clients, the fake LLM. What is checked is the contract of
/work/shared/DESIGN.md, "Live sessions": the events and their seqs, budgets (4005, 4006)
across reconnects, resumes and nodes, resume's replay, cancel and barge-in, resent
messages, bad frames and tokens, replacement, and memory shared with the HTTP API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api.sessions import FRAME_LIMIT
from loadtest.fake_llm import DEFAULT_REPLY, FakeOpenAI
from tests.conftest import ChromaServer, RedisServer, Server, llm_env, running_together

AUDIO = Path(__file__).parent / "audio"
WORDS = DEFAULT_REPLY.split()
UVICORN_WS_MAX_SIZE = 16 * 1024 * 1024
"""uvicorn's default ``ws_max_size``: smaller than a full-mode voice note may be."""

Event = dict[str, Any]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for both nodes: a session's budget and events live there, not in a node."""
    redis = RedisServer(tmp_path_factory.mktemp("sessions-redis"))
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory,
    fake_llm: FakeOpenAI,
    shared_redis: RedisServer,
    chroma_server: ChromaServer,
) -> Iterator[tuple[Server, Server]]:
    """Two processes on one Redis, started at once (the module's account is made after).

    The first is the node most tests talk to. It keeps as few events per session as
    allowed, so that one long reply outruns the resume stream.

    The second's tokens must be used within 1 s, it pings a socket every half second and
    gives it half a second to answer, and a socket gone for a second ends its session."""
    shared = {"RAPPORT_REDIS_URL": shared_redis.url, "RAPPORT_CHROMA_URL": chroma_server.url}
    first = Server(
        tmp_path_factory.mktemp("sessions-a") / "data",
        **llm_env(fake_llm, **shared, RAPPORT_SESSION_EVENTS="16"),
    )
    second = Server(
        tmp_path_factory.mktemp("sessions-b") / "data",
        **llm_env(
            fake_llm, **shared,
            RAPPORT_SESSION_CONNECT_SECONDS="1",
            RAPPORT_WS_PING_INTERVAL="0.5", RAPPORT_WS_PING_TIMEOUT="0.5",
            RAPPORT_SESSION_RESUME_SECONDS="1",
        ),
    )  # fmt: skip
    with running_together(first, second):
        yield first, second


@pytest.fixture(scope="module")
def node(nodes: tuple[Server, Server]) -> Server:
    return nodes[0]


@pytest.fixture(scope="module")
def other_node(nodes: tuple[Server, Server]) -> Server:
    return nodes[1]


@pytest.fixture(scope="module")
def api_key(node: Server) -> str:
    """One account for the module (valid on both nodes: they share Redis)."""
    return node.new_tenant(unique("live"))


@pytest.fixture
async def http(node: Server, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """The business backend's client. Sessions a test leaves open are ended after it, so
    that the account's concurrent sessions never pile up across tests."""
    async with httpx.AsyncClient(
        base_url=node.base_url, headers={"X-Api-Key": api_key}, timeout=10
    ) as client:
        yield client
        for item in (await client.get("/api/sessions")).json()["items"]:
            await client.delete(f"/api/sessions/{item['session_id']}")


# --- the client ------------------------------------------------------------------------------


async def persona(http: httpx.AsyncClient, **publish: object) -> str:
    """A persona with these ``publishSettings``; its id."""
    response = await http.post(
        "/api/personas", json={"name": unique("persona"), "publishSettings": publish}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def mint(
    http: httpx.AsyncClient, user_id: str | None = None, *, persona_id: str | None = None,
    mode: str = "chat",
) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"user_id": user_id or unique("user"), "mode": mode}
    if persona_id is not None:
        body["persona_id"] = persona_id
    response = await http.post("/api/sessions", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def on(server: Server, ws_url: str) -> str:
    """The same socket URL on another node."""
    parts = urlsplit(ws_url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{server.port}"))


class Live:
    """One client socket of a live session, and every event it has read."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.events: list[Event] = []

    async def send(self, kind: str, **fields: object) -> None:
        await self.socket.send(json.dumps({"type": kind, **fields}))

    async def next(self, seconds: float = 10) -> Event:
        event = json.loads(await asyncio.wait_for(self.socket.recv(), seconds))
        self.events.append(event)
        return event

    async def until(self, kind: str, seconds: float = 10) -> list[Event]:
        """The events read up to and including the first of type ``kind``."""
        read: list[Event] = []
        while not read or read[-1]["type"] != kind:
            read.append(await self.next(seconds))
        return read

    async def closed(self, seconds: float = 10) -> tuple[list[Event], int | None]:
        """The events read until the server closed the socket, and its close code."""
        read: list[Event] = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                read.append(await self.next(seconds))
        return read, self.socket.close_code

    async def quiet(self, seconds: float = 0.4) -> None:
        """Nothing arrives for a while: then a ping's pong must be the very next event."""
        with pytest.raises(TimeoutError):
            await self.next(seconds)
        await self.send("ping")
        assert (await self.next())["type"] == "pong"

    def drop(self) -> None:
        """Vanish without a close frame, like a phone going into a tunnel."""
        self.socket.transport.abort()


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Live]:
    async with connect(url, open_timeout=10, close_timeout=2) as socket:
        yield Live(socket)


def types(events: list[Event]) -> list[str]:
    return [event["type"] for event in events]


def seqs(events: list[Event]) -> list[int]:
    return [event["seq"] for event in events]


def said(events: list[Event]) -> str:
    return "".join(event["text"] for event in events if event["type"] == "reply.delta")


async def eventually(check: Callable[[], bool], what: str, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def voice_note(name: str = "ada.wav") -> dict[str, str]:
    return {"data_b64": base64.b64encode((AUDIO / name).read_bytes()).decode(), "mime": "audio/wav"}


# --- a turn ----------------------------------------------------------------------------------


async def test_a_chat_turn_streams_deltas_then_done_then_budget_numbered_without_gaps(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        ready = await live.next()
        await live.send("user.message", text="Hello there")
        turn = await live.until("budget")
    assert ready["type"] == "session.ready" and ready["seq"] == 1
    assert ready["session_id"] == minted["session_id"] and ready["mode"] == "chat"
    assert ready["resumed"] is False and set(ready["persona"]) == {"id", "name"}
    assert ready["budget"] == minted["budget"] == {"interactions_left": None, "seconds_left": 3600}
    assert types(turn) == ["reply.delta"] * len(WORDS) + ["reply.done", "budget"]
    assert seqs(live.events) == list(range(1, len(live.events) + 1))
    assert said(turn) == DEFAULT_REPLY  # the model's words, as it streamed them
    done = turn[-2]
    assert {e["turn"] for e in turn[:-1]} == {done["turn"]}
    assert (done["status"], done["text"], done["sources"]) == ("completed", DEFAULT_REPLY, [])
    assert isinstance(done["latency_ms"], int) and done["latency_ms"] >= 0
    assert turn[-1]["interactions_left"] is None and 0 < turn[-1]["seconds_left"] <= 3600
    assert len(fake.calls()) == 1


# --- budgets ---------------------------------------------------------------------------------


async def test_chat_closes_4005_after_the_reply_that_spends_the_last_unit(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    minted = await mint(http, persona_id=await persona(http, sessionInteractionLimit=2))
    async with opened(minted["ws_url"]) as live:
        ready = await live.next()
        await live.send("user.message", text="one")
        first = await live.until("budget")
        await live.send("user.message", text="two")
        last, code = await live.closed()
    assert ready["budget"]["interactions_left"] == 2
    assert first[-2]["status"] == "completed" and first[-1]["interactions_left"] == 1
    # The last unit's reply completes, then the server says why it closes, then closes.
    assert types(last)[-3:] == ["reply.done", "budget", "session.closing"]
    assert last[-3]["status"] == "completed" and last[-2]["interactions_left"] == 0
    assert (last[-1]["code"], last[-1]["reason"]) == (4005, "limits.session_interaction_limit")
    assert code == 4005
    assert len(fake.calls()) == 2
    shown = (await http.get(f"/api/sessions/{minted['session_id']}")).json()
    assert (shown["status"], shown["ended_code"]) == ("ended", 4005)


async def test_full_mode_voice_turns_cost_two_and_close_4005(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    minted = await mint(
        http, persona_id=await persona(http, sessionInteractionLimit=4), mode="full"
    )
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", audio=voice_note())
        first = await live.until("budget", seconds=30)
        await live.send("user.message", audio=voice_note())
        second, code = await live.closed(seconds=30)
    for turn in (first, second):
        # What the user said comes back as a transcript before the reply to it.
        assert types(turn)[:2] == ["transcript", "reply.delta"]
        assert "Ada" in turn[0]["text"] and turn[0]["turn"] == turn[1]["turn"]
    assert first[-1]["interactions_left"] == 2
    assert types(second)[-3:] == ["reply.done", "budget", "session.closing"]
    assert second[-2]["interactions_left"] == 0 and second[-1]["code"] == 4005
    assert code == 4005
    assert ["Ada" in str(call["messages"][-1]) for call in fake.calls()] == [True, True]


async def test_a_full_mode_turn_is_refused_with_one_unit_left(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    minted = await mint(
        http, persona_id=await persona(http, sessionInteractionLimit=3), mode="full"
    )
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="one")
        first = await live.until("budget")
        await live.send("user.message", text="two")
        refused, code = await live.closed()
    assert first[-2]["status"] == "completed" and first[-1]["interactions_left"] == 1
    # A turn costs 2: it never starts, so nothing of a reply, just the closing.
    assert types(refused) == ["session.closing"] and refused[0]["code"] == 4005
    assert code == 4005
    assert len(fake.calls()) == 1


async def test_a_silent_client_is_closed_4006_at_the_duration_limit(
    http: httpx.AsyncClient,
) -> None:
    minted = await mint(http, persona_id=await persona(http, sessionDurationLimitSeconds=1))
    async with opened(minted["ws_url"]) as live:
        ready = await live.next()
        started = time.monotonic()
        events, code = await live.closed(seconds=5)
    assert ready["budget"]["seconds_left"] == 1
    assert types(events) == ["session.closing"]
    assert (events[0]["code"], events[0]["reason"]) == (4006, "limits.session_duration_limit")
    assert code == 4006 and time.monotonic() - started < 2.5
    shown = (await http.get(f"/api/sessions/{minted['session_id']}")).json()
    assert (shown["status"], shown["ended_code"]) == ("ended", 4006)


async def test_the_duration_limit_cancels_the_reply_in_progress_then_closes_4006(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # Three words, then the model goes on "thinking" past the 1 s limit, until it is told to
    # stop: its stream closes only if the server closes it.
    fake.configure(stall_after_chunks=3)
    minted = await mint(http, persona_id=await persona(http, sessionDurationLimitSeconds=1))
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="Tell me everything")
        deltas = [await live.next() for _ in range(3)]
        assert fake.open_streams() == 1
        events, code = await live.closed(seconds=5)
    assert said(deltas) == "This is the"
    assert types(events) == ["reply.done", "session.closing"]
    assert (events[0]["status"], events[0]["text"]) == ("cancelled", "This is the")
    assert events[1]["code"] == 4006 and code == 4006
    await eventually(lambda: fake.open_streams() == 0, "the upstream stream to close")


async def test_budgets_hold_across_a_reconnect_a_resume_and_another_node(
    http: httpx.AsyncClient, fake: FakeOpenAI, other_node: Server
) -> None:
    minted = await mint(http, persona_id=await persona(http, sessionInteractionLimit=3))
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="one")
        await live.until("budget")
    async with opened(minted["ws_url"]) as live:  # a plain reconnect, same node
        again = await live.next()
        await live.send("user.message", text="two")
        last_seq = (await live.until("budget"))[-1]["seq"]
        live.drop()
    # Resumed on the other process: only Redis knows what was spent.
    async with opened(on(other_node, minted["ws_url"]) + f"&last_seq={last_seq}") as live:
        resumed = await live.next()
        await live.send("user.message", text="three")
        last, code = await live.closed()
    assert again["budget"]["interactions_left"] == 2
    assert resumed["type"] == "session.ready" and resumed["resumed"] is True
    assert resumed["budget"]["interactions_left"] == 1
    assert types(last)[-3:] == ["reply.done", "budget", "session.closing"]
    assert last[-3]["status"] == "completed" and last[-1]["code"] == 4005
    assert code == 4005
    assert len(fake.calls()) == 3


# --- resume ----------------------------------------------------------------------------------


async def test_a_resume_replays_exactly_the_missed_events_then_says_ready(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as first:
        await first.next()
        await first.send("user.message", text="Hello there")
        await first.until("budget")
        first.drop()
    sent = first.events  # ready, the deltas, done, budget: seqs 1..9
    seen = 4  # the client got as far as the third delta
    async with opened(minted["ws_url"] + f"&last_seq={seen}") as live:
        replayed = (await live.until("session.ready"))[:-1]
        ready = live.events[-1]
        await live.send("ping")
        pong = await live.next()
    assert replayed == sent[seen:]  # the same events, in order
    assert (ready["resumed"], ready["seq"]) == (True, len(sent) + 1)
    # Nothing twice, nothing skipped: from the client's side every seq arrives once.
    assert seqs(sent[:seen] + replayed + [ready, pong]) == list(range(1, len(sent) + 3))
    assert len(fake.calls()) == 1


async def test_a_resume_whose_events_are_gone_starts_afresh_without_a_partial_replay(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # The node keeps ~16 events (Redis trims whole stream nodes, so some more): 200 deltas
    # are far past it.
    fake.configure(reply=" ".join(f"w{i}" for i in range(200)))
    minted = await mint(http)
    async with opened(minted["ws_url"]) as first:
        await first.next()
        await first.send("user.message", text="Talk a lot")
        last = (await first.until("budget"))[-1]["seq"]
        first.drop()
    async with opened(minted["ws_url"] + "&last_seq=1") as live:
        ready = await live.next()  # the very first frame: no stray deltas before it
    assert ready["type"] == "session.ready"
    assert (ready["resumed"], ready["seq"]) == (False, last + 1)


# --- cancel, barge-in, disconnect ------------------------------------------------------------


async def test_a_cancel_before_the_first_token_closes_the_upstream_request(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.configure(delay_s=5)
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="Hello there")
        await eventually(lambda: len(fake.calls()) == 1, "the model to be asked")
        await live.send("reply.cancel")
        events = await live.until("budget")
    assert types(events) == ["reply.done", "budget"]
    assert (events[0]["status"], events[0]["text"]) == ("cancelled", "")
    await eventually(lambda: fake.departed() == 1, "the upstream request to be dropped")


async def test_a_cancel_right_after_the_message_still_ends_the_turn_with_reply_done(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # A "stop" pressed at once: both frames reach the server together.
    fake.configure(delay_s=5)
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="Hello there")
        await live.send("reply.cancel")
        events = await live.until("budget", seconds=3)
    assert types(events) == ["reply.done", "budget"] and events[0]["status"] == "cancelled"


async def test_a_cancel_mid_stream_ends_the_reply_with_what_was_said(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.configure(stall_after_chunks=3)
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="Hello there")
        deltas = [await live.next() for _ in range(3)]
        assert fake.open_streams() == 1  # the model is still on it
        await live.send("reply.cancel")
        events = await live.until("budget")
    assert said(deltas) == "This is the"
    assert types(events) == ["reply.done", "budget"]
    assert (events[0]["status"], events[0]["text"]) == ("cancelled", "This is the")
    await eventually(lambda: fake.open_streams() == 0, "the upstream stream to close")


async def test_a_cancel_after_the_reply_is_done_does_nothing(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="Hello there")
        done = (await live.until("budget"))[-2]
        await live.send("reply.cancel")
        await live.quiet()
        pong = live.events[-1]
    assert done["status"] == "completed"
    assert pong["seq"] == done["seq"] + 2  # budget, then the pong: nothing in between
    assert len(fake.calls()) == 1


async def test_a_second_message_while_a_reply_streams_cancels_it_and_completes(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # The first reply would stream for 5 s; the second takes 0.3 s.
    fake.configure(echo=True, chunk_delay_s=0.1)
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="first question " + "and more " * 24)
        first_delta = await live.next()
        await live.send("user.message", text="second question")
        events = await live.until("budget")
        while not (events[-2]["type"] == "reply.done" and events[-2]["status"] == "completed"):
            events += await live.until("budget")
    dones = [e for e in [first_delta, *events] if e["type"] == "reply.done"]
    assert [(d["turn"], d["status"]) for d in dones] == [
        (first_delta["turn"], "cancelled"),
        (dones[1]["turn"], "completed"),
    ]
    assert dones[1]["turn"] > first_delta["turn"]
    assert dones[1]["text"] == "echo: second question"
    second = [e for e in events if e["type"] == "reply.delta" and e["turn"] == dones[1]["turn"]]
    assert said(second) == "echo: second question"
    assert seqs(live.events) == list(range(1, len(live.events) + 1))
    assert len(fake.calls()) == 2
    # Long before the first stream would have ended by itself, it was closed.
    await eventually(lambda: fake.open_streams() == 0, "both upstream streams to close", 1.5)


async def test_a_disconnect_mid_reply_leaves_nothing_running_and_the_turn_remembered(
    http: httpx.AsyncClient, fake: FakeOpenAI, node: Server, api_key: str
) -> None:
    fake.configure(stall_after_chunks=3)
    user = unique("gone")
    minted = await mint(http, user)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="Are you there?")
        for _ in range(3):
            await live.next()
        live.drop()
    await eventually(lambda: fake.open_streams() == 0, "the upstream stream to close")
    history: list[Event] = []

    def remembered() -> bool:
        # The turn is written as its cancel finishes, a moment after the stream closed.
        url = f"{node.base_url}/api/v1/users/{user}/history"
        history[:] = httpx.get(url, headers={"X-Api-Key": api_key}).json()["items"]
        return bool(history)

    await eventually(remembered, "the cancelled turn in the history")
    assert [(t["message"], t["reply"], t["status"]) for t in history] == [
        ("Are you there?", "This is the", "cancelled")
    ]
    assert history[0]["request_id"].startswith(minted["session_id"])
    # The turn the client saw begin comes to an end for a client that resumes: its
    # reply.done (cancelled, with what was said) was stored though it could not be sent.
    async with opened(minted["ws_url"] + "&last_seq=4") as back:
        replayed = await back.until("session.ready")
    assert types(replayed) == ["reply.done", "budget", "session.ready"]
    assert (replayed[0]["status"], replayed[0]["text"]) == ("cancelled", "This is the")
    assert [e["seq"] for e in replayed] == [5, 6, 7] and replayed[-1]["resumed"] is True


# --- resent messages -------------------------------------------------------------------------


async def test_a_resent_message_runs_once_on_the_same_and_on_a_new_connection(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    minted = await mint(http, persona_id=await persona(http, sessionInteractionLimit=5))
    message = {"id": "msg-1", "text": "Hello there"}
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", **message)
        await live.send("user.message", **message)  # a retry of the same frame
        turn = await live.until("budget")
        await live.quiet()
        last_seq = live.events[-1]["seq"]
    assert types(turn).count("reply.done") == 1 and turn[-1]["interactions_left"] == 4
    async with opened(minted["ws_url"] + f"&last_seq={last_seq}") as live:
        ready = await live.next()
        await live.send("user.message", **message)  # resent after a reconnect
        await live.quiet()
    assert ready["resumed"] is True and ready["budget"]["interactions_left"] == 4
    assert len(fake.calls()) == 1
    shown = (await http.get(f"/api/sessions/{minted['session_id']}")).json()
    assert shown["budget"]["interactions_left"] == 4  # nothing charged for the resend


# --- bad frames ------------------------------------------------------------------------------


async def test_a_frame_over_the_size_limit_closes_1009(http: httpx.AsyncClient) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        # The server may close while the frame is still going out.
        with contextlib.suppress(ConnectionClosed):
            await live.socket.send("x" * (FRAME_LIMIT + 1))
        events, code = await live.closed()
    assert events == [] and code == 1009


async def test_a_frame_under_the_routes_limit_reaches_the_session(
    http: httpx.AsyncClient,
) -> None:
    # Full mode: a chat session's frames are limited to a text message's size.
    minted = await mint(http, mode="full")
    audio = {"data_b64": "A" * (UVICORN_WS_MAX_SIZE + 1024 * 1024), "mime": "audio/wav"}
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", audio=audio)
        refused = await live.next()
    # It reached the session, which found no audio in it.
    assert refused["type"] == "error" and refused["code"] == "voice.invalid_format"


async def test_malformed_frames_get_error_events_and_five_in_a_row_close_1008(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        socket = live.socket
        await socket.send("not json")
        await socket.send(b"\x00\x01binary")
        await live.send("user.message", text="")
        await live.send("no.such.type")
        answered = [await live.next() for _ in range(4)]
        await live.send("ping")  # a good frame between: the count starts again
        assert (await live.next())["type"] == "pong"
        for _ in range(5):
            await socket.send("{")
        events, code = await live.closed()
    assert types(answered) == ["error"] * 4
    assert {(e["code"], e["fatal"]) for e in answered} == {("validation.failed", False)}
    assert "text" in answered[2]["message"]  # it says which field is wrong
    assert types(events) == ["error"] * 4 + ["session.closing"]
    assert events[-1]["code"] == 1008 and code == 1008
    assert seqs(live.events) == list(range(1, len(live.events) + 1))
    assert fake.calls() == []


async def test_a_session_closed_1008_and_not_resumed_ends_1008(
    http: httpx.AsyncClient, other_node: Server
) -> None:
    """Its ended_code is the close its client saw, not 1000 (issue 26)."""
    minted = await mint(http)
    async with opened(on(other_node, minted["ws_url"])) as live:
        await live.next()
        for _ in range(5):
            await live.socket.send("{")
        _, code = await live.closed()
    assert code == 1008
    # Read through the node whose resume window (1 s) applies.
    path = f"{other_node.base_url}/api/sessions/{minted['session_id']}"
    deadline = time.monotonic() + 6
    while (shown := (await http.get(path)).json())["status"] != "ended":
        assert time.monotonic() < deadline, "the session never ended"
        await asyncio.sleep(0.1)
    assert shown["ended_code"] == 1008


async def test_a_flood_of_frames_closes_1008(http: httpx.AsyncClient) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        # The server may close before the last ones are out.
        with contextlib.suppress(ConnectionClosed):
            for _ in range(60):
                await live.send("ping")
        events, code = await live.closed()
    # A burst of 30 is let through (a little more may have refilled while they came).
    pongs = types(events).count("pong")
    assert 30 <= pongs < 40
    assert types(events) == ["pong"] * pongs + ["session.closing"]
    assert events[-1]["code"] == 1008 and code == 1008


# --- tokens, ends, replacement ---------------------------------------------------------------


async def closes_with(url: str) -> tuple[list[Event], int | None]:
    """What a socket gets that the server accepts and then closes."""
    async with opened(url) as live:
        assert live.socket.response.status_code == 101  # accepted: a browser reads the code
        return await live.closed()


async def test_bad_expired_and_foreign_tokens_close_4001_after_accepting(
    http: httpx.AsyncClient, api_key: str, other_node: Server
) -> None:
    one, two = await mint(http), await mint(http)
    path_of_one = one["ws_url"].split("?")[0]
    assert await closes_with(path_of_one + "?token=garbage") == ([], 4001)
    assert await closes_with(path_of_one + "?token=" + quote(two["token"], safe="")) == ([], 4001)
    async with httpx.AsyncClient(
        base_url=other_node.base_url, headers={"X-Api-Key": api_key}
    ) as brisk:
        unused = await mint(brisk)  # minted where a token lasts 1 s
        await asyncio.sleep(1.2)
        assert await closes_with(unused["ws_url"]) == ([], 4001)
        shown = (await brisk.get(f"/api/sessions/{unused['session_id']}")).json()
    assert (shown["status"], shown["ended_code"]) == ("ended", 4001)
    # The foreign and bad tokens spent nothing of the session they knocked on.
    async with opened(one["ws_url"]) as live:
        assert (await live.next())["type"] == "session.ready"


async def test_bad_socket_urls_get_a_close_code_never_1011(http: httpx.AsyncClient) -> None:
    minted = await mint(http)
    path = minted["ws_url"].split("?")[0]
    assert await closes_with(path) == ([], 4001), "no token at all"
    assert await closes_with(path + "?token=") == ([], 4001)
    # (Under 8 KiB: a longer handshake line never gets an answer from the socket layer.)
    assert await closes_with(path + "?token=" + "x" * 5_000) == ([], 4001)
    huge_id = path.rsplit("/", 2)[0] + "/" + "a" * 2000 + "/socket"
    token = "?token=" + quote(minted["token"], safe="")
    assert await closes_with(huge_id + token) == ([], 4001), "the token names another session"
    for bad in ("abc", "-1", "1.5", "99999999999999999999"):
        async with opened(minted["ws_url"] + f"&last_seq={bad}") as live:
            error, ready = await live.next(), await live.next()
        # Refused in plain words, then a fresh start: nothing replayed, nothing lost.
        assert (error["type"], error["code"], error["fatal"]) == (
            "error", "validation.failed", False,
        ), bad  # fmt: skip
        assert ready["type"] == "session.ready" and ready["resumed"] is False


async def test_an_ended_session_closes_4004_an_unknown_one_4001(http: httpx.AsyncClient) -> None:
    minted = await mint(http)
    # A well-formed token for a session that does not exist (or expired long ago): 4001,
    # as for a wrong secret (tests/test_session_security.py).
    unknown = minted["ws_url"].replace(minted["session_id"], str(uuid.uuid4()))
    assert await closes_with(unknown) == ([], 4001)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("session.end")
        events, code = await live.closed()
    assert types(events) == ["session.closing"] and (events[0]["code"], code) == (1000, 1000)
    assert await closes_with(minted["ws_url"]) == ([], 4004)  # no resume after an end
    assert await closes_with(minted["ws_url"] + "&last_seq=1") == ([], 4004)


async def test_the_backends_delete_closes_the_live_socket_1000(http: httpx.AsyncClient) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        assert (await http.delete(f"/api/sessions/{minted['session_id']}")).status_code == 204
        events, code = await live.closed()
    assert types(events) == ["session.closing"] and code == 1000


async def test_a_delete_on_another_node_closes_the_socket_where_it_lives(
    http: httpx.AsyncClient, other_node: Server, api_key: str
) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        async with httpx.AsyncClient(
            base_url=other_node.base_url, headers={"X-Api-Key": api_key}, timeout=10
        ) as elsewhere:
            assert (
                await elsewhere.delete(f"/api/sessions/{minted['session_id']}")
            ).status_code == 204
        events, code = await live.closed()
    assert types(events) == ["session.closing"] and code == 1000


async def test_a_second_socket_replaces_the_first_which_closes_4009(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    minted = await mint(http)
    async with opened(minted["ws_url"]) as first:
        await first.next()  # attached: only now is there a socket to replace
        async with opened(minted["ws_url"]) as second:
            ready = await second.next()
            gone, code = await first.closed()
            await second.send("user.message", text="Still there?")
            turn = await second.until("budget")
    # Nothing of the session goes to the replaced socket any more (at most why it closes).
    assert set(types(gone)) <= {"session.closing"} and code == 4009
    assert ready["type"] == "session.ready" and ready["seq"] == 2  # numbering goes on
    assert turn[-2]["status"] == "completed"


# --- memory ----------------------------------------------------------------------------------


async def test_a_session_shares_the_users_memory_with_the_http_api(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    user = unique("ada")
    said_over_http = await http.post(
        "/api/v1/conversation", json={"user_id": user, "message": "My name is Ada."}
    )
    assert said_over_http.status_code == 200, said_over_http.text
    minted = await mint(http, user)
    async with opened(minted["ws_url"]) as live:
        await live.next()
        await live.send("user.message", text="What is my name?")
        await live.until("budget")
    prompt = fake.calls()[-1]["messages"]
    assert "name: Ada" in prompt[0]["content"]
    history = (await http.get(f"/api/v1/users/{user}/history")).json()["items"]
    assert [(t["message"], t["reply"]) for t in history] == [
        ("What is my name?", DEFAULT_REPLY),
        ("My name is Ada.", DEFAULT_REPLY),
    ]


async def test_a_silent_peer_is_dropped_and_its_session_ends_after_the_resume_window(
    http: httpx.AsyncClient, other_node: Server
) -> None:
    """A client that stops answering (a laptop lid closed): the server's pings go unanswered,
    it drops the socket, and the session waits out the resume window, then ends."""
    minted = await mint(http)
    url = urlsplit(on(other_node, minted["ws_url"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", other_node.port)
    # RFC 6455 §4.1 by hand: a client that completes the handshake, then never reads again,
    # so it never answers a ping (a library client would, from its own reader).
    writer.write(
        f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: 127.0.0.1:{other_node.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    # Read through the node that holds the socket: the resume window is its setting.
    path = f"{other_node.base_url}/api/sessions/{minted['session_id']}"
    assert (await http.get(path)).json()["status"] == "live"

    async def ended() -> bool:
        return (await http.get(path)).json()["status"] == "ended"

    deadline = time.monotonic() + 6
    while not await ended():
        assert time.monotonic() < deadline, "the silent socket's session never ended"
        await asyncio.sleep(0.1)
    assert (await http.get(path)).json()["ended_code"] == 1000
    writer.close()
