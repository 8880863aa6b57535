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

Without a key, the ``__Host-rapport_session`` cookie of a dashboard sign-in authenticates
the request as its user (:mod:`engine.signin`), on the same routes: writes then need the
sign-in's CSRF token and a same-origin request (:func:`signed_in`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import URL, Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import V1_PREFIX, refuse
from engine.accounts import normalise_origin
from engine.apikeys import KeyStore, Principal
from engine.errors import AuthError, Forbidden, MissingApiKey, RapportError, ValidationFailed
from engine.signin import COOKIE
from engine.state import redis_boundary

if TYPE_CHECKING:
    from api.services import Services

PROTECTED_PREFIX = "/api/"
TICKET_PREFIX = "/api/waiting-room/"
"""A queued client's own routes: its ticket, in the URL, is its credential (a browser waits
in line, and must never hold the key)."""


PUBLIC_PATHS = frozenset(("/api/auth/login", "/api/auth/set-password"))
"""Dashboard sign-in and set-password: the body carries the credential (api/signin.py)."""
VIEWER_WRITES = frozenset(("/api/auth/logout", "/api/auth/logout-everywhere"))
"""The only writes a viewer may make: ending its own sign-ins."""
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


def needs_key(path: str) -> bool:
    return (
        path.startswith(PROTECTED_PREFIX)
        and not path.startswith(TICKET_PREFIX)
        and path not in PUBLIC_PATHS
    )


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


def is_own_origin(origin: str, reached: URL) -> bool:
    """Whether ``origin`` is this server's own: the scheme and Host the request ``reached``
    (RFC 6454 §7). A browser writes both itself, so another site's page never matches."""
    scheme = "https" if reached.scheme in ("https", "wss") else "http"
    try:
        return normalise_origin(origin) == normalise_origin(f"{scheme}://{reached.netloc}")
    except ValidationFailed:
        return False  # an Origin or Host that is no origin (``null``) matches nothing


def same_origin(headers: Headers, scope: Scope) -> bool:
    """A request a page of this server's own origin sent: its Origin is ours, or, with no
    Origin, Fetch Metadata says ``Sec-Fetch-Site: same-origin`` (OWASP CSRF cheat sheet)."""
    origin = headers.get("origin")
    if origin is not None:
        return is_own_origin(origin, URL(scope=scope))
    return headers.get("sec-fetch-site") == "same-origin"


def session_cookie(headers: Headers) -> str | None:
    return cookie_parser(headers.get("cookie", "")).get(COOKIE) or None


async def signed_in(
    services: Services, scope: Scope, headers: Headers, cookie_id: str
) -> Principal:
    """The dashboard user a session cookie names. A cookie is sent by the browser whoever
    asks, so every write it authenticates must prove it came from our own page: the
    sign-in's CSRF token in ``X-CSRF-Token`` (a synchronizer token, which another site's
    page cannot read) and a same-origin request (seed 000; ASVS V3.5.1-3). A viewer writes
    nothing but its own sign-out. Both refusals are 403 auth.forbidden."""
    signin = await services.signins.get(cookie_id)
    if scope["method"] not in SAFE_METHODS:
        if not signin.csrf_matches(headers.get("x-csrf-token")) or not same_origin(headers, scope):
            raise Forbidden(
                "A write with a dashboard session needs its X-CSRF-Token and a same-origin request."
            )
        if signin.role == "viewer" and scope["path"] not in VIEWER_WRITES:
            raise Forbidden("A viewer may read, not change anything.")
    if scope["path"].startswith(V1_PREFIX):
        # Seed 004's per-IP window, which a key's lookup counts (authenticate_counting_ip).
        await services.rate_limits.hit_ip(client_ip(scope))
    scope["state"]["signin"] = signin
    return signin.principal()


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
    services.keys.seen(record_key, record)  # "last used": in the background, no round trip
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
            headers = Headers(scope=scope)
            key = presented_key(headers)
            if key is None:
                # No key: a dashboard user's browser session, if its cookie came. A request
                # with a key is the key's, cookie or not.
                cookie_id = session_cookie(headers)
                if cookie_id is None:
                    raise MissingApiKey()
                principal = await signed_in(services, scope, headers, cookie_id)
            elif scope["path"].startswith(V1_PREFIX):
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
