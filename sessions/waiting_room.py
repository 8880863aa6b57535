"""The waiting room as its clients see it (DESIGN.md, "Live sessions": waiting room).

A session minted when the deployment is full waits in line (:mod:`sessions.capacity`); its
client holds a ticket, which is also the token of the session it waits for. The client
learns where it stands on its queue socket (``queue.position`` on every change, then
``queue.admitted`` the moment a slot is offered) or by polling (the same events, as JSON);
either keeps its place, and its leaving (``DELETE`` on the poll URL) frees it at once.

Each process holds its queued clients' sockets in a :class:`QueueHub`, which listens to the
waiting room's channel: an admission is handed to the socket waiting for it as published,
and any change makes the hub ask once, in one round trip, where each of its clients now
stands. No loop polls Redis for admissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from engine import keyspace
from engine.errors import RapportError, SessionGone, SessionTokenInvalid
from engine.state import Client, subscribe
from sessions.capacity import Gone, Offered, Standing, Waiting, decode_moved
from sessions.frames import QueueAdmitted, QueuePosition, QueueUpdate
from sessions.socket import Inbox, close_with
from sessions.store import Session, SessionStore

log = logging.getLogger("rapport.sessions")

SocketUrl = Callable[[str, str], str]
"""(session id, token) -> the session socket's absolute URL, as the client reached us."""

encode = msgspec.json.Encoder().encode


def left_the_line() -> SessionGone:
    return SessionGone("Not in the waiting room: the place was given up, lapsed or taken.")


class WaitingRoom:
    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._capacity = store.capacity

    async def ticket(self, ticket: str, session_id: str) -> Session:
        """The session ``ticket`` waits for. Raises SessionTokenInvalid for a ticket not
        ``session_id``'s, SessionGone when the session is unknown or ended."""
        session = await self._store.verify(ticket, session_id)
        if session.ended is not None:
            raise left_the_line()
        return session

    async def standing(self, session: Session, ticket: str, url: SocketUrl) -> QueueUpdate:
        """Where the session stands now; its client counts as heard from."""
        if not session.queued:
            return _admitted(session, ticket, url)
        [standing] = await self._capacity.status([session.id], touch=True)
        if isinstance(standing, Waiting):
            await self._store.heard([(session.account_id, session.id)])
        return await self.answer(session, standing, ticket, url)

    async def answer(
        self, session: Session, standing: Standing, ticket: str, url: SocketUrl
    ) -> QueueUpdate:
        """What the client is told of ``standing``: its place, or the slot offered to it
        (whose connect window starts now). Raises SessionGone when it lost its place.
        Telling a place reads nothing: a thousand waiting clients told of a move cost one
        round trip (:meth:`QueueHub.refresh`), not a thousand."""
        match standing:
            case Waiting(position, estimated_wait_s):
                return QueuePosition(position=position, estimated_wait_s=estimated_wait_s)
            case Offered(offer_by_ms):
                try:
                    claimed = await self._store.claim(session.account_id, session.id, offer_by_ms)
                except SessionGone:
                    await self._refuse_if_revoked(session)
                    raise
                return _admitted(claimed, ticket, url)
        # Evicted for silence, or an offer that lapsed: the session goes with the place
        # (unless its socket connected meanwhile, by another way than this one).
        await self._refuse_if_revoked(session)
        with contextlib.suppress(SessionGone):
            await self._store.leave(session.account_id, session.id)
        raise left_the_line()

    async def _refuse_if_revoked(self, session: Session) -> None:
        """Raise SessionTokenInvalid (4001) if the session lost its place because the API
        key slot that minted it was disabled or regenerated: the ticket itself is revoked,
        not merely out of line. The ended session is kept, so the ticket stays refused."""
        with contextlib.suppress(SessionGone):
            if (await self._store.get(session.account_id, session.id)).revoked:
                raise SessionTokenInvalid(
                    "The ticket was revoked: the API key that minted it was disabled or "
                    "regenerated."
                )

    async def leave(self, session: Session) -> None:
        """The client gives its place up (or the slot offered to it, before connecting)."""
        await self._store.leave(session.account_id, session.id)


def _admitted(session: Session, ticket: str, url: SocketUrl) -> QueueAdmitted:
    return QueueAdmitted(
        session_id=session.id,
        token=ticket,
        ws_url=url(session.id, ticket),
        expires_at=session.expires_at(datetime.now(UTC)),
    )


class QueueHub:
    """The queued clients whose sockets this process holds, told of every change."""

    def __init__(self, redis: Client, store: SessionStore) -> None:
        self._redis = redis
        self._store = store
        self._waiting: dict[str, tuple[str, Callable[[Standing], None]]] = {}
        """session id -> (account id, how to tell its socket)."""
        self._changed = asyncio.Event()

    def hold(self, session: Session, tell: Callable[[Standing], None]) -> None:
        self._waiting[session.id] = (session.account_id, tell)

    def release(self, session_id: str) -> None:
        self._waiting.pop(session_id, None)

    async def run(self) -> None:
        refreshing = asyncio.create_task(self._refresh_on_change())
        try:
            async for data in subscribe(self._redis, keyspace.QUEUE_EVENTS):
                try:
                    moved = decode_moved(data)
                except msgspec.MsgspecError:
                    log.warning("ignored a malformed waiting-room message")
                    continue
                if isinstance(moved.admitted, list):
                    # Handed over as published: the admission is not kept waiting for the
                    # others' places.
                    for admitted in moved.admitted:
                        held = self._waiting.get(admitted.session_id)
                        if held is not None:
                            held[1](Offered(admitted.offer_by_ms))
                self._changed.set()
        finally:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing

    async def _refresh_on_change(self) -> None:
        while True:
            await self._changed.wait()
            # Changes that come while one refresh runs are covered by the next one.
            self._changed.clear()
            try:
                await self.refresh(touch=False)
            except RapportError as error:
                log.warning("could not refresh the waiting room: %s", error.message)

    async def refresh(self, *, touch: bool) -> None:
        """Ask where every client held here stands (one round trip) and tell each; with
        ``touch``, they count as heard from (their sockets are open)."""
        held = list(self._waiting.items())
        if not held:
            return
        standings = await self._store.capacity.status([sid for sid, _ in held], touch=touch)
        for (_, (_, tell)), standing in zip(held, standings, strict=True):
            tell(standing)
        if touch:
            await self._store.heard([(account_id, sid) for sid, (account_id, _) in held])


class Disconnected(msgspec.Struct, frozen=True):
    pass


class QueueSocket:
    """A queued client's socket (``queue_ws_url``): its place on every change, then the
    offer, then a close 1000. 4001 for a bad ticket, 4004 when the place is gone."""

    def __init__(self, room: WaitingRoom, hub: QueueHub) -> None:
        self._room = room
        self._hub = hub

    async def serve(self, socket: WebSocket, url: SocketUrl) -> None:
        await socket.accept()
        ticket = socket.query_params.get("ticket", "")
        try:
            session = await self._room.ticket(ticket, socket.path_params["session_id"])
        except RapportError as error:
            await close_with(socket, error.failure.close_code, error.message)
            return
        inbox: Inbox[Standing | Disconnected] = Inbox()
        self._hub.hold(session, inbox.put)
        reader = asyncio.create_task(_watch(socket, inbox))
        try:
            update = await self._room.standing(session, ticket, url)
            while True:
                last = update
                await socket.send_text(encode(update).decode())
                if isinstance(update, QueueAdmitted):
                    await close_with(socket, 1000, "admitted")
                    return
                update = None
                while update is None or update == last:
                    items = await inbox.take()
                    if any(isinstance(item, Disconnected) for item in items):
                        return
                    # The latest word stands; an offer outranks any place reported with it.
                    offers = [item for item in items if isinstance(item, Offered)]
                    standing = offers[0] if offers else items[-1]
                    assert not isinstance(standing, Disconnected)
                    update = await self._room.answer(session, standing, ticket, url)
        except RapportError as error:
            await close_with(socket, error.failure.close_code, error.message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            self._hub.release(session.id)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _watch(socket: WebSocket, inbox: Inbox[Standing | Disconnected]) -> None:
    """Read (and drop) what the client sends until it goes: the queue socket only talks."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while (await socket.receive())["type"] != "websocket.disconnect":
            pass
    inbox.put(Disconnected())


__all__ = ["Gone", "QueueHub", "QueueSocket", "WaitingRoom"]
