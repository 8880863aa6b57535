"""What a port that browsers reach directly must survive (issue 21, items 4 and 5), against a
real ``rapport serve``: request heads over the limit (431), heads sent too slowly (closed),
too many connections (503), and socket frames over the session's mode's limit (1009), with
the server's memory read from /proc. Raw sockets, since no well-behaved client sends these."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from api.sessions import SOCKET_PATH
from engine.config import CHAT_FRAME_LIMIT, Settings
from engine.media import MAX_VOICE_B64
from sessions import frames
from tests.conftest import Server

MAX_HEAD = Settings().max_header_bytes
HEAD_TIMEOUT = "1"
MiB = 1024 * 1024


def rss(server: Server) -> int:
    """The server's resident memory, in bytes."""
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The server's largest resident memory while the block runs, sampled every 5 ms."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = self.before = rss(server)
        self._done = threading.Event()

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss(self.server))

    @contextlib.contextmanager
    def watching(self) -> Iterator[PeakRss]:
        sampler = threading.Thread(target=self._sample)
        sampler.start()
        try:
            yield self
        finally:
            self._done.set()
            sampler.join()

    @property
    def growth(self) -> int:
        return self.peak - self.before


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default header limit, a short header timeout."""
    running = Server(
        tmp_path_factory.mktemp("transport") / "data", RAPPORT_HEADER_TIMEOUT=HEAD_TIMEOUT
    ).start()
    yield running
    running.retire()


@pytest.fixture(scope="module")
def api_key(limited: Server) -> str:
    return limited.new_tenant(f"transport-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def http(limited: Server, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=limited.base_url, headers={"X-Api-Key": api_key}, timeout=30
    ) as client:
        yield client
        # The account's plan holds 10 live sessions: end the test's.
        for item in (await client.get("/api/sessions")).json()["items"]:
            await client.delete(f"/api/sessions/{item['session_id']}")


def head(size: int, keep_alive: bool = False) -> bytes:
    """A GET /healthz whose head is ``size`` bytes, padded with one header."""
    connection = b"keep-alive" if keep_alive else b"close"
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: %s\r\nX-Pad: " % connection
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


async def exchange(server: Server, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it; b"" when it
    reset the connection instead (it closed with unread bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            return b""
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (what it sent before
    is read and dropped)."""
    try:
        await asyncio.wait_for(reader.read(), seconds)
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


# --- request heads (item 4) ------------------------------------------------------------------


async def test_a_head_just_under_the_limit_passes_and_one_just_over_is_431(
    limited: Server,
) -> None:
    under = await exchange(limited, head(MAX_HEAD - 256))
    assert under.startswith(b"HTTP/1.1 200 ")
    over = await exchange(limited, head(MAX_HEAD + 256))
    assert over.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close\r\n" in over


async def test_a_megabyte_of_headers_is_refused(limited: Server) -> None:
    answer = await exchange(limited, head(MiB))
    # 431, or a reset: the server closed with the rest of the megabyte unread.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")


async def test_sixty_unfinished_heads_hold_no_memory(limited: Server) -> None:
    unfinished = head(2 * MiB)[:-4]  # never ends
    opened = [await asyncio.open_connection("127.0.0.1", limited.port) for _ in range(60)]

    async def send(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(unfinished)
            await writer.drain()

    with PeakRss(limited).watching() as memory:
        await asyncio.gather(*(send(writer) for _, writer in opened))
        await asyncio.sleep(0.3)
    closed = [await closed_by_server(reader, 5) for reader, _ in opened]
    for _, writer in opened:
        writer.close()
    # Held, 60 heads of 2 MiB would be 120 MiB; refused, each costs a read or two.
    assert memory.growth < 40 * MiB, memory.growth
    assert all(closed)


async def test_a_head_sent_a_byte_at_a_time_is_closed_after_the_timeout(
    limited: Server,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        closed = False
        for byte in head(200)[:10]:  # 5 s of sending at most; the timeout is 1 s
            writer.write(bytes([byte]))
            if await closed_by_server(reader, 0.5):
                closed = True
                break
        assert closed
        assert await closed_by_server(idle_reader, 5)  # one that sends nothing at all
    finally:
        writer.close()
        idle_writer.close()


async def test_a_kept_alive_connection_is_timed_again_for_its_next_head(
    limited: Server,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        writer.write(head(200, keep_alive=True))
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 200 ")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"GET /hea")  # and nothing more
        assert await closed_by_server(reader, 5)
    finally:
        writer.close()


async def test_past_the_connection_cap_a_new_connection_gets_503(server_on) -> None:
    capped: Server = server_on(RAPPORT_MAX_CONNECTIONS="6")
    held = [await asyncio.open_connection("127.0.0.1", capped.port) for _ in range(6)]
    try:
        await asyncio.sleep(0.2)
        refused = await exchange(capped, head(200))
        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"retry-after: 1\r\n" in refused and b"connection: close\r\n" in refused
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.2)
    assert (await exchange(capped, head(200))).startswith(b"HTTP/1.1 200 ")


# --- sockets (items 4 and 5) -----------------------------------------------------------------


async def mint(http: httpx.AsyncClient, mode: str) -> str:
    response = await http.post(
        "/api/sessions", json={"user_id": f"u-{uuid.uuid4().hex[:8]}", "mode": mode}
    )
    assert response.status_code == 201, response.text
    return response.json()["ws_url"]


async def test_an_upgrade_with_headers_over_the_limit_is_431(http: httpx.AsyncClient) -> None:
    url = await mint(http, "chat")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers={"X-Pad": "a" * MAX_HEAD}):
            pass
    assert refused.value.response.status_code == 431


def test_the_largest_valid_chat_frame_fits_the_chat_limit() -> None:
    # Every character of the text and the id escaped as a surrogate pair: 12 bytes each.
    emoji = "\\ud83d\\ude00"
    frame = f'{{"type": "user.message", "id": "{emoji * 128}", "text": "{emoji * 4000}"}}'
    assert isinstance(frames.decode(frame), frames.UserMessage)
    assert len(frame.encode()) <= CHAT_FRAME_LIMIT


async def test_a_chat_session_closes_1009_on_a_big_frame_without_reading_it(
    limited: Server, http: httpx.AsyncClient
) -> None:
    urls = [await mint(http, "chat") for _ in range(10)]
    big = json.dumps({"type": "user.message", "audio": {"data_b64": "A" * 8 * MiB}})

    async def send(url: str) -> int | None:
        async with connect(url, open_timeout=10, close_timeout=2, max_size=None) as socket:
            assert json.loads(await socket.recv())["type"] == "session.ready"
            with contextlib.suppress(ConnectionClosed):
                await socket.send(big)
                await socket.recv()
            return socket.close_code

    with PeakRss(limited).watching() as memory:
        codes = await asyncio.gather(*(send(url) for url in urls))
    assert codes == [1009] * 10
    # Read and decoded, ten 8 MiB frames take several times 80 MiB.
    assert memory.growth < 40 * MiB, memory.growth
    # Counted as what the server closed them with, not as sockets the client ended (101).
    await eventually_counted(limited, SOCKET_PATH, "1009", 10)


async def eventually_counted(server: Server, route: str, status: str, at_least: int) -> None:
    """Wait until ``rapport_websocket_connections_total`` of ``route`` and ``status`` reaches
    ``at_least`` (a socket is counted once its handler returns)."""
    counted = 0.0
    for _ in range(100):
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"{server.base_url}/metrics")).text
        counted = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "rapport_websocket_connections_total"
            and sample.labels == {"route": route, "status": status}
        )
        if counted >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{route} {status}: {counted} counted, {at_least} expected")


async def test_a_chat_frame_at_the_limit_still_reaches_the_session(
    http: httpx.AsyncClient,
) -> None:
    async with connect(await mint(http, "chat"), open_timeout=10) as socket:
        assert json.loads(await socket.recv())["type"] == "session.ready"
        frame = '{"type": "user.message", "text": "hi"}'
        await socket.send(frame + " " * (CHAT_FRAME_LIMIT - len(frame)))
        answer = json.loads(await asyncio.wait_for(socket.recv(), 30))
    assert answer["type"].startswith("reply."), answer


async def test_a_full_mode_session_still_takes_a_voice_note_at_the_seeds_limit(
    http: httpx.AsyncClient,
) -> None:
    audio = {"data_b64": "A" * MAX_VOICE_B64, "mime": "audio/wav"}
    async with connect(await mint(http, "full"), open_timeout=10, max_size=None) as socket:
        assert json.loads(await socket.recv())["type"] == "session.ready"
        await socket.send(json.dumps({"type": "user.message", "audio": audio}))
        answer = json.loads(await asyncio.wait_for(socket.recv(), 60))
    # It reached the session, which found no audio in it (a 1009 would have closed it).
    assert answer["type"] == "error" and answer["code"] == "voice.invalid_format", answer


async def test_voice_notes_are_decoded_a_few_at_a_time_per_process(monkeypatch) -> None:
    """Full-mode frames may be voice-note sized: their decodes take turns (finding 5)."""
    from sessions import socket as session_socket

    running = peak = 0
    lock = threading.Lock()
    decode = session_socket.decode_base64

    def counted(field: str, text: str) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            threading.Event().wait(0.05)  # long enough for the others to pile up
            return decode(field, text)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(session_socket, "decode_base64", counted)
    gate = asyncio.Semaphore(session_socket.VOICE_DECODES)
    notes = [frames.Audio(data_b64="UklGRg==", mime="audio/wav") for _ in range(6)]
    voices = await asyncio.gather(*(session_socket.decode_voice(n, gate) for n in notes))
    assert [voice.data for voice in voices] == [b"RIFF"] * 6
    assert peak == session_socket.VOICE_DECODES
