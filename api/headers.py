"""Headers every HTTP answer carries, and the ``Content-Type`` a JSON route accepts.

:class:`SecurityHeaders` adds ``X-Content-Type-Options: nosniff`` to every response, so a
browser never runs an answer (a problem document echoing a field, a tenant's media file) as
something other than its declared type; and ``Cache-Control: no-store`` to every response
that sets no cache policy of its own, so no browser or shared cache keeps a tenant's data,
a key-bearing answer or a health reading (RFC 9111 §5.2.2.5). The pages of :mod:`api.pages`
keep their own ``no-cache``. Sockets pass through untouched.

:class:`JsonBodies` answers 415 (RFC 9110 §15.5.16) when a route that reads a JSON body is
sent one declared as something else: ``application/x-www-form-urlencoded``, ``multipart/*``
and ``text/plain`` are what an HTML form can send from any page without a preflight. Accepted:
``application/json`` and any ``application/*+json``, with parameters (``charset``). A body
sent without ``Content-Type`` is read as JSON: it declares nothing else, and the tests' and
scripts' raw bodies are sent that way (README, "Errors").
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import refuse
from engine.errors import UnsupportedMediaType


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("cache-control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def is_json(media_type: str) -> bool:
    """``application/json`` or a structured ``+json`` type (RFC 6839 §3.1)."""
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class JsonBodies:
    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        json_routes: Mapping[tuple[str, str], Collection[str]],
    ) -> None:
        """``json_routes``: (method, path template) of each route that reads a JSON body,
        to the other media types it reads itself (seed 002's NDJSON stream)."""
        self.app = app
        self.routes = routes
        self.json_routes = json_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-type")
            if declared is not None:
                # RFC 9110 §8.3.1: the type and subtype are case-insensitive.
                media_type = declared.partition(";")[0].strip().lower()
                # Only a body declared as something else needs its route looked up.
                if not is_json(media_type) and self._refused(scope, media_type):
                    shown = media_type or "an empty Content-Type"
                    error = UnsupportedMediaType(
                        f"This route reads JSON, not {shown[:100]}: send "
                        "Content-Type: application/json."
                    )
                    await refuse(scope, receive, send, error)
                    return
        await self.app(scope, receive, send)

    def _refused(self, scope: Scope, media_type: str) -> bool:
        # The route the router will dispatch to: its path and the method both match (a
        # PATCH of /api/personas/default is the {persona_id} route's).
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                others = self.json_routes.get((scope["method"], getattr(route, "path", "")))
                return others is not None and media_type not in others
        return False
