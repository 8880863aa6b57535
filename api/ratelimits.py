"""Rate limits: seed 004's per-key and per-IP limits on every ``/api/v1/`` route (with
RateLimit-* headers), and seed 000's policies on the rest of ``/api/``.

WebSocket upgrades are counted too, and refused through :func:`api.problems.refuse`:
accepted, then closed with the table's close code (1008 for a rate limit, 1011 with Redis
down). Only the per-IP limits apply to them: seed 000's ``Global`` under ``/api/`` and seed
004's per-IP limit under ``/api/v1/``, in the same windows as requests. The per-key and
per-account limits need a principal, and a socket has none at this point: browsers cannot
set headers on a WebSocket, so socket routes authenticate with their own session token
(see :mod:`api.auth`)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import PROTECTED_PREFIX, client_ip, needs_key
from api.problems import V1_PREFIX, refuse
from engine.apikeys import Principal
from engine.errors import RapportError
from engine.ratelimit import RateLimits

MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UPLOAD_PATHS = ("/api/knowledge/files", "/api/knowledge/docs")
PAGE_WRITES = frozenset(
    ("/api/kb/store-pages", "/api/kb/stream-pages", "/api/kb/training-data", "/api/kb/review-data")
)
# A turn counts its API key's window itself, in the turn's opening round trip
# (engine.turn_runner); counted here as well, every turn would spend two hits.
TURN_PATH = "/api/v1/conversation"


def is_upload(method: str, path: str) -> bool:
    """Document uploads: the file endpoint, both document upserts (PUT), and seed 002's
    writes of pages, training data and articles for review."""
    if path == UPLOAD_PATHS[0]:
        return method == "POST"
    if path in PAGE_WRITES:
        return method in ("POST", "PUT")
    return method == "PUT" and path.startswith(UPLOAD_PATHS[1])


# Seed 002's voice samples and videos, which go to the default persona's media.
CLONE_UPLOAD_PATHS = ("/api/admin/add_voice", "/api/admin/video")


def is_persona_upload(method: str, path: str) -> bool:
    """Persona media, seed 002's voice samples and videos, and portraits (seed 000
    PersonaUploads)."""
    return method == "POST" and (
        path in CLONE_UPLOAD_PATHS
        or (
            path.startswith(("/api/personas/", "/api/projects/"))
            and path.endswith(("/media", "/generate-image"))
        )
    )


class ApiRateLimits:
    """Seed 000's policies on ``/api/`` outside ``/api/v1/``: Global per IP on every
    request and upgrade; document uploads count against KnowledgeUploadsRate, persona media
    and portraits against PersonaUploads, other mutations against MutationDefault."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] in ("http", "websocket") else ""
        if not path.startswith(PROTECTED_PREFIX) or path.startswith(V1_PREFIX):
            await self.app(scope, receive, send)
            return
        services = scope["state"]["services"]
        global_ip, uploads, mutations, persona_uploads = services.api_policies
        try:
            await services.rate_limits.enforce(global_ip, client_ip(scope))
            # A queued client's routes have no principal: their own policy is per end user
            # (api/sessions.py).
            if scope["type"] == "http" and needs_key(path):
                principal: Principal = scope["state"]["principal"]
                method = scope["method"]
                if is_upload(method, path):
                    await services.rate_limits.enforce(uploads, principal.account_id)
                elif is_persona_upload(method, path):
                    await services.rate_limits.enforce(persona_uploads, principal.account_id)
                elif method in MUTATIONS:
                    await services.rate_limits.enforce(mutations, principal.account_id)
        except RapportError as error:
            await refuse(scope, receive, send, error)
            return
        await self.app(scope, receive, send)


class V1RateLimits:
    """Runs after authentication, so a request's key is known, and before any other work.
    A request's IP was counted with its key lookup (:func:`api.auth.authenticate_counting_ip`);
    here its key's window, except a turn's (see ``TURN_PATH``). An upgrade, which has no key,
    counts against the IP window only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not scope["path"].startswith(V1_PREFIX):
            await self.app(scope, receive, send)
            return
        limits: RateLimits = scope["state"]["services"].rate_limits
        extra: dict[str, str] = {}
        try:
            if scope["type"] == "websocket":
                await limits.hit_ip(client_ip(scope))
            elif (scope["method"], scope["path"]) != ("POST", TURN_PATH):
                # A request's IP was counted with its key lookup (api.auth).
                principal: Principal = scope["state"]["principal"]
                extra = (await limits.hit_key(principal.account_id, principal.window)).headers()
        except RapportError as error:
            await refuse(scope, receive, send, error)
            return

        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_quota)
