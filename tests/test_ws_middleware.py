"""The middleware on WebSocket scopes: request ids, metrics and log lines, IP rate limits,
message limits and the one error exit, with real ``websockets`` clients against a real
uvicorn on 127.0.0.1 and a real Redis.

The app has no socket routes yet, so these tests serve a small one, wrapped in the real
middleware classes the way ``api.app.create_app`` wraps the real app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.http11 import Response

from api.auth import ApiKeyAuth
from api.bodylimit import DeclaredBodyLimit
from api.logs import JsonFormatter
from api.metrics import HttpMetrics
from api.problems import MAX_CLOSE_REASON, close_message
from api.ratelimits import ApiRateLimits, V1RateLimits
from api.telemetry import Telemetry
from engine.accounts import AccountStore
from engine.apikeys import KeyStore
from engine.config import Settings
from engine.errors import BodyTooLarge, ValidationFailed
from engine.ratelimit import Policy, RateLimits
from engine.state import connect as connect_redis
from tests.conftest import RedisServer, free_port, wait_until

ECHO = "/api/echo"
V1_ECHO = "/api/v1/echo"
ECHO_LIMIT = 16  # bytes a message may have on ECHO
DEFAULT_LIMIT = 64  # bytes a message may have on a route without a limit of its own


async def echo(websocket: WebSocket) -> None:
    """Says the request id the middleware gave it (none: empty), then echoes every message."""
    await websocket.accept()
    await websocket.send_text(websocket.scope["state"].get("request_id", ""))
    while (message := await websocket.receive())["type"] == "websocket.receive":
        await websocket.send(
            {"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")}
        )


async def crash_before_accept(websocket: WebSocket) -> None:
    raise RuntimeError("a bug before the handshake")


async def crash_after_accept(websocket: WebSocket) -> None:
    await websocket.accept()
    raise RuntimeError("a bug on an open socket")


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


@dataclass
class Wiring:
    """The part of :class:`api.services.Services` the middleware reads."""

    settings: Settings
    redis: aioredis.Redis
    keys: KeyStore
    rate_limits: RateLimits
    api_policies: tuple[Policy, Policy, Policy, Policy]


class Served:
    """The test app in uvicorn on a thread of this process, so its metrics object and its
    log records are at hand."""

    def __init__(self, redis_url: str, settings: Settings) -> None:
        self.metrics = HttpMetrics()
        self.key = ""
        port = free_port()
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Wiring]]:
            redis = connect_redis(redis_url, settings.redis_timeout)
            account = await AccountStore(redis).create("sockets")
            keys = KeyStore(redis)
            self.key = await keys.create(account.id, "primary")
            limits = RateLimits(redis, key_rpm=settings.key_rpm, ip_rpm=settings.ip_rpm)
            yield {
                "services": Wiring(
                    settings=settings,
                    redis=redis,
                    keys=keys,
                    rate_limits=limits,
                    # Built as api.services.Services builds them.
                    api_policies=(
                        Policy("Global", settings.global_ip_rpm, "ip"),
                        Policy("KnowledgeUploadsRate", settings.uploads_rpm, "user"),
                        Policy("MutationDefault", settings.mutations_rpm, "user"),
                        Policy("PersonaUploads", settings.persona_uploads_rpm, "user"),
                    ),
                )
            }
            await redis.aclose()

        app = Starlette(
            routes=[
                WebSocketRoute(ECHO, echo),
                WebSocketRoute(V1_ECHO, echo),
                WebSocketRoute("/api/crash-early", crash_before_accept),
                WebSocketRoute("/api/crash-late", crash_after_accept),
                Route("/api/v1/ping", ping),
            ],
            middleware=[
                Middleware(ApiKeyAuth),
                Middleware(V1RateLimits),
                Middleware(ApiRateLimits),
            ],
            lifespan=lifespan,
        )
        bounded = DeclaredBodyLimit(
            app, app.routes, DEFAULT_LIMIT, {ECHO: (ECHO_LIMIT, BodyTooLarge)}
        )
        config = uvicorn.Config(
            Telemetry(bounded, app.routes, self.metrics),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Served:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "uvicorn on a thread")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def sockets(self, route: str, status: int) -> float:
        """The ``rapport_websocket_connections_total`` sample of a route and status."""
        for family in text_string_to_metric_families(self.metrics.exposition().decode()):
            for sample in family.samples:
                if sample.name == "rapport_websocket_connections_total" and sample.labels == {
                    "route": route,
                    "status": str(status),
                }:
                    return sample.value
        return 0.0


@pytest.fixture
def serve(redis_server: RedisServer) -> Iterator:
    """Start the test app with some settings; stopped when the test ends."""
    started: list[Served] = []

    def start(**settings: int) -> Served:
        running = Served(redis_server.url, Settings(**settings)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def logged(caplog: pytest.LogCaptureFixture, **fields: object) -> logging.LogRecord:
    """The access log line whose fields match; written just after the socket ends."""
    found: list[logging.LogRecord] = []

    def written() -> bool:
        found[:] = [
            record
            for record in list(caplog.records)
            if record.name == "rapport.http"
            and all(record.__dict__.get(name) == value for name, value in fields.items())
        ]
        return bool(found)

    wait_until(written, 10, f"the log line with {fields}")
    assert len(found) == 1
    return found[0]


async def closed(socket: ClientConnection) -> tuple[int, str]:
    """The server's close code and reason, once the socket it accepted is closed."""
    with pytest.raises(ConnectionClosedError) as closing:
        await socket.recv()
    assert closing.value.rcvd is not None
    return closing.value.rcvd.code, closing.value.rcvd.reason


def test_a_socket_gets_a_request_id_a_metric_and_a_log_line(
    serve, caplog: pytest.LogCaptureFixture
) -> None:
    app = serve()
    caplog.set_level(logging.INFO, logger="rapport.http")

    async def talk() -> tuple[str, str]:
        headers = {"X-Request-Id": "ws-req-42"}
        async with connect(app.ws_url + ECHO, additional_headers=headers) as socket:
            assert socket.response.headers["X-Request-Id"] == "ws-req-42"
            said = await socket.recv()
            await socket.send("hi")
            assert await socket.recv() == "hi"
        async with connect(app.ws_url + ECHO, additional_headers={"X-Request-Id": "bad id!"}) as s:
            made = await s.recv()
            assert s.response.headers["X-Request-Id"] == made
        return str(said), str(made)

    said, made = asyncio.run(talk())
    assert said == "ws-req-42"  # kept in the scope's state, where the route read it
    assert re.fullmatch(r"[0-9a-f]{16}", made)  # not a sane id: a new one, as for requests
    record = logged(caplog, request_id="ws-req-42")
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "websocket" and line["level"] == "info"
    assert line["method"] == "GET" and line["route"] == ECHO and line["path"] == ECHO
    assert line["status"] == 101 and line["client"] == "127.0.0.1"
    assert line["latency_ms"] > 0
    logged(caplog, request_id=made)
    assert app.sockets(ECHO, 101) == 2
    exposition = app.metrics.exposition().decode()
    assert f'rapport_websocket_connection_duration_seconds_count{{route="{ECHO}"}} 2.0' in (
        exposition
    )
    # A socket is no HTTP request: it stays out of the request families.
    assert f'route="{ECHO}"' not in "".join(
        line for line in exposition.splitlines() if line.startswith("rapport_http_")
    )


def test_a_socket_refused_at_the_handshake_is_counted_with_its_http_status(
    serve, caplog: pytest.LogCaptureFixture
) -> None:
    app = serve()
    caplog.set_level(logging.INFO, logger="rapport.http")

    async def knock() -> int:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(app.ws_url + "/nowhere", additional_headers={"X-Request-Id": "n1"}):
                pass
        return refused.value.response.status_code

    assert asyncio.run(knock()) == 403  # Starlette's router closes before accepting
    assert logged(caplog, request_id="n1").status == 403
    assert app.sockets("<unmatched>", 403) == 1


def test_the_global_ip_policy_closes_sockets_1008_after_accepting(
    serve, caplog: pytest.LogCaptureFixture
) -> None:
    app = serve(global_ip_rpm=2)
    caplog.set_level(logging.INFO, logger="rapport.http")

    async def connect_three() -> tuple[int, str, Response]:
        for _ in range(2):
            async with connect(app.ws_url + ECHO) as socket:
                await socket.recv()
        headers = {"X-Request-Id": "limited-1"}
        async with connect(app.ws_url + ECHO, additional_headers=headers) as socket:
            return (*await closed(socket), socket.response)

    code, reason, handshake = asyncio.run(connect_three())
    assert code == 1008  # the table's close code of a rate limit
    # Accepted (the handshake succeeded), so a browser can read the close code.
    assert handshake.status_code == 101
    assert handshake.headers["X-Request-Id"] == "limited-1"
    assert int(handshake.headers["Retry-After"]) > 0  # for clients that can read it
    assert reason.startswith("limits.rate_exceeded: Too many requests (Global: 2 a minute")
    assert logged(caplog, request_id="limited-1").status == 1008
    assert app.sockets(ECHO, 1008) == 1
    # Requests under /api/ draw on the same window: it is spent for them too.
    response = httpx.get(app.http_url + "/api/anything", headers={"X-Api-Key": app.key})
    assert response.status_code == 429
    assert response.json()["code"] == "limits.rate_exceeded"


def test_seed_004s_ip_limit_counts_upgrades_and_requests_in_one_window(serve) -> None:
    app = serve(ip_rpm=2, key_rpm=100)
    authed = {"X-Api-Key": app.key}

    async def socket_closing() -> tuple[int, str] | None:
        async with connect(app.ws_url + V1_ECHO) as socket:
            await socket.recv()  # the request id: this one was let through
            return None

    async def socket_refused() -> tuple[int, str]:
        async with connect(app.ws_url + V1_ECHO) as socket:
            return await closed(socket)

    asyncio.run(socket_closing())  # one of two
    allowed = httpx.get(app.http_url + "/api/v1/ping", headers=authed)  # two of two
    assert allowed.status_code == 200 and allowed.headers["ratelimit-limit"] == "100"
    code, reason = asyncio.run(socket_refused())
    assert code == 1008 and reason.startswith("rate_limited_ip: ")
    refused = httpx.get(app.http_url + "/api/v1/ping", headers=authed)
    assert refused.status_code == 429
    assert refused.json()["detail"]["code"] == "rate_limited_ip"


def test_a_message_over_the_routes_limit_closes_the_socket_1009(serve) -> None:
    app = serve()

    async def over(path: str, fits: str | bytes, too_big: str | bytes) -> tuple[int, str]:
        async with connect(app.ws_url + path) as socket:
            await socket.recv()
            await socket.send(fits)
            assert await socket.recv() == fits
            await socket.send(too_big)
            return await closed(socket)

    # Text counts in UTF-8 bytes, as sent: nine characters, eighteen bytes.
    code, reason = asyncio.run(over(ECHO, "x" * ECHO_LIMIT, "é" * 9))
    assert code == 1009 and reason.startswith("request.body_too_large: ")
    assert f"at most {ECHO_LIMIT} bytes" in reason
    code, reason = asyncio.run(over(V1_ECHO, b"x" * DEFAULT_LIMIT, b"x" * (DEFAULT_LIMIT + 1)))
    assert code == 1009 and reason.startswith("payload_too_large: ")
    assert app.sockets(ECHO, 1009) == 1 and app.sockets(V1_ECHO, 1009) == 1


@pytest.mark.parametrize("path", ["/api/crash-early", "/api/crash-late"])
def test_a_socket_whose_app_fails_closes_1011_and_logs_the_trace(
    serve, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    app = serve()
    caplog.set_level(logging.INFO, logger="rapport.http")

    async def crash() -> tuple[int, str]:
        async with connect(app.ws_url + path, additional_headers={"X-Request-Id": "c1"}) as s:
            return await closed(s)

    code, reason = asyncio.run(crash())
    assert code == 1011 and reason == "server.error: Unexpected internal failure."
    record = logged(caplog, request_id="c1")
    assert record.levelno == logging.ERROR and record.getMessage() == "websocket failed"
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
    assert app.sockets(path, 1011) == 1


def test_a_close_reason_fits_a_close_frame() -> None:
    error = ValidationFailed("é" * 200)
    closing = close_message({"type": "websocket", "path": ECHO}, error)
    assert closing["code"] == 1008
    reason = closing["reason"].encode()
    # RFC 6455 §5.5: cut to 123 bytes, and never inside a character.
    assert MAX_CLOSE_REASON == 123 and len(reason) <= MAX_CLOSE_REASON
    assert closing["reason"].startswith("validation.failed: éé")
