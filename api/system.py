"""Operational endpoints: liveness, readiness, metrics. Outside ``/api/``, no key needed."""

from __future__ import annotations

import contextlib
from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.metrics import CONTENT_TYPE
from api.operations import Operation
from api.responses import JSON
from api.services import Services
from engine.errors import UnavailableError

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
        "Prometheus metrics: requests by route and status, latency histograms.",
        "system",
        media_type=CONTENT_TYPE,
    ),
]
