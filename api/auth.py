"""API key authentication for every path under ``/api/``.

The key comes from ``X-Api-Key`` or ``Authorization: Bearer`` (seeds 000 and 004); when
both are sent, ``X-Api-Key`` wins. Authentication runs before routing, so an unknown path
under ``/api/`` tells an anonymous caller nothing. The principal lands in the request state.

Only requests need a key here. A browser cannot set headers on a WebSocket (the constructor
takes a URL and subprotocols, nothing else), and a key in a URL would land in proxy logs and
browser history; so a socket presents its own short-lived session token, minted by the
business's backend with the key (``POST /api/sessions``), and its route checks that token.
Upgrades still pass the request id, IP rate limits and message limits of the middleware
around this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import V1_PREFIX, refuse
from engine.apikeys import KeyStore, Principal
from engine.errors import AuthError, MissingApiKey, RapportError
from engine.state import redis_boundary

if TYPE_CHECKING:
    from api.services import Services

PROTECTED_PREFIX = "/api/"
TICKET_PREFIX = "/api/waiting-room/"
"""A queued client's own routes: its ticket, in the URL, is its credential (a browser waits
in line, and must never hold the key)."""


def needs_key(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIX) and not path.startswith(TICKET_PREFIX)


def presented_key(headers: Headers) -> str | None:
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    return bearer_token(headers)


def bearer_token(headers: Headers) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    # RFC 9110 §11.1: the auth scheme is case-insensitive.
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


@redis_boundary
async def authenticate_counting_ip(services: Services, key: str, ip: str) -> Principal:
    """Look the key up and count seed 004's per-IP window in one round trip: with the
    turn's own two (:mod:`engine.turn_store`), a conversation turn is three in all. The
    IP is counted whether or not the key is good, so guessing keys spends the window too;
    a bad key is still answered 401 first."""
    record_key = KeyStore.record_key(key)
    async with services.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(record_key)
        services.rate_limits.queue_ip(pipe, ip)
        record, window = await pipe.execute(raise_on_error=False)
    if isinstance(record, Exception):
        raise record
    principal = KeyStore.principal(key, record)
    await services.rate_limits.ip_answered(window, ip)
    return principal


async def failed(services: Services, scope: Scope, error: AuthError) -> RapportError:
    """What a failed authentication outside ``/api/v1/`` is answered: it spends its IP's
    ``Global`` window, as it would have in :mod:`api.ratelimits` had it passed, so a
    key-guessing flood gets 429 once the window is spent (issue 21); until then, the 401.
    Under ``/api/v1/`` the key lookup counts the IP itself."""
    try:
        await services.rate_limits.enforce(services.api_policies.global_ip, client_ip(scope))
    except RapportError as limited:  # 429, or 503 with the limiter's Redis down
        return limited
    return error


class ApiKeyAuth:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_key(scope["path"]):
            await self.app(scope, receive, send)
            return
        state = scope["state"]
        services = state["services"]
        try:
            key = presented_key(Headers(scope=scope))
            if key is None:
                raise MissingApiKey()
            if scope["path"].startswith(V1_PREFIX):
                principal = await authenticate_counting_ip(services, key, client_ip(scope))
            else:
                principal = await services.keys.authenticate(key)
        except AuthError as error:
            if scope["path"].startswith(V1_PREFIX):
                await refuse(scope, receive, send, error)
            else:
                await refuse(scope, receive, send, await failed(services, scope, error))
            return
        except RapportError as error:
            await refuse(scope, receive, send, error)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)
