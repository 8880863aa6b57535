"""The outermost middleware: request ids, metrics and one access log line per request.

It sits outside Starlette's own error middleware, so even a 500 carries ``X-Request-Id`` and
is counted; the exception is logged here with its trace and goes no further.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import HttpMetrics
from api.routes import template_of

log = logging.getLogger("rapport.http")

REQUEST_ID_HEADER = "x-request-id"
# An incoming id is kept only if it is short and plain: it is echoed into logs and bodies.
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
UNMATCHED = "<unmatched>"


def new_request_id() -> str:
    return secrets.token_hex(8)


class Telemetry:
    def __init__(self, app: ASGIApp, routes: list[BaseRoute], metrics: HttpMetrics) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = incoming if SANE_REQUEST_ID.match(incoming) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = started  # seed 004's total_latency_ms counts from here
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
        client = scope.get("client")
        log.log(
            logging.ERROR if error else logging.INFO,
            "request failed" if error else "request",
            exc_info=error,
            extra={
                "request_id": request_id,
                "method": scope["method"],
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
