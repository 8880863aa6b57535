"""The outermost middleware: request ids, metrics and one access log line per request or
socket.

It sits outside Starlette's own error middleware, so even a 500 carries ``X-Request-Id`` and
is counted; the exception is logged here with its trace and goes no further.

A WebSocket gets the same request id (kept from ``X-Request-Id`` by the same rule, sent back
on the 101 response, kept in the scope's state), is counted once it ends in the socket
families of :mod:`api.metrics` (status 101, a close code of ours, or the HTTP status of a
refused handshake) and logs one line then, whose ``latency_ms`` is the socket's lifetime and
whose ``method`` is GET, the method of every opening handshake (RFC 6455 §4.1). Starlette's
error middleware passes a socket's exception through, so it is answered here: 1011 (the
table's close code for a bug), after accepting if the app had not.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.logs import UPGRADE_REFUSED
from api.metrics import HttpMetrics
from api.problems import close_message, refuse
from api.routes import template_of
from engine.errors import InternalError

log = logging.getLogger("rapport.http")

REQUEST_ID_HEADER = "x-request-id"
# An incoming id is kept only if it is short and plain: it is echoed into logs and bodies.
SANE_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._:\-]{1,128}\Z")
UNMATCHED = "<unmatched>"
# Status of a socket accepted and ended by the client (RFC 9110 §15.2.2, Switching Protocols).
ACCEPTED = 101
# What uvicorn answers to a socket closed before it was accepted (ASGI websocket.close).
REFUSED = 403
# Closes the server's socket layer makes itself on a peer's fault, the app only hearing of
# them as a disconnect (RFC 6455 §7.4.1): protocol error, bad data, a message too big, and
# 1011, which websockets sends when a ping goes unanswered. Counted as those codes, not as
# an accepted socket the client ended (issue 26: a 1009 read as 101).
SERVER_CLOSES = frozenset({1002, 1007, 1009, 1011})


def new_request_id() -> str:
    return secrets.token_hex(8)


class Telemetry:
    def __init__(self, app: ASGIApp, routes: list[BaseRoute], metrics: HttpMetrics) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = incoming if SANE_REQUEST_ID.match(incoming) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = started  # seed 004's total_latency_ms counts from here
        if scope["type"] == "http":
            await self._request(scope, receive, send, request_id, started)
        else:
            await self._socket(scope, receive, send, request_id, started)

    async def _request(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, started: float
    ) -> None:
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        error: Exception | None = None
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Starlette's ServerErrorMiddleware has already answered 500 in our shape.
            error = exc
        seconds = time.perf_counter() - started
        route = self._route_template(scope)
        self.metrics.observe(route, scope["method"], status, seconds)
        self._log(scope, request_id, scope["method"], route, status, seconds, error)

    async def _socket(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, started: float
    ) -> None:
        accepted = ended = False
        status = 500  # what uvicorn answers when the app ends without a handshake
        id_header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal accepted, ended, status
            kind = message["type"]
            if kind == "websocket.accept":
                accepted = True
                status = ACCEPTED
                message = {**message, "headers": [*message.get("headers", []), id_header]}
            elif kind == "websocket.close":
                ended = True
                status = message.get("code", 1000) if accepted else REFUSED
            elif kind == "websocket.http.response.start":
                # The ASGI "websocket.http.response" extension: a refusal with a body.
                ended = True
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), id_header]}
                # uvicorn, in this same task, then takes the refusal for a missing handshake.
                UPGRADE_REFUSED.set(True)
            await send(message)

        async def receive_watching() -> Message:
            nonlocal status
            message = await receive()
            if (
                message["type"] == "websocket.disconnect"
                and accepted
                and not ended
                and message.get("code") in SERVER_CLOSES
            ):
                status = message["code"]
            return message

        error: Exception | None = None
        try:
            await self.app(scope, receive_watching, send_with_id)
        except Exception as exc:
            error = exc
            # A peer already gone cannot be told (uvicorn's ClientDisconnected is an OSError).
            with contextlib.suppress(OSError):
                if accepted and not ended:
                    await send_with_id(close_message(scope, InternalError()))
                elif not ended:
                    await refuse(scope, receive, send_with_id, InternalError())
        seconds = time.perf_counter() - started
        route = self._route_template(scope)
        self.metrics.observe_socket(route, status, seconds)
        self._log(scope, request_id, "GET", route, status, seconds, error)

    def _log(
        self,
        scope: Scope,
        request_id: str,
        method: str,
        route: str,
        status: int,
        seconds: float,
        error: Exception | None,
    ) -> None:
        level = logging.ERROR if error else logging.INFO
        if not log.isEnabledFor(level):
            return  # a busy server at RAPPORT_LOG_LEVEL=warning builds no line it drops
        client = scope.get("client")
        kind = "request" if scope["type"] == "http" else "websocket"
        log.log(
            level,
            f"{kind} failed" if error else kind,
            exc_info=error,
            extra={
                "request_id": request_id,
                "method": method,
                "route": route,
                "path": scope["path"],
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
                "client": client[0] if client else None,
            },
        )

    def _route_template(self, scope: Scope) -> str:
        # Also for requests answered before routing (auth, body limit).
        return template_of(self.routes, scope) or UNMATCHED
