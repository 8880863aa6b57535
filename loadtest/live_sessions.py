"""The built-in WebSocket scenario: live sessions (README, "Live sessions").

Two scenarios on one object, run by :func:`loadtest.run` as its setup and its stages:

- :meth:`LiveSessions.open_session` (the setup, ``sessions`` of them spread over the ramp):
  mints a session through ``POST /api/sessions`` (``mint``, from the intended start); a 202
  waits on its ``queue_ws_url`` for ``queue.admitted`` (``queue_wait``); then opens the
  ``ws_url`` as given and waits for ``session.ready`` (``connect``). The first ``talkers``
  sessions talk; the others stay open, idle.
- :meth:`LiveSessions.turn` (each arrival of the stages): takes a free talker (the wait is
  part of the latencies, which run from the intended start), sends a ``user.message`` and
  reads until ``reply.done``: ``first_delta`` at the first ``reply.delta``, ``reply`` at
  ``reply.done``, counted as ``reply completed|cancelled|failed``. ``cancel_share`` of the
  turns send ``reply.cancel`` at the first delta (``cancel_to_done``: cancel to
  ``reply.done``). After ``drop_share`` of the turns the socket is dropped without a close
  frame (the transport aborted) and resumed on ``ws_url`` with ``last_seq`` (``resume``,
  counted ``resumed``, or ``resume lost`` when the server had no longer kept the events).

A socket the server closes counts as ``close <code>`` (``close 4005`` for a spent budget)
when it happens; a mint or upgrade refused counts as ``mint <status> <code>`` or ``connect
<status>``; once no talker is left, an arrival counts ``no live session``. The teardown ends
every session (``session.end``), so that none is left holding a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from typing import Any, Literal

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from loadtest.client import Client
from loadtest.conversation import QUESTIONS
from loadtest.loopback import check_target
from loadtest.measure import Recorder
from loadtest.runner import Clock

MINT_PATH = "/api/sessions"
READY_FRAMES = 1024  # frames read before session.ready at most (a resume replays <= 512)
END_WAIT_S = 2.0
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class Refused(Exception):
    """A session that could not be had, and the outcome that says why."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def close_code(exc: ConnectionClosed) -> int:
    return exc.rcvd.code if exc.rcvd is not None else 1006


class LiveSession:
    """One session's socket, its last ``seq``, and the frames it has read."""

    def __init__(self, url: str, socket: ClientConnection, last_seq: int) -> None:
        self.url = url
        self.socket = socket
        self.last_seq = last_seq
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.closed: int | None = None
        self.leaving = False
        """We are dropping or ending it: its close is ours, not counted."""
        self.reader: asyncio.Task[None] | None = None

    def listen(self, record: Recorder) -> None:
        self.reader = asyncio.create_task(self._read(record))

    async def _read(self, record: Recorder) -> None:
        code = 1000
        try:
            async for message in self.socket:
                frame = _decode(message)
                self.seen(frame)
                self.inbox.put_nowait(frame)
        except ConnectionClosed as exc:
            code = close_code(exc)
        except msgspec.DecodeError:
            code = 1007
            self.socket.transport.abort()
        else:
            code = self.socket.close_code or 1000
        if not self.leaving:
            self.closed = code
            record.outcome(f"close {code}")
        self.inbox.put_nowait(None)

    def seen(self, frame: dict[str, Any]) -> None:
        seq = frame.get("seq")
        if isinstance(seq, int) and seq > self.last_seq:
            self.last_seq = seq

    async def send(self, kind: str, **fields: Any) -> None:
        await self.socket.send(_encode({"type": kind, **fields}).decode())

    async def end(self) -> None:
        self.leaving = True
        try:
            if self.closed is None:
                await self.send("session.end")
                async with asyncio.timeout(END_WAIT_S):
                    await self.socket.wait_closed()
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        finally:
            self.socket.transport.abort()
            if self.reader is not None:
                self.reader.cancel()


class LiveSessions:
    def __init__(
        self,
        *,
        sessions: int,
        talkers: int,
        mode: Literal["chat", "full"] = "chat",
        cancel_share: float = 0.0,
        drop_share: float = 0.0,
        persona_id: str | None = None,
        allow_remote: bool = False,
        seed: int | None = None,
    ) -> None:
        if sessions < 1 or not 0 <= talkers <= sessions:
            raise ValueError("sessions must be at least 1, talkers between 0 and sessions")
        for name, share in (("cancel_share", cancel_share), ("drop_share", drop_share)):
            if not 0 <= share <= 1:
                raise ValueError(f"{name} is a share between 0 and 1, not {share}")
        self.talker_count = talkers
        self.mode = mode
        self.cancel_share = cancel_share
        self.drop_share = drop_share
        self.persona_id = persona_id
        self.allow_remote = allow_remote
        self.random = random.Random(seed)  # noqa: S311 (load shapes, not secrets)
        self.run_id = secrets.token_hex(4)
        self.minted = 0
        self.turns = 0
        self.sessions: list[LiveSession] = []
        self.talkers: list[LiveSession] = []
        self.free: asyncio.Queue[LiveSession | None] = asyncio.Queue()

    # --- the setup: open the sessions ------------------------------------------------------

    async def open_session(self, client: Client, clock: Clock, record: Recorder) -> None:
        n = self.minted
        self.minted += 1
        body: dict[str, Any] = {"user_id": f"lt-ws-{self.run_id}-{n}", "mode": self.mode}
        if self.persona_id is not None:
            body["persona_id"] = self.persona_id
        answer = await client.post(MINT_PATH, json=body)
        record("mint", clock.elapsed())
        record.outcome(f"mint {answer.outcome}")
        if answer.status == 202:
            since = clock.now()
            try:
                url = await self.admitted(client, answer.json()["queue_ws_url"])
            except Refused as exc:
                record.outcome(exc.outcome, ok=False)
                return
            record("queue_wait", clock.now() - since)
        elif answer.status == 201:
            url = answer.json()["ws_url"]
        else:
            return
        since = clock.now()
        try:
            socket, _, last_seq = await self.connect(client, url)
        except Refused as exc:
            record.outcome(exc.outcome, ok=False)
            return
        record("connect", clock.now() - since)
        session = LiveSession(url, socket, last_seq)
        session.listen(record.background())
        self.sessions.append(session)
        if len(self.talkers) < self.talker_count:
            self.talkers.append(session)
            self.free.put_nowait(session)

    async def admitted(self, client: Client, queue_url: str) -> str:
        """Wait on the queue socket for ``queue.admitted``; its ``ws_url``."""
        check_target(queue_url, allow_remote=self.allow_remote)
        socket = await self.open(client, queue_url)
        try:
            async for message in socket:
                frame = _decode(message)
                if frame.get("type") == "queue.admitted":
                    return frame["ws_url"]
        except ConnectionClosed as exc:
            raise Refused(f"queue close {close_code(exc)}") from None
        finally:
            socket.transport.abort()
        raise Refused(f"queue close {socket.close_code or 1000}")

    async def open(self, client: Client, url: str) -> ClientConnection:
        try:
            return await client.websocket(url)
        except InvalidStatus as exc:
            raise Refused(f"connect {exc.response.status_code}") from None

    async def connect(
        self, client: Client, url: str, last_seq: int | None = None
    ) -> tuple[ClientConnection, dict[str, Any], int]:
        """Open a session's socket (resuming after ``last_seq``) and read to
        ``session.ready``: the socket, that frame, and the last ``seq`` read."""
        check_target(url, allow_remote=self.allow_remote)
        seen = last_seq or 0
        socket = await self.open(client, url if last_seq is None else f"{url}&last_seq={seen}")
        try:
            for _ in range(READY_FRAMES):
                frame = _decode(await socket.recv())
                seq = frame.get("seq")
                if isinstance(seq, int):
                    seen = max(seen, seq)
                if frame.get("type") == "session.ready":
                    return socket, frame, seen
        except ConnectionClosed as exc:
            raise Refused(f"close {close_code(exc)}") from None
        except BaseException:
            socket.transport.abort()
            raise
        socket.transport.abort()
        raise Refused(f"no session.ready in {READY_FRAMES} frames")

    # --- the stages: turns -----------------------------------------------------------------

    def alive(self) -> bool:
        return any(s.closed is None for s in self.talkers)

    async def take(self) -> LiveSession | None:
        """A free talker that is still open; None once none is left."""
        while self.alive():
            session = await self.free.get()
            if session is None:
                self.free.put_nowait(None)  # for the next arrival waiting
                return None
            if session.closed is None:
                return session
        return None

    async def turn(self, client: Client, clock: Clock, record: Recorder) -> None:
        session = await self.take()
        if session is None:
            record.outcome("no live session", ok=False)
            return
        try:
            await self._turn(client, clock, record, session)
        finally:
            if session.closed is None:
                self.free.put_nowait(session)
            elif not self.alive():
                self.free.put_nowait(None)

    async def _turn(
        self, client: Client, clock: Clock, record: Recorder, session: LiveSession
    ) -> None:
        while not session.inbox.empty():  # what came after the last turn (its budget)
            session.inbox.get_nowait()
        n = self.turns
        self.turns += 1
        cancel = self.random.random() < self.cancel_share
        text = QUESTIONS[n % len(QUESTIONS)]
        try:
            await session.send("user.message", id=f"lt-{self.run_id}-{n}", text=text)
        except ConnectionClosed:
            record.outcome("reply lost", ok=False)  # its close is counted by the reader
            return
        first = cancelled_at = None
        while True:
            frame = await session.inbox.get()
            if frame is None:
                record.outcome("reply lost", ok=False)
                return
            kind = frame.get("type")
            if kind == "reply.delta" and first is None:
                first = clock.now()
                record("first_delta", clock.elapsed())
                if cancel:
                    cancelled_at = clock.now()
                    with contextlib.suppress(ConnectionClosed):
                        await session.send("reply.cancel")
            elif kind == "reply.done":
                record("reply", clock.elapsed())
                if cancelled_at is not None:
                    record("cancel_to_done", clock.now() - cancelled_at)
                record.outcome(f"reply {frame.get('status')}")
                break
            elif kind == "error":
                record.outcome(f"error {frame.get('code')}", ok=False)
        if self.drop_share and self.random.random() < self.drop_share:
            await self.resume(client, clock, record, session)

    async def resume(
        self, client: Client, clock: Clock, record: Recorder, session: LiveSession
    ) -> None:
        """Drop the socket without a close frame and resume with ``last_seq``."""
        session.leaving = True
        session.socket.transport.abort()
        if session.reader is not None:
            await asyncio.gather(session.reader, return_exceptions=True)
        while not session.inbox.empty():
            session.inbox.get_nowait()
        since = clock.now()
        try:
            socket, ready, seen = await self.connect(client, session.url, session.last_seq)
        except Refused as exc:
            session.closed = 1006
            record.outcome(f"resume {exc.outcome}", ok=False)
            return
        except BaseException:
            session.closed = 1006
            raise
        record("resume", clock.now() - since)
        record.outcome("resumed" if ready.get("resumed") else "resume lost")
        session.socket, session.last_seq, session.leaving = socket, seen, False
        session.listen(record.background())

    async def close(self) -> None:
        """The teardown: end every session still open."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*(s.end() for s in self.sessions), return_exceptions=True)
