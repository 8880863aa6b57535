"""``/api/sessions``: mint, list, show and end live sessions; ``/api/waiting-room``: where a
queued client stands (DESIGN.md, "Live sessions").

Seed 000 owns sessions, so these routes are in the ``/api/`` family: problem details and its
codes. The business's backend mints a session with its API key and hands the ``ws_url`` (which
carries the session's token) to the browser, which cannot send the key on a socket; when the
deployment is full it gets a ticket instead, and the browser waits with it (queue socket or
``poll_url``). The sockets themselves are :mod:`sessions.socket`'s and
:mod:`sessions.waiting_room`'s; their handshake guards (seed 000's per-IP upgrade policies,
the account's allowed origins) are checked here, before any session state is read, and a
refusal is the upgrade's HTTP answer (403, 429 with ``Retry-After``). Another account's
session, or one that ended, is 404 like an unknown one.

The account's allowed origins cover what a browser does with the account's credentials here:
its sockets, and a mint sent with an ``Origin`` (a page holding the key). A page of this
server itself (the playground at ``/``) is always allowed: see :func:`check_origin`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

import msgspec
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from api.auth import client_ip, is_own_origin
from api.operations import Operation
from api.personas import context
from api.problems import invalid_input, render
from api.responses import JSON
from api.services import Services
from engine.accounts import Plan
from engine.config import SESSION_FRAME_LIMIT
from engine.errors import (
    Failure,
    NotFound,
    OriginNotAllowed,
    RapportError,
    SessionGone,
)
from engine.ids import UserId, own_id
from engine.personas import Mode, PersonaId
from engine.ratelimit import Policy
from kb.prompts import version_keys
from sessions.capacity import Queued, Ready
from sessions.frames import Budget, QueueUpdate
from sessions.store import Session, token_account
from sessions.waiting_room import SocketUrl


class SessionIn(msgspec.Struct, forbid_unknown_fields=True):
    user_id: UserId
    """Seed 004's user_id, the same end user as the conversation API's."""
    mode: Mode
    persona_id: PersonaId | None = None
    """The persona to talk to; the account's default persona when left out."""


class Minted(msgspec.Struct):
    status: Literal["ready"]
    session_id: str
    token: str
    """Shown once; only its digest is stored."""
    ws_url: str
    """The socket to open, token included: use it as given."""
    expires_at: datetime
    """The first connect's deadline: unused until then, the session ends."""
    mode: Mode
    budget: Budget
    starter_prompts: list[str]
    """Up to three questions picked from the persona's active knowledge (kb.prompts), for
    the widget to offer before the first message; [] when it has none."""


class InLine(msgspec.Struct):
    """202: the deployment is full; the client waits with its ticket (which becomes the
    session's token when a slot is offered)."""

    status: Literal["queued"]
    ticket: str
    position: int
    queue_ws_url: str
    """The queue socket: ``queue.position`` on every change, then ``queue.admitted``."""
    poll_url: str
    """GET: the same events, as JSON; DELETE: leave the line."""
    starter_prompts: list[str]
    """As a ready session's: offered while the visitor waits."""


class SessionView(msgspec.Struct, kw_only=True):
    session_id: str
    user_id: str
    persona_id: str
    mode: Mode
    created_at: datetime
    connected_at: datetime | None
    expires_at: datetime
    """The connect deadline before the first connect, the end of the duration after."""
    budget: Budget


Status = Literal["queued", "ready", "live", "ended"]


class SessionDetail(SessionView, kw_only=True):
    status: Status
    """queued: waiting for a slot; ready: never connected; live: connected once; ended."""
    ended_code: int | None
    """The close code the session ended with."""


class ListedSession(SessionView, kw_only=True):
    status: Literal["queued", "ready", "live"]
    """As in one session's answer; a listed session has not ended."""


class CapacityView(msgspec.Struct, kw_only=True):
    """Who holds the slots now (the dashboard's Live page): the account's and the
    deployment's."""

    max_concurrent_sessions: int
    """The account's plan: its sessions at once (queued ones count)."""
    account_sessions: int
    """The account's sessions holding one of those now: the listed ones."""
    max_sessions: int
    """RAPPORT_MAX_SESSIONS: the deployment's slots, shared by every account."""
    slots_held: int
    """Deployment-wide, every account's (queued sessions hold none)."""
    waiting: int
    """Clients waiting in the deployment's line, every account's."""
    waiting_room_size: int
    """RAPPORT_WAITING_ROOM_SIZE: places in that line."""


class SessionPage(msgspec.Struct):
    items: list[ListedSession]
    total_count: int
    capacity: CapacityView


def budget(session: Session, now: datetime) -> Budget:
    return Budget(session.interactions_left(), session.seconds_left(now))


def status(session: Session) -> Status:
    if session.ended is not None:
        return "ended"
    if session.queued:
        return "queued"
    if session.connected_at is not None:
        return "live"
    return "ready"


def view(session: Session, now: datetime) -> SessionView:
    return SessionView(
        session_id=session.id,
        user_id=session.user_id,
        persona_id=session.persona_id,
        mode=session.mode,
        created_at=session.created_at,
        connected_at=session.connected_at,
        expires_at=session.expires_at(now),
        budget=budget(session, now),
    )


SOCKET_PATH = "/api/sessions/{session_id}/socket"
QUEUE_PATH = "/api/waiting-room/{session_id}"
QUEUE_SOCKET_PATH = "/api/waiting-room/{session_id}/socket"
# Bigger frames close 1009 (by the socket layer at RAPPORT_WS_MAX_SIZE, else here).
FRAME_LIMIT = SESSION_FRAME_LIMIT
# The queue socket only talks; what a client sends it is read and dropped.
QUEUE_FRAME_LIMIT = 4096


def check_origin(plan: Plan, origin: str | None, reached: URL, what: str) -> None:
    """Raise OriginNotAllowed unless ``origin`` may use the account for ``what``: no Origin
    (not a browser), one in the account's allowed origins (any when none are set), or this
    server's own origin, the scheme and Host the request ``reached`` (RFC 6454 §7: the
    playground's page and its sockets, which an operator must not have to list).

    The last cannot be abused: the list protects browsers from other sites' pages, and a
    browser writes both Origin and Host itself, so another site's page never matches. A
    client that forges both is no browser and could as well send no Origin. A DNS-rebound
    name gets a page nothing: it has no key or token of the account but its own."""
    if origin is None or plan.allows_origin(origin) or is_own_origin(origin, reached):
        return
    raise OriginNotAllowed(f"Origin {origin!r} may not {what}.")


async def guarded(websocket: WebSocket, policy: Policy, credential: str) -> bool:
    """The handshake guards of a socket: ``policy`` per client IP (seed 000
    SessionWebSocket, WaitingRoomQueueWs), then the account's allowed origins when the
    browser sent an Origin. Nothing of the session is read first. A refusal answers the
    upgrade itself (403 auth.origin_not_allowed, 429 limits.rate_exceeded with Retry-After
    and scope); False then."""
    services: Services = websocket.state.services
    try:
        await services.rate_limits.enforce(policy, client_ip(websocket.scope))
        origin = websocket.headers.get("origin")
        account_id = token_account(credential)
        if origin is not None and account_id is not None:
            try:
                plan = (await services.accounts.get(account_id)).plan
            except NotFound:
                return True  # the socket refuses the token itself (4001)
            check_origin(plan, origin, websocket.url, "open this account's sockets")
    except RapportError as error:
        await websocket.send_denial_response(render(websocket.scope, error))
        return False
    return True


async def socket(websocket: WebSocket) -> None:
    """The live session's socket (sessions/socket.py): ``ws_url`` as minted."""
    services: Services = websocket.state.services
    if await guarded(
        websocket, services.session_policies.socket, websocket.query_params.get("token", "")
    ):
        await services.socket.serve(websocket)


async def queue_socket(websocket: WebSocket) -> None:
    """A queued client's socket (sessions/waiting_room.py): ``queue_ws_url`` as given."""
    services: Services = websocket.state.services
    ticket = websocket.query_params.get("ticket", "")
    if await guarded(websocket, services.session_policies.queue_socket, ticket):
        await services.queue_socket.serve(websocket, socket_urls(websocket.url))


def socket_urls(reached: URL) -> SocketUrl:
    """How to write a session's ``ws_url`` for a client that reached ``reached``: absolute,
    on the same host, wss:// when it came over https or wss."""
    scheme = "wss" if reached.scheme in ("https", "wss") else "ws"

    def url(session_id: str, token: str) -> str:
        return str(
            reached.replace(
                scheme=scheme,
                path=SOCKET_PATH.format(session_id=session_id),
                query=f"token={quote(token, safe='')}",
            )
        )

    return url


def queue_urls(request: Request, session_id: str, ticket: str) -> tuple[str, str]:
    """The queue socket's URL and the poll URL of a ticket, on the host the caller reached."""
    query = f"ticket={quote(ticket, safe='')}"
    path = QUEUE_PATH.format(session_id=session_id)
    scheme = "wss" if request.url.scheme == "https" else "ws"
    socket_url = request.url.replace(scheme=scheme, path=f"{path}/socket", query=query)
    return str(socket_url), str(request.url.replace(path=path, query=query))


async def mint(request: Request) -> Response:
    services, account_id = context(request)
    try:
        given = msgspec.json.decode(await request.body(), type=SessionIn)
    except msgspec.MsgspecError as exc:
        raise invalid_input(exc) from None
    account = await services.accounts.get(account_id)
    check_origin(account.plan, request.headers.get("origin"), request.url, "mint its sessions")
    persona_id = given.persona_id or account.default_persona_id
    if persona_id is None:
        raise NotFound("The account has no default persona.")
    # The starter prompts' versions come with the persona, in its round trip (kb.prompts).
    persona, versions = await services.personas.get_with(
        account_id, persona_id, version_keys(account_id, persona_id)
    )
    # Seed 000 WaitingRoomQueue: a mint may join the line, so every mint counts (counted
    # before, not after, so the window stays exact).
    await services.rate_limits.enforce(services.session_policies.queue, account_id, given.user_id)
    # Before the slot is taken: an index that fails to answer fails the mint, holding nothing.
    starters = await services.starters.at(account_id, persona_id, versions)
    session, token, place = await services.sessions.mint(
        account_id,
        given.user_id,
        persona,
        given.mode,
        account_cap=account.plan.max_concurrent_sessions,
        # None for a browser session: no key minted it, so no key's revocation ends it.
        key_slot=request.state.principal.slot,
    )
    match place:
        case Queued(position=position):
            queue_ws_url, poll_url = queue_urls(request, session.id, token)
            line = InLine("queued", token, position, queue_ws_url, poll_url, starters)
            return JSON(line, status_code=202)
        case Ready():
            now = datetime.now(UTC)
            minted = Minted(
                status="ready",
                session_id=session.id,
                token=token,
                ws_url=socket_urls(request.url)(session.id, token),
                expires_at=session.expires_at(now),
                mode=session.mode,
                budget=budget(session, now),
                starter_prompts=starters,
            )
            return JSON(minted, status_code=201)


async def poll(request: Request) -> Response:
    services: Services = request.state.services
    ticket = request.query_params.get("ticket", "")
    session = await services.waiting_room.ticket(ticket, request.path_params["session_id"])
    update = await services.waiting_room.standing(session, ticket, socket_urls(request.url))
    return JSON(update)


async def leave(request: Request) -> Response:
    services: Services = request.state.services
    ticket = request.query_params.get("ticket", "")
    session = await services.waiting_room.ticket(ticket, request.path_params["session_id"])
    await services.rate_limits.enforce(
        services.session_policies.queue, session.account_id, session.user_id
    )
    await services.waiting_room.leave(session)
    return Response(status_code=204)


async def list_sessions(request: Request) -> Response:
    services, account_id = context(request)
    sessions = await services.sessions.live(account_id)
    account = await services.accounts.get(account_id)
    held, waiting = await services.capacity.counts()
    now = datetime.now(UTC)
    items = [
        ListedSession(**msgspec.structs.asdict(view(s, now)), status=status(s)) for s in sessions
    ]
    capacity = CapacityView(
        max_concurrent_sessions=account.plan.max_concurrent_sessions,
        account_sessions=len(sessions),
        max_sessions=services.capacity.max_sessions,
        slots_held=held,
        waiting=waiting,
        waiting_room_size=services.capacity.room_size,
    )
    return JSON(SessionPage(items, len(sessions), capacity))


async def found(services: Services, account_id: str, session_id: str) -> Session:
    """The session, or seed 000's 404 (``session.not_found`` is the socket's close reason)."""
    try:
        return await services.sessions.get(account_id, own_id(session_id, "session"))
    except SessionGone:
        raise NotFound(f"No session {session_id!r}.") from None


async def get_session(request: Request) -> Response:
    services, account_id = context(request)
    session = await found(services, account_id, request.path_params["session_id"])
    now = datetime.now(UTC)
    shown = view(session, now)
    detail = SessionDetail(
        **msgspec.structs.asdict(shown), status=status(session), ended_code=session.ended
    )
    return JSON(detail)


async def end_session(request: Request) -> Response:
    services, account_id = context(request)
    session_id = request.path_params["session_id"]
    session = await found(services, account_id, session_id)
    # Ended already, by a client or a lapsed window: the first end stands.
    if session.ended is not None or not await services.sessions.end(account_id, session_id, 1000):
        raise NotFound(f"No session {session_id!r}.")
    return Response(status_code=204)


ONE = "/api/sessions/{session_id}"
OPERATIONS = [
    Operation("POST", "/api/sessions", mint,
              "Mint a live session (201) for an end user with a persona (the default when "
              "left out) in a mode it allows: its token, the socket's ws_url, its budget, "
              "starter_prompts (up to three questions from the persona's active knowledge, "
              "also in a 202). Outside the persona's opening hours: 409 "
              "limits.session_time_limit. At the "
              "account's max_concurrent_sessions: 429 limits.concurrent_session. The "
              "deployment full: 202 with a ticket, a place in line, queue_ws_url and "
              "poll_url; the waiting room full too: 503 limits.waiting_room_full. Sent "
              "with a browser Origin the account does not allow: 403 "
              "auth.origin_not_allowed.",
              "sessions", Minted, status=201, request=SessionIn,
              failures=(Failure.VALIDATION_FAILED, Failure.SESSION_TIME_LIMIT,
                        Failure.CONCURRENT_SESSION, Failure.WAITING_ROOM_FULL,
                        Failure.RATE_LIMITED, Failure.ORIGIN_NOT_ALLOWED)),
    Operation("GET", "/api/sessions", list_sessions,
              "The account's sessions that have not ended, oldest first, each queued, ready "
              "or live; and capacity: the account's max_concurrent_sessions and its sessions "
              "now, the deployment's slots (RAPPORT_MAX_SESSIONS) and those held, clients "
              "waiting and the waiting room's size.", "sessions", SessionPage),
    Operation("GET", ONE, get_session,
              "One session: ready (never connected), live or ended (with its close code).",
              "sessions", SessionDetail),
    Operation("DELETE", ONE, end_session,
              "End a session (204); its socket closes 1000. Ended already: 404.", "sessions",
              status=204),
    Operation("GET", SOCKET_PATH, socket,
              "The live session (WebSocket): open ws_url as given; add last_seq=N to resume. "
              "JSON frames tagged by type (README, 'The socket'). Closes: 1000 ended, 1008 "
              "malformed or flooding frames, 1009 frame too big, 4001 bad, expired or "
              "foreign token (whether or not the session exists) or one whose API key was "
              "disabled or regenerated, 4004 ended session, 4005 interaction budget spent, "
              "4006 duration spent, 4009 replaced by a newer connection. Refused upgrades: "
              "403 auth.origin_not_allowed, 429 limits.rate_exceeded (SessionWebSocket).",
              "sessions", status=101, body_limit=FRAME_LIMIT, websocket=True),
    Operation("GET", QUEUE_PATH, poll,
              "Where a queued session stands (poll_url as given, ticket included): "
              "queue.position {position, estimated_wait_s}, or queue.admitted {session_id, "
              "token, ws_url, expires_at} once a slot is offered. Polling keeps the place; "
              "a place lost (idle, offer not taken, left): 404.",
              "sessions", QueueUpdate, failures=(Failure.SESSION_TOKEN_INVALID,)),
    Operation("DELETE", QUEUE_PATH, leave,
              "Leave the waiting room (204), or give back a slot offered and not yet taken.",
              "sessions", status=204,
              failures=(Failure.SESSION_TOKEN_INVALID, Failure.RATE_LIMITED)),
    Operation("GET", QUEUE_SOCKET_PATH, queue_socket,
              "A queued session's socket (queue_ws_url as given): queue.position on every "
              "change, then queue.admitted and a close 1000. Closes: 4001 bad ticket (whether "
              "or not the place exists), 4004 "
              "place lost. Refused upgrades: 403 auth.origin_not_allowed, 429 "
              "limits.rate_exceeded (WaitingRoomQueueWs).",
              "sessions", status=101, body_limit=QUEUE_FRAME_LIMIT, websocket=True),
]  # fmt: skip
