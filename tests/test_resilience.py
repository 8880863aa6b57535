"""Redis going away mid-run: a 503 with a stable code, never a 500 or a hang, and recovery
without a restart once Redis is back. Corrupt state is a 500 that says nothing inside."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import RedisServer, Server

LIMITS = "/api/subscription/limits"
TIMEOUT = 1.0
"""RAPPORT_REDIS_TIMEOUT of the module's server."""


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """This module's redis-server, in place of conftest's one per test: every test here
    that stops or freezes it brings it back."""
    running = RedisServer(tmp_path_factory.mktemp("resilience-redis"))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Server]:
    """This module's server, on that Redis (in place of the shared embedded one): every test
    here uses it, none needs a fresh one."""
    running = Server(
        tmp_path_factory.mktemp("resilience") / "data",
        RAPPORT_REDIS_URL=redis_server.url,
        RAPPORT_REDIS_TIMEOUT=str(TIMEOUT),
    ).start()
    yield running
    running.stop()  # before its Redis stops


def test_redis_stopped_mid_run_then_restarted(server: Server, redis_server: RedisServer) -> None:
    key = server.demo_key
    with server.client(headers={"X-Api-Key": key}) as client:
        assert client.get(LIMITS).status_code == 200

        redis_server.stop()
        down = client.get(LIMITS)
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert down.json()["code"] == "server.unavailable"
        assert down.headers["retry-after"] == "1"
        down_v1 = client.get("/api/v1/anything")
        assert down_v1.status_code == 503
        assert down_v1.json()["detail"]["code"] == "service_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"redis": "unavailable", "chroma": "ok"}
        assert client.get("/healthz").status_code == 200  # the process itself is fine

        redis_server.start()  # same socket, same append-only file: the key is still there
        assert client.get(LIMITS).status_code == 200
        assert client.get("/readyz").status_code == 200


def test_a_frozen_redis_is_a_503_within_the_timeout(
    server: Server, redis_server: RedisServer
) -> None:
    """Within RAPPORT_REDIS_TIMEOUT, as the README says, not a retry's second timeout after it
    (issue 26: 2x the setting). The bound is the setting plus half of it for the rest of the
    request: before, each of these took twice the setting."""
    turn = {"user_id": "frozen", "message": "Hello"}
    with server.client(headers={"X-Api-Key": server.demo_key}, timeout=10) as client:
        assert client.get(LIMITS).status_code == 200
        redis_server.freeze()  # accepts nothing, answers nothing
        try:
            for method, path, body in (
                ("GET", LIMITS, None),
                ("GET", "/api/v1/anything", None),
                ("GET", "/readyz", None),
                ("POST", "/api/v1/conversation", turn),
            ):
                started = time.monotonic()
                stalled = client.request(method, path, json=body)
                waited = time.monotonic() - started
                assert stalled.status_code == 503, (path, stalled.text)
                assert waited < TIMEOUT * 1.5, (path, waited)
        finally:
            redis_server.thaw()
        assert client.get(LIMITS).status_code == 200


def test_corrupt_state_is_an_internal_error_with_nothing_inside(
    server: Server, redis_server: RedisServer
) -> None:
    # An account of its own, which the server has never read, so that nothing of it is
    # held in memory and the demo account stays whole for the other tests.
    name = f"corrupt-{uuid.uuid4().hex[:8]}"
    key = server.new_tenant(name)
    direct = redis.Redis(unix_socket_path=str(redis_server.socket), decode_responses=True)
    account_id = direct.hget("rapport:account_names", name)
    direct.set(f"rapport:{{acct:{account_id}}}:account", "{not json")
    with server.client(headers={"X-Api-Key": key}) as client:
        broken = client.get(LIMITS)
    assert broken.status_code == 500
    assert broken.headers["content-type"] == "application/problem+json"
    body = broken.json()
    assert body["code"] == "server.error"
    assert body["traceId"] == broken.headers["x-request-id"]
    assert "json" not in broken.text.lower().replace("problem+json", "")
    assert "Traceback" not in broken.text
    # The trace went to the operator's log instead, under the same request id.
    entry = server.wait_for_log(body["traceId"])
    assert entry["status"] == 500 and entry["level"] == "error"
    assert "DecodeError" in entry["exc"]
    direct.close()
