"""API key authentication for every path under ``/api/``.

The key comes from ``X-Api-Key`` or ``Authorization: Bearer`` (seeds 000 and 004); when
both are sent, ``X-Api-Key`` wins. Authentication runs before routing, so an unknown path
under ``/api/`` tells an anonymous caller nothing. The principal lands in the request state.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import render
from engine.apikeys import KeyStore, Principal
from engine.errors import MissingApiKey, RapportError

PROTECTED_PREFIX = "/api/"


def presented_key(headers: Headers) -> str | None:
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    # RFC 9110 §11.1: the auth scheme is case-insensitive.
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


class ApiKeyAuth:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        state = scope["state"]
        keys: KeyStore = state["services"].keys
        try:
            key = presented_key(Headers(scope=scope))
            if key is None:
                raise MissingApiKey()
            principal: Principal = await keys.authenticate(key)
        except RapportError as error:
            await render(scope, error)(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)
