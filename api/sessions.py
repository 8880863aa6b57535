"""``/api/sessions``: mint, list, show and end live sessions (DESIGN.md, "Live sessions").

Seed 000 owns sessions, so these routes are in the ``/api/`` family: problem details and its
codes. The business's backend mints a session with its API key and hands the ``ws_url`` (which
carries the session's token) to the browser, which cannot send the key on a socket. The
socket itself (``/api/sessions/{session_id}/socket``) is :mod:`sessions.socket`'s. Another
account's session, or one that ended, is 404 like an unknown one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import quote

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from api.operations import Operation
from api.personas import context
from api.problems import invalid_input
from api.responses import JSON
from api.services import Services
from engine.config import SESSION_FRAME_LIMIT
from engine.errors import Failure, NotFound, SessionGone
from engine.personas import Mode
from sessions.frames import Budget
from sessions.store import Session

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
"""Seed 004's user_id: 1..128, the same end user as the conversation API's."""
# Rapport's ids are letters, digits, '-' and '_'; this keeps anything else out of Redis keys.
PersonaId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class SessionIn(msgspec.Struct, forbid_unknown_fields=True):
    user_id: UserId
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


class SessionDetail(SessionView, kw_only=True):
    status: Literal["ready", "live", "ended"]
    """ready: never connected; live: connected at least once; ended."""
    ended_code: int | None
    """The close code the session ended with."""


class SessionPage(msgspec.Struct):
    items: list[SessionView]
    total_count: int


def budget(session: Session, now: datetime) -> Budget:
    return Budget(session.interactions_left(), session.seconds_left(now))


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
# Bigger frames close 1009 (by the socket layer at RAPPORT_WS_MAX_SIZE, else here).
FRAME_LIMIT = SESSION_FRAME_LIMIT


async def socket(websocket: WebSocket) -> None:
    """The live session's socket (sessions/socket.py): ``ws_url`` as minted."""
    services: Services = websocket.state.services
    await services.socket.serve(websocket)


def socket_url(request: Request, session_id: str, token: str) -> str:
    """Absolute, on the host the caller reached: wss:// when it came over https."""
    scheme = "wss" if request.url.scheme == "https" else "ws"
    url = request.url.replace(
        scheme=scheme,
        path=SOCKET_PATH.format(session_id=session_id),
        query=f"token={quote(token, safe='')}",
    )
    return str(url)


async def mint(request: Request) -> Response:
    services, account_id = context(request)
    try:
        given = msgspec.json.decode(await request.body(), type=SessionIn)
    except msgspec.MsgspecError as exc:
        raise invalid_input(exc) from None
    persona_id = given.persona_id
    if persona_id is None:
        persona_id = (await services.accounts.get(account_id)).default_persona_id
        if persona_id is None:
            raise NotFound("The account has no default persona.")
    persona = await services.personas.get(account_id, persona_id)
    session, token = await services.sessions.mint(account_id, given.user_id, persona, given.mode)
    now = datetime.now(UTC)
    minted = Minted(
        status="ready",
        session_id=session.id,
        token=token,
        ws_url=socket_url(request, session.id, token),
        expires_at=session.expires_at(now),
        mode=session.mode,
        budget=budget(session, now),
    )
    return JSON(minted, status_code=201)


async def list_sessions(request: Request) -> Response:
    services, account_id = context(request)
    sessions = await services.sessions.live(account_id)
    now = datetime.now(UTC)
    return JSON(SessionPage([view(s, now) for s in sessions], len(sessions)))


async def found(services: Services, account_id: str, session_id: str) -> Session:
    """The session, or seed 000's 404 (``session.not_found`` is the socket's close reason)."""
    try:
        return await services.sessions.get(account_id, session_id)
    except SessionGone:
        raise NotFound(f"No session {session_id!r}.") from None


async def get_session(request: Request) -> Response:
    services, account_id = context(request)
    session = await found(services, account_id, request.path_params["session_id"])
    now = datetime.now(UTC)
    shown = view(session, now)
    status: Literal["ready", "live", "ended"] = "ready"
    if session.ended is not None:
        status = "ended"
    elif session.connected_at is not None:
        status = "live"
    detail = SessionDetail(**msgspec.structs.asdict(shown), status=status, ended_code=session.ended)
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
              "left out) in a mode it allows: its token, the socket's ws_url, its budget. "
              "Outside the persona's opening hours: 409 limits.session_time_limit.",
              "sessions", Minted, status=201, request=SessionIn,
              failures=(Failure.VALIDATION_FAILED, Failure.SESSION_TIME_LIMIT)),
    Operation("GET", "/api/sessions", list_sessions,
              "The account's sessions that have not ended, oldest first.", "sessions",
              SessionPage),
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
              "foreign token, 4004 unknown or ended session, 4005 interaction budget spent, "
              "4006 duration spent, 4009 replaced by a newer connection.",
              "sessions", status=101, body_limit=FRAME_LIMIT, websocket=True),
]  # fmt: skip
