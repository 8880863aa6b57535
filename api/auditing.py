"""What a route writes to the account's audit log after a change succeeded
(:mod:`engine.audit` holds the rules: action names, actors, details, redaction)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import HTTPConnection

from engine.apikeys import Principal
from engine.audit import Action, Actor, AuditLog, Detail, actor_of
from kb.ingest import UpsertResult


def actor_from(request: HTTPConnection) -> Actor:
    """The authenticated caller of ``request`` (``request.state.principal``), with the
    client address uvicorn gives (proxy headers applied only from trusted proxies)."""
    principal: Principal = request.state.principal
    ip = request.client.host if request.client else None
    return Actor(principal.account_id, actor_of(principal), ip)


async def audit(
    request: HTTPConnection, action: Action, target: str, detail: Detail | None = None
) -> None:
    """The one call a route makes after a change succeeded."""
    await AuditLog(request.state.services.redis).record(actor_from(request), action, target, detail)


async def audit_upserts(request: HTTPConnection, outcomes: Iterable[UpsertResult]) -> None:
    """:meth:`AuditLog.upserted` for a route."""
    await AuditLog(request.state.services.redis).upserted(actor_from(request), outcomes)
