"""Which route template a request is for, found without dispatching it."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import Scope


def template_of(routes: Sequence[BaseRoute], scope: Scope) -> str | None:
    """The path template (``/api/personas/{persona_id}``) of the first route whose path
    matches, whatever the method; None when no route does."""
    route = scope.get("route")
    if route is not None:
        return getattr(route, "path", None)
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match is not Match.NONE:
            return getattr(candidate, "path", None)
    return None
