"""Refuse a body whose declared size is over the limit before reading a byte of it.

A ``Content-Length`` above the route's limit is answered 413 at once, before routing and
authentication, so a 50 MB upload costs the server nothing but its headers. Bodies sent
without a length (chunked) are counted while they are read by Starlette's own
``max_body_size`` check, which raises the same 413 as soon as the count passes the limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from starlette.datastructures import Headers
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import render
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # uvicorn's parser has already refused a Content-Length that is not 1*DIGIT.
            declared = Headers(scope=scope).get("content-length")
            template = template_of(self.routes, scope) if declared is not None else None
            limit, too_large = self.per_template.get(template or "", (self.default, BodyTooLarge))
            if declared is not None and int(declared) > limit:
                error = too_large(f"The request body may be at most {limit} bytes here.")
                await render(scope, error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
