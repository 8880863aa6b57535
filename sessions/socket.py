"""The live session's socket: the I/O around :class:`sessions.protocol.SessionProtocol`.

One connection is one loop over one inbox. Everything that happens (a client frame, a
turn's event, the end of a turn, the duration or the idle window running out, a control
message from another process) is put in the inbox, handed to the protocol with the time,
and the actions it answers are carried out in order. Events are written to the session's
stream in Redis before they are sent, so a client that reconnects with ``last_seq`` gets
exactly the ones it missed.

The socket is accepted before anything is checked: a browser reads the close code of an
accepted socket (4001, 4004) but learns nothing from a refused handshake.

Turns run through the same runner as ``POST /api/v1/conversation`` (:mod:`engine.turn_runner`),
with the user's id, memory, knowledge and request balance; a message's ``id`` is its
idempotency key (scoped to the session). They are not counted against the API key's rate
window: the session was minted with the key, and its budget bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Generic, TypeVar

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from engine.config import CHAT_FRAME_LIMIT, SESSION_FRAME_LIMIT
from engine.errors import (
    BodyTooLarge,
    IdempotencyInFlight,
    RapportError,
    SessionGone,
    SessionInteractionLimit,
    UnavailableError,
    ValidationFailed,
)
from engine.idempotency import IdempotencyKey
from engine.media import decode_base64
from engine.personas import Mode
from engine.replies import ReplyDelta
from engine.turn_runner import TurnFailure, TurnResult, TurnRunner
from engine.turns import Transcribed, TurnEvent, TurnInput, Voice
from sessions.frames import Audio, PersonaRef, UserMessage, encode
from sessions.protocol import (
    Action,
    CancelTurn,
    CheckIdle,
    Close,
    EndSession,
    Send,
    SessionProtocol,
    StartTurn,
)
from sessions.store import Control, Session, SessionStore

T = TypeVar("T")
log = logging.getLogger("rapport.sessions")

FRAME_LIMITS: dict[Mode, int] = {"chat": CHAT_FRAME_LIMIT, "full": SESSION_FRAME_LIMIT}
"""The largest frame a session takes, by its mode: only full mode sends voice notes."""
VOICE_DECODES = 2
"""Voice notes decoded at once in one process (issue 21, finding 5): each is up to 35 MB of
base64 that decodes to 26 MB, so ten sessions sending one together would hold both copies
of all ten; the others wait their turn, holding only the frame they sent."""
FRAME_LIMIT_EXTENSION = "rapport.frame_limit"
"""A scope extension of the server's WebSocket protocol (api/transport.py): a callable that
sets the connection's frame limit, so that a bigger frame is refused from its header, before
its payload is read. Without it (wsproto, an app under test) the session checks each message
itself, once the server has read it."""


class Frame(msgspec.Struct, frozen=True):
    text: str | None
    data: bytes | None


class Gone(msgspec.Struct, frozen=True):
    """The client closed the socket or vanished (a ping went unanswered)."""


class Event(msgspec.Struct, frozen=True):
    turn: int
    event: TurnEvent


class Ended(msgspec.Struct, frozen=True):
    """A turn's task is over: with its answer, its failure, or cancelled."""

    turn: int
    message: UserMessage
    result: TurnResult | None = None
    budget_left: int | None = None
    error: RapportError | None = None
    duplicate: bool = False
    spent: bool = False
    """The session's budget lacked the turn's units: nothing ran."""
    gone: bool = False
    """The session ended meanwhile (its backend's DELETE): nothing ran."""


class Wake(msgspec.Struct, frozen=True):
    """The connection's timer fired: the duration's end or the idle deadline came."""


Input = Frame | Gone | Event | Ended | Wake | Control


class Inbox(Generic[T]):
    """What happened to a connection, waiting to be handled, taken all at once.

    Not an ``asyncio.Queue``: that holds four deques, about 3 KiB before anything is put in
    it, and an idle session's memory is mostly what it keeps (BENCHMARKS.md, "Live
    sessions"). A list and, while the connection waits, one future."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> list[T]:
        """Everything put so far, waiting for the first item if there is none."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.drain()

    def put_back(self, items: list[T]) -> None:
        """Items taken but not handled, ahead of any put since."""
        self._items[:0] = items

    def drain(self) -> list[T]:
        """Everything put so far, without waiting."""
        items, self._items = self._items, []
        return items


class Hub:
    """The sockets this process holds, and the control messages meant for them: a newer
    connection to one of its sessions (on any node), or a session ended by its backend."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._by_owner: dict[str, Connection] = {}
        """owner (connection id) -> that connection."""
        self._by_session: dict[str, Connection] = {}
        """session id -> the connection held here (the newer one, during a replace)."""

    def hold(self, connection: Connection) -> None:
        self._by_owner[connection.owner] = connection
        self._by_session[connection.session.id] = connection

    def release(self, connection: Connection) -> None:
        self._by_owner.pop(connection.owner, None)
        if self._by_session.get(connection.session.id) is connection:
            del self._by_session[connection.session.id]

    def held(self) -> list[tuple[str, str]]:
        """(account id, session id) of each session whose socket this process holds."""
        return [(c.session.account_id, sid) for sid, c in self._by_session.items()]

    async def run(self) -> None:
        async for control in self._store.listen():
            # Found by key, not by a walk over every socket: ten thousand may be held here.
            connection = (
                self._by_owner.get(control.owner)
                if control.kind == "replaced"
                else self._by_session.get(control.session_id)
            )
            if connection is not None:
                connection.inbox.put(control)


class SessionSocket:
    def __init__(
        self,
        *,
        store: SessionStore,
        runner: TurnRunner,
        hub: Hub,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._runner = runner
        self._hub = hub
        self._clock = clock
        self._voice_decodes = asyncio.Semaphore(VOICE_DECODES)

    async def serve(self, socket: WebSocket) -> None:
        await socket.accept()
        owner = secrets.token_hex(8)
        try:
            session = await self._store.admit(
                socket.query_params.get("token", ""), socket.path_params["session_id"]
            )
            session, _ = await self._store.attach(session, owner)
        except RapportError as error:
            await close_with(socket, error.failure.close_code, error.message)
            return
        connection = Connection(socket, session, owner, self)
        limit_frames = socket.scope.get("extensions", {}).get(FRAME_LIMIT_EXTENSION)
        if limit_frames is not None:
            limit_frames(FRAME_LIMITS[session.mode])
            connection.frame_limit = None
        self._hub.hold(connection)
        try:
            await connection.run(socket.query_params.get("last_seq"))
        finally:
            self._hub.release(connection)


class Connection:
    """One socket of one session, from its ready event to its close."""

    def __init__(self, socket: WebSocket, session: Session, owner: str, served: SessionSocket):
        self.socket = socket
        self.session = session
        self.owner = owner
        self.store = served._store
        self.runner = served._runner
        self.clock = served._clock
        self.voice_decodes = served._voice_decodes
        self.inbox: Inbox[Input] = Inbox()
        ends_at = session.ends_at()
        assert ends_at is not None, "attach sets the first connect"
        self.protocol = SessionProtocol(
            session_id=session.id,
            mode=session.mode,
            persona=PersonaRef(session.persona_id, session.persona_name),
            seq=session.seq,
            interactions_left=session.interactions_left(),
            ends_at=ends_at.timestamp(),
            now=self.clock(),
            idle_seconds=served._store.idle_seconds,
            active_at=_timestamp(session.idle_since()),
        )
        self.turns: dict[int, asyncio.Task[None]] = {}
        self.frame_limit: int | None = FRAME_LIMITS[session.mode]
        """Checked on each message here, unless the server's socket layer enforces it."""
        self.closed = False
        self.close_code: int | None = None
        """The code this side closed the socket with; None while open or if the client went."""
        self.ended = False
        self.replaced = False
        self.timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        """Set the one timer to the protocol's next deadline. A timer handle, not a task: an
        idle session's memory is mostly what it keeps. Not re-set on each user message: the
        timer fires at the deadline it was set for, and is set anew from there."""
        delay = max(0.0, self.protocol.wake_at() - self.clock())
        self.timer = asyncio.get_running_loop().call_later(delay, self.inbox.put, Wake())

    async def run(self, last_seq: str | None) -> None:
        reader = asyncio.create_task(self._read())
        self._arm()
        try:
            await self._resume(last_seq)
            while not self.closed:
                # Whatever is waiting is handled before acting, so the events of a burst (a
                # model's deltas) are stored in one round trip and sent together.
                actions: list[Action] = []
                items = await self.inbox.take()
                for n, item in enumerate(items):
                    if self.closed:
                        # Left for the way out (a turn's end to store for a resume).
                        self.inbox.put_back(items[n:])
                        break
                    actions += self._handle(item)
                await self._perform(actions)
        except RapportError as error:
            # The store failed us (Redis unreachable): the table's close code (1011), said
            # plainly, rather than a crash.
            await self._close(error.failure.close_code, error.message)
        finally:
            reader.cancel()
            if self.timer is not None:
                self.timer.cancel()
            # A socket gone mid-reply leaves nothing running: each turn is cancelled and
            # waited for (the runner remembers what was said of it).
            for task in self.turns.values():
                task.cancel()
            await asyncio.gather(reader, *self.turns.values(), return_exceptions=True)
            if not (self.ended or self.replaced):
                with contextlib.suppress(RapportError):
                    await self._keep_the_ends()
                    await self.store.detach(self.session, self.owner, self.close_code)

    async def _close(self, code: int, reason: str) -> None:
        self.closed = True
        self.close_code = code
        await close_with(self.socket, code, reason)

    async def _keep_the_ends(self) -> None:
        """Store the reply.done of each turn the socket's going cancelled, unsent: a client
        that resumes sees every turn it saw begin come to an end."""
        sends: list[Send] = []
        for item in self.inbox.drain():
            if isinstance(item, Ended):
                sends += [a for a in self._handle(item) if isinstance(a, Send)]
        if sends:
            await self.store.append(self.session, [(s.event.seq, encode(s.event)) for s in sends])

    async def _resume(self, last_seq: str | None) -> None:
        actions: list[Action] = []
        replayed: list[bytes] | None = None
        if last_seq is not None:
            # ASCII digits only (str.isdigit() is true of "²", which int() refuses), and no
            # more of them than a seq, a Redis integer (< 2**63), has: 19. int() of thousands
            # of digits raises.
            if (
                last_seq.isascii()
                and last_seq.isdigit()
                and len(last_seq) <= 19
                and int(last_seq) <= self.session.seq
            ):
                replayed = await self.store.replay(self.session, int(last_seq))
            else:
                error = ValidationFailed(
                    f"last_seq must be an integer from 0 to {self.session.seq}.",
                    errors={"last_seq": ["not a seq this session sent"]},
                )
                actions += self.protocol.refuse(error)
        for event in replayed or []:
            await self.socket.send_text(event.decode())
        actions += self.protocol.ready(self.clock(), resumed=replayed is not None)
        await self._perform(actions)

    def _handle(self, item: Input) -> list[Action]:
        now = self.clock()
        protocol = self.protocol
        match item:
            case Frame(text, data):
                return protocol.receive(text, data, now)
            case Gone():
                self.closed = True
                return []
            case Event(turn, Transcribed(text)):
                return protocol.transcribed(turn, text)
            case Event(turn, ReplyDelta(text)):
                return protocol.delta(turn, text)
            case Event():
                return []
            case Ended() as ended:
                return self._finished(ended, now)
            case Wake():
                actions = protocol.woke(now)
                if not actions:
                    self._arm()
                return actions
            case Control(kind="replaced"):
                self.replaced = True
                return protocol.replaced()
            case Control(code=code):
                self.ended = True
                return protocol.ended_elsewhere(code)

    def _finished(self, ended: Ended, now: float) -> list[Action]:
        protocol, turn, ref = self.protocol, ended.turn, ended.message.id
        if ended.duplicate:
            return protocol.dropped(turn)
        if ended.spent:
            return protocol.spent(turn)
        if ended.gone:
            self.ended = True
            protocol.dropped(turn)
            return protocol.ended_elsewhere(1000)
        if ended.result is not None:
            result = ended.result
            if self.session.interaction_limit is not None:
                protocol.charged(ended.budget_left)
            return protocol.finished(
                turn,
                now,
                status=result.status,
                text=result.reply,
                sources=result.sources,
                latency_ms=result.latency.total_ms,
            )
        if ended.error is not None:
            return protocol.finished(
                turn, now, status="failed", text="", error=ended.error, ref=ref
            )
        return protocol.finished(turn, now, status="cancelled")

    async def _perform(self, actions: list[Action]) -> None:
        pending: list[Send] = []
        for action in [*actions, None]:
            if isinstance(action, Send):
                pending.append(action)
                continue
            if pending:
                await self._send(pending)
                pending = []
            match action:
                case StartTurn(turn, message, cost):
                    await self._start(turn, message, cost)
                case CancelTurn(turn):
                    task = self.turns.get(turn)
                    if task is not None:
                        task.cancel()
                case EndSession(code):
                    self.ended = True
                    try:
                        await self.store.end(self.session.account_id, self.session.id, code)
                    except UnavailableError:
                        # The socket closes all the same; the slot's lease runs out unrenewed.
                        log.warning(
                            "session %s: end not stored (Redis unreachable)", self.session.id
                        )
                case Close(code, reason):
                    await self._close(code, reason)
                case CheckIdle():
                    # Read, not trusted to this process: a user message sent through
                    # another process (a reconnect elsewhere) puts the deadline off, and one
                    # whose deadline passed ends in this read (close 4007, slot freed).
                    stored = await self.store.get(self.session.account_id, self.session.id)
                    if stored.ended is not None:
                        self.ended = True
                    await self._perform(
                        self.protocol.checked(_timestamp(stored.idle_since()), stored.ended)
                    )
                    self._arm()

    async def _send(self, sends: list[Send]) -> None:
        frames = [(send.event.seq, encode(send.event)) for send in sends]
        # Stored before sent: an event the client may have seen can always be replayed.
        # With Redis unreachable they are sent all the same (the session goes on, its turns
        # answered with error events until Redis is back): the stream then has a gap, and a
        # resume across it starts afresh (resumed: false) rather than replay part of it.
        try:
            await self.store.append(self.session, frames)
        except UnavailableError:
            log.warning("session %s: events sent unstored (Redis unreachable)", self.session.id)
        try:
            for _, frame in frames:
                await self.socket.send_text(frame.decode())
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.inbox.put(Gone())

    async def _start(self, turn: int, message: UserMessage, cost: int) -> None:
        task = asyncio.create_task(self._turn(turn, message, cost))
        self.turns[turn] = task
        task.add_done_callback(lambda done: self._turn_over(turn, message, done))

    def _turn_over(self, turn: int, message: UserMessage, task: asyncio.Task[None]) -> None:
        self.turns.pop(turn, None)
        if task.cancelled():
            # Also for a task cancelled before it ever ran (a cancel right behind its
            # message), whose body never got to say so. Its units stay spent, like those of
            # any cancelled turn.
            self.inbox.put(Ended(turn, message))

    async def _turn(self, turn: int, message: UserMessage, cost: int) -> None:
        inbox = self.inbox
        session = self.session
        try:
            voice = None
            if message.audio is not None:
                voice = await decode_voice(message.audio, self.voice_decodes)
            # The session's units are spent in the turn's opening round trip, with the
            # request balance; a failed turn gives both back, a cancelled one neither.
            answer = await self.runner.run(
                TurnInput(
                    account_id=session.account_id,
                    user_id=session.user_id,
                    message=message.text or "",
                    request_id=f"{session.id}.{turn}",
                    voice=voice,
                    # Every turn runs as the persona the session was minted for: its
                    # knowledge, prompt and traits (issue 21: the default persona's
                    # private documents answered another persona's session).
                    persona_id=session.persona_id,
                ),
                emit=lambda event: inbox.put(Event(turn, event)),
                key=None if message.id is None else self._key(message),
                budget=session.budget(cost),
            )
        except SessionInteractionLimit:
            inbox.put(Ended(turn, message, spent=True))
            return
        except SessionGone:
            inbox.put(Ended(turn, message, gone=True))
            return
        except IdempotencyInFlight:
            # A resent message (same id) whose first copy still runs: nothing runs twice.
            inbox.put(Ended(turn, message, duplicate=True))
            return
        except RapportError as error:
            inbox.put(Ended(turn, message, error=error))
            return
        if answer.replayed:
            # A resent message that already ran: nothing runs, nothing is spent twice.
            inbox.put(Ended(turn, message, duplicate=True))
            return
        match answer.record:
            case TurnResult() as result:
                inbox.put(Ended(turn, message, result=result, budget_left=answer.budget_left))
            case TurnFailure() as failure:
                inbox.put(Ended(turn, message, error=failure.error()))

    def _key(self, message: UserMessage) -> IdempotencyKey:
        digest = hashlib.sha256(encode(message)).hexdigest()
        return IdempotencyKey(f"session:{self.session.id}:{message.id}", digest)

    async def _read(self) -> None:
        while True:
            try:
                message = await self.socket.receive()
            except (WebSocketDisconnect, RuntimeError, OSError):
                break
            if message["type"] == "websocket.disconnect":
                if message.get("code") == BodyTooLarge.failure.close_code:
                    # The server's socket layer refused a frame over this session's limit.
                    self.close_code = BodyTooLarge.failure.close_code
                break
            frame = Frame(message.get("text"), message.get("bytes"))
            if self.frame_limit is not None and _over(frame, self.frame_limit):
                error = BodyTooLarge(
                    f"A frame may be at most {self.frame_limit} bytes in {self.session.mode} mode."
                )
                self.close_code = error.failure.close_code
                await close_with(self.socket, error.failure.close_code, error.message)
                break
            self.inbox.put(frame)
        self.inbox.put(Gone())


async def decode_voice(audio: Audio, gate: asyncio.Semaphore) -> Voice:
    """A voice note's bytes, decoded off the event loop (tens of milliseconds for a large
    one) and only while ``gate`` lets it."""
    async with gate:
        data = await asyncio.to_thread(decode_base64, "audio.data_b64", audio.data_b64)
    return Voice(data, audio.mime)


def _timestamp(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _over(frame: Frame, limit: int) -> bool:
    """Whether a message is over ``limit`` bytes as sent (text in UTF-8)."""
    if frame.text is None:
        return len(frame.data or b"") > limit
    # UTF-8 takes 1 to 4 bytes a character: most texts are judged without encoding them.
    chars = len(frame.text)
    return chars > limit or (chars * 4 > limit and len(frame.text.encode()) > limit)


async def close_with(socket: WebSocket, code: int, reason: str) -> None:
    # RFC 6455 §5.5: a close frame's reason is at most 123 bytes of UTF-8.
    reason = reason.encode()[:123].decode(errors="ignore")
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await socket.close(code, reason)
