"""The Starlette application: wiring of state, index, middleware and routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from importlib.metadata import version

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp

from api import (
    account,
    account_users,
    clone_admin,
    clone_chat,
    clone_kb,
    conversation,
    docs,
    knowledge,
    pages,
    personas,
    projects,
    sessions,
    signin,
    subscription,
    system,
)
from api.auth import ApiKeyAuth
from api.bodylimit import DeclaredBodyLimit
from api.headers import JsonBodies, SecurityHeaders
from api.logs import configure
from api.metrics import HttpMetrics
from api.operations import Operation
from api.problems import handle_http_exception, handle_rapport_error, handle_unexpected
from api.ratelimits import ApiRateLimits, V1RateLimits
from api.services import Services
from api.telemetry import Telemetry
from engine.audit import AuditLog
from engine.config import Settings, load_settings
from engine.embedded_redis import EmbeddedRedis
from engine.errors import RapportError, UnavailableError
from engine.firstrun import bootstrap_demo
from engine.nodes import Nodes
from engine.state import open_client
from kb.index import VectorIndex
from sessions.leases import keep_leases

log = logging.getLogger("rapport")

OPERATIONS: list[Operation] = [
    *system.OPERATIONS,
    *docs.OPERATIONS,
    *subscription.OPERATIONS,
    *conversation.OPERATIONS,
    *knowledge.OPERATIONS,
    *clone_kb.OPERATIONS,
    *clone_chat.OPERATIONS,
    *clone_admin.OPERATIONS,
    *personas.OPERATIONS,
    *projects.OPERATIONS,
    *sessions.OPERATIONS,
    *signin.OPERATIONS,
    *account.OPERATIONS,
    *account_users.OPERATIONS,
    *pages.OPERATIONS,
]


async def reembed(services: Services, model: str) -> None:
    """Queue what another embedding model embedded (RAPPORT_EMBEDDING_MODEL changed);
    in the background, so that a large knowledge base does not hold up the start."""
    try:
        queued = await services.ingest.reembed(model)
    except UnavailableError:
        log.warning("Redis is not reachable: documents are checked for their model next start")
        return
    if queued:
        log.info("%d documents queued to be embedded again with %s", queued, model)


def create_app(settings: Settings) -> ASGIApp:
    metrics = HttpMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        embedded = None
        url = settings.redis_url
        if url is None:
            embedded = EmbeddedRedis(settings.redis_db_path)
            url = embedded.url
        try:
            redis = await open_client(url, settings.redis_timeout, settings.redis_cluster)
        except BaseException:
            # Refused (RAPPORT_REDIS_CLUSTER) or unreachable: the embedded server we started
            # must not outlive the failed start.
            if embedded is not None:
                embedded.close()
            raise
        nodes = Nodes(redis, settings)
        index = VectorIndex(settings, before_add=nodes.claim)
        services = Services(settings=settings, redis=redis, index=index, metrics=metrics)
        try:
            # Before anything is written or served: a node whose vectors the deployment's
            # other nodes could not read must not start (engine/nodes.py).
            await nodes.join()
        except BaseException:
            await services.close()
            if embedded is not None:
                embedded.close()
            raise
        key = await bootstrap_demo(
            services.accounts,
            services.personas,
            services.keys,
            AuditLog(services.redis),
            settings.demo_key_path,
        )
        if key is not None:
            # Printed once, on stdout rather than in the JSON log; also in demo_api_key.
            print(
                f"Created account 'demo'. Its API key (also in {settings.demo_key_path}):\n  {key}",
                flush=True,
            )
        try:
            await services.index.ping()  # open the embedded store now, not on first use
        except UnavailableError:
            log.warning("Chroma is not reachable yet; /readyz reports it until it is")
        # What is loaded by now (chromadb, onnxruntime, numpy: ~180k tracked objects) lives
        # as long as the process. Frozen, it is left out of full collections, which would
        # otherwise walk it every few requests: ~80 ms pauses at the list endpoint's p95
        # (BENCHMARKS.md, "List endpoint").
        gc.collect()
        gc.freeze()
        log.info("ready on http://%s:%d", settings.host, settings.port)
        stop = asyncio.Event()
        processing = asyncio.create_task(
            services.processor.run(stop) if settings.kb_worker else stop.wait()
        )
        listeners = [
            asyncio.create_task(reembed(services, settings.embedding_model)),
            asyncio.create_task(services.hub.run()),
            asyncio.create_task(services.queue_hub.run()),
            asyncio.create_task(nodes.keep()),
            asyncio.create_task(
                keep_leases(
                    services.sessions,
                    services.capacity,
                    services.hub.held,
                    lambda: services.queue_hub.refresh(touch=True),
                    # Often enough for both: a lease renewed before it runs out, a
                    # connected queued client heard from before it counts as idle.
                    min(settings.session_lease_seconds, settings.queue_idle_seconds) / 3,
                )
            ),
        ]
        try:
            yield {"services": services}
        finally:
            stop.set()
            for task in listeners:
                task.cancel()
            await asyncio.gather(processing, *listeners, return_exceptions=True)
            # Redis down: the heartbeat runs out by itself within RAPPORT_SESSION_LEASE_SECONDS.
            with contextlib.suppress(UnavailableError):
                await nodes.leave()
            await services.close()
            if embedded is not None:
                embedded.close()

    routes: list[BaseRoute] = [
        WebSocketRoute(op.path, op.endpoint)
        if op.websocket
        else Route(op.path, op.endpoint, methods=[op.method], max_body_size=op.body_limit)
        for op in OPERATIONS
    ]
    json_routes = {
        (op.method, op.path): op.other_bodies for op in OPERATIONS if op.request is not None
    }
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(ApiKeyAuth),
            Middleware(V1RateLimits),
            Middleware(ApiRateLimits),
            Middleware(JsonBodies, routes=routes, json_routes=json_routes),
        ],
        exception_handlers={
            RapportError: handle_rapport_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    app.state.openapi = docs.build_openapi(OPERATIONS, version("rapport"))
    app.state.docs_html = docs.render_docs(app.state.openapi)
    limits = {
        op.path: (op.body_limit, op.too_large) for op in OPERATIONS if op.body_limit is not None
    }
    bounded = DeclaredBodyLimit(app, app.routes, settings.max_body_bytes, limits)
    return Telemetry(SecurityHeaders(bounded), app.routes, metrics)


def create_app_from_env() -> ASGIApp:
    """uvicorn's factory: each worker process reads the same ``RAPPORT_*`` environment."""
    settings = load_settings()
    configure(settings.log_level)
    return create_app(settings)
