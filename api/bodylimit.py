"""Refuse a body whose declared size is over the limit before reading a byte of it, and a
socket message over the same limit.

A ``Content-Length`` above the route's limit is answered 413 at once, before routing and
authentication, so a 50 MB upload costs the server nothing but its headers. Bodies sent
without a length (chunked) are counted while they are read by Starlette's own
``max_body_size`` check, which raises the same 413 as soon as the count passes the limit.
A route whose limit depends on the body's type (``stream-pages``: a JSON batch is bounded,
an NDJSON stream is read a line at a time and is not) takes the highest, and reads the
bounded kind with :func:`read_within`, the same check at that kind's limit.

On a WebSocket the route's limit applies to each incoming message (text counted in its UTF-8
bytes, as sent). A message over it is never handed to the app: the socket is closed with the
close code of the route's too-large row (1009, "message too big", RFC 6455 §7.4.1) and the
app reads ``websocket.disconnect`` instead, as if the client had left; whatever it sends after
that is dropped. uvicorn has buffered the whole message by then, up to its ``ws_max_size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.requests import Request, empty_send
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import close_message, refuse
from api.routes import template_of
from engine.errors import BodyTooLarge, RapportError


class DeclaredBodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        default: int,
        per_template: Mapping[str, tuple[int, type[RapportError]]],
    ) -> None:
        self.app = app
        self.routes = routes
        self.default = default
        self.per_template = dict(per_template)
        self.smallest = min([default, *(limit for limit, _ in self.per_template.values())])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Under every route's limit, the route need not be looked up (most requests).
            if over_declared(scope, self.smallest):
                limit, too_large = self._limit(scope)
                if over_declared(scope, limit):
                    await refuse(scope, receive, send, refusal(limit, too_large))
                    return
        elif scope["type"] == "websocket":
            await self._socket(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _limit(self, scope: Scope) -> tuple[int, type[RapportError]]:
        template = template_of(self.routes, scope)
        return self.per_template.get(template or "", (self.default, BodyTooLarge))

    async def _socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit, too_large = self._limit(scope)
        closed = False

        async def bounded_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            text = message.get("text")
            size = len(text.encode()) if text is not None else len(message.get("bytes") or b"")
            if size <= limit:
                return message
            error = too_large(f"A message may be at most {limit} bytes here.")
            closing = close_message(scope, error)
            await send(closing)
            closed = True
            return {**closing, "type": "websocket.disconnect"}

        async def send_until_closed(message: Message) -> None:
            if not closed:
                await send(message)

        await self.app(scope, bounded_receive, send_until_closed)


def over_declared(scope: Scope, limit: int) -> bool:
    """Whether the request declares a body longer than ``limit``."""
    # uvicorn's parser has already refused a Content-Length that is not 1*DIGIT.
    declared = Headers(scope=scope).get("content-length")
    return declared is not None and int(declared) > limit


def refusal(limit: int, too_large: type[RapportError]) -> RapportError:
    return too_large(f"The request body may be at most {limit} bytes here.")


async def read_within(request: Request, limit: int) -> bytes:
    """The whole body of ``request``, under ``limit`` rather than its route's: a declared
    length over it is a 413 before a byte is read (as :class:`DeclaredBodyLimit` answers
    one over the route's), and a chunked body is one as soon as the count passes it, by
    Starlette's own check, as a route's ``max_body_size`` applies it (a nested limit
    replaces the outer one for the rest of the request)."""
    if over_declared(request.scope, limit):
        # Raised before the count's limit is lowered: with it lowered, Starlette would
        # answer a declared length over it with its own plain-text 413 instead of this.
        raise refusal(limit, BodyTooLarge)
    body = b""

    async def read(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal body
        body = await Request(scope, receive).body()

    # Nested in the app's own limit (Starlette(max_body_size=...)), it sends nothing itself.
    await RequestBodyLimitMiddleware(read, limit)(request.scope, request.receive, empty_send)
    return body
