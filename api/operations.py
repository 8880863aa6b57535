"""One description per endpoint: the router and the OpenAPI document are both built from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from api.auth import needs_key
from engine.errors import BodyTooLarge, Failure, RapportError

Endpoint = Callable[[Request], Awaitable[Response]] | Callable[[WebSocket], Awaitable[None]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    endpoint: Endpoint
    summary: str
    tag: str
    response: type | None = None
    """The msgspec type of a 2xx JSON body; None for non-JSON bodies."""
    status: int = 200
    request: type | None = None
    """The msgspec type of a JSON request body, if the operation takes one."""
    other_bodies: tuple[str, ...] = ()
    """Media types besides JSON that the operation reads itself (seed 002's NDJSON stream);
    any other declared type is 415 (:class:`api.headers.JsonBodies`)."""
    media_type: str = "application/json"
    failures: tuple[Failure, ...] = ()
    """Failures this operation itself may answer, beyond the ones every route may."""
    body_limit: int | None = None
    """Largest request body; None takes RAPPORT_MAX_BODY_BYTES."""
    too_large: type[RapportError] = BodyTooLarge
    """What a body over the limit is answered with (uploads say upload.file_too_large)."""
    websocket: bool = False
    """A WebSocket (an upgraded GET, status 101): ``body_limit`` bounds each frame, and its
    failures are close codes, told in ``summary``."""

    @property
    def authenticated(self) -> bool:
        # A socket presents its own token in the URL: a browser cannot send the key; nor
        # does a queued client, which holds a ticket.
        return needs_key(self.path) and not self.websocket
