"""Rate limits: seed 004's per-key and per-IP limits on every ``/api/v1/`` route (with
RateLimit-* headers), and seed 000's policies on the rest of ``/api/``."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import PROTECTED_PREFIX
from api.problems import V1_PREFIX, render
from engine.apikeys import Principal
from engine.errors import RapportError
from engine.ratelimit import RateLimits

MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UPLOAD_PATHS = ("/api/knowledge/files", "/api/knowledge/docs")


def is_upload(method: str, path: str) -> bool:
    """Document uploads: the file endpoint and both document upserts (PUT)."""
    if path == UPLOAD_PATHS[0]:
        return method == "POST"
    return method == "PUT" and path.startswith(UPLOAD_PATHS[1])


def is_persona_upload(method: str, path: str) -> bool:
    """Persona media and portraits (seed 000 PersonaUploads)."""
    return (
        method == "POST"
        and path.startswith("/api/personas/")
        and path.endswith(("/media", "/generate-image"))
    )


class ApiRateLimits:
    """Seed 000's policies on ``/api/`` outside ``/api/v1/``: Global per IP on every
    request; document uploads count against KnowledgeUploadsRate, persona media and
    portraits against PersonaUploads, other mutations against MutationDefault."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith(PROTECTED_PREFIX) or path.startswith(V1_PREFIX):
            await self.app(scope, receive, send)
            return
        state = scope["state"]
        services = state["services"]
        principal: Principal = state["principal"]
        global_ip, uploads, mutations, persona_uploads = services.api_policies
        client = scope.get("client")
        try:
            await services.rate_limits.enforce(global_ip, client[0] if client else "unknown")
            method = scope["method"]
            if is_upload(method, path):
                await services.rate_limits.enforce(uploads, principal.account_id)
            elif is_persona_upload(method, path):
                await services.rate_limits.enforce(persona_uploads, principal.account_id)
            elif method in MUTATIONS:
                await services.rate_limits.enforce(mutations, principal.account_id)
        except RapportError as error:
            await render(scope, error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class V1RateLimits:
    """Runs after authentication, so the key is known; counts before any other work."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(V1_PREFIX):
            await self.app(scope, receive, send)
            return
        state = scope["state"]
        limits: RateLimits = state["services"].rate_limits
        principal: Principal = state["principal"]
        client = scope.get("client")
        try:
            quota = await limits.hit(
                f"{principal.account_id}:{principal.slot}", client[0] if client else "unknown"
            )
        except RapportError as error:
            await render(scope, error)(scope, receive, send)
            return
        extra = quota.headers()

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_quota)
