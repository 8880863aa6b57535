"""Refuse a body whose declared size is over the limit before reading a byte of it, and a
socket message over the same limit.

A ``Content-Length`` above the route's limit is answered 413 at once, before routing and
authentication, so a 50 MB upload costs the server nothing but its headers. Bodies sent
without a length (chunked) are counted while they are read by Starlette's own
``max_body_size`` check, which raises the same 413 as soon as the count passes the limit.

On a WebSocket the route's limit applies to each incoming message (text counted in its UTF-8
bytes, as sent). A message over it is never handed to the app: the socket is closed with the
close code of the route's too-large row (1009, "message too big", RFC 6455 §7.4.1) and the
app reads ``websocket.disconnect`` instead, as if the client had left; whatever it sends after
that is dropped. uvicorn has buffered the whole message by then, up to its ``ws_max_size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from starlette.datastructures import Headers
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
            # uvicorn's parser has already refused a Content-Length that is not 1*DIGIT.
            declared = Headers(scope=scope).get("content-length")
            # Under every route's limit, the route need not be looked up (most requests).
            if declared is not None and int(declared) > self.smallest:
                limit, too_large = self._limit(scope)
                if int(declared) > limit:
                    error = too_large(f"The request body may be at most {limit} bytes here.")
                    await refuse(scope, receive, send, error)
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
