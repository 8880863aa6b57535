"""Operational endpoints: liveness, readiness, metrics. Outside ``/api/``, no key needed;
``/metrics`` needs ``Authorization: Bearer`` with RAPPORT_METRICS_TOKEN when that is set."""

from __future__ import annotations

import contextlib
import hmac
from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.auth import bearer_token
from api.metrics import CONTENT_TYPE
from api.operations import Operation
from api.responses import JSON
from api.services import Services
from engine.errors import Failure, MissingApiKey, UnavailableError

Check = Literal["ok", "unavailable"]


class Health(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check]


async def healthz(request: Request) -> Response:
    return JSON(Health(status="ok"))


async def readyz(request: Request) -> Response:
    services: Services = request.state.services
    checks: dict[str, Check] = {}
    for name, ping in (("redis", services.ping_redis), ("chroma", services.index.ping)):
        try:
            await ping()
            checks[name] = "ok"
        except UnavailableError:
            checks[name] = "unavailable"
    ready = all(state == "ok" for state in checks.values())
    return JSON(
        Readiness(status="ready" if ready else "unavailable", checks=checks),
        status_code=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    services: Services = request.state.services
    token = services.settings.metrics_token
    if token is not None:
        given = bearer_token(request.headers) or ""
        # Compared in constant time: how long a refusal takes tells nothing of the token.
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise MissingApiKey(
                "GET /metrics needs Authorization: Bearer with RAPPORT_METRICS_TOKEN.",
                # RFC 9110 §15.5.2: a 401 names the scheme it wants.
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    # Without Redis the gauges keep their last reading; the rest of the page still helps.
    with contextlib.suppress(UnavailableError):
        services.metrics.observe_capacity(*await services.capacity.counts())
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE)


OPERATIONS = [
    Operation("GET", "/healthz", healthz, "Liveness: the process is up.", "system", Health),
    Operation(
        "GET",
        "/readyz",
        readyz,
        "Readiness: Redis and Chroma answer. 503 with the same body when one does not.",
        "system",
        Readiness,
    ),
    Operation(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics: requests by route and status, latency histograms. With "
        "RAPPORT_METRICS_TOKEN set, needs Authorization: Bearer with it.",
        "system",
        media_type=CONTENT_TYPE,
        failures=(Failure.MISSING_API_KEY,),
    ),
]
