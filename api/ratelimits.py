"""Per-key and per-IP limits on every ``/api/v1/`` route, with RateLimit-* headers."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import V1_PREFIX, render
from engine.apikeys import Principal
from engine.errors import RapportError
from engine.ratelimit import RateLimits


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
