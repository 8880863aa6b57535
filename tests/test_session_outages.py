"""Redis going away under live sessions: minting answers 503 ``server.unavailable``; a live
socket stays open, a turn that cannot be charged gets a non-fatal ``error`` event, and the
session talks again once Redis is back; no slot is left taken by the outage."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from engine import keyspace
from tests.conftest import FakeOpenAI, RedisServer, Server, llm_env
from tests.test_sessions import opened, said, types, unique

SLOTS = keyspace.DeploymentKeys.slots


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """This module's redis-server, in place of conftest's one per test: each test stops it
    and starts it again."""
    running = RedisServer(tmp_path_factory.mktemp("outages-redis"))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI, redis_server: RedisServer
) -> Iterator[Server]:
    """This module's server, on that Redis and the fake LLM, giving up on Redis after 1 s:
    both tests use it, and each leaves no slot taken."""
    env = llm_env(fake_llm, RAPPORT_REDIS_URL=redis_server.url, RAPPORT_REDIS_TIMEOUT="1")
    running = Server(tmp_path_factory.mktemp("outages") / "data", **env).start()
    yield running
    running.stop()  # before its Redis stops


def slots_held(redis_server: RedisServer) -> int:
    direct = redis.Redis(unix_socket_path=str(redis_server.socket))
    try:
        return int(direct.zcard(SLOTS))
    finally:
        direct.close()


async def test_minting_while_redis_is_down_is_a_503_and_leaks_no_slot(
    server: Server, redis_server: RedisServer
) -> None:
    body = {"user_id": unique("user"), "mode": "chat"}
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"X-Api-Key": server.demo_key}, timeout=10
    ) as http:
        redis_server.stop()
        down = await http.post("/api/sessions", json=body)
        assert down.status_code == 503, down.text
        assert down.json()["code"] == "server.unavailable"
        assert down.headers["retry-after"] == "1"

        redis_server.start()
        assert slots_held(redis_server) == 0
        up = await http.post("/api/sessions", json=body)
        assert up.status_code == 201, up.text
        assert slots_held(redis_server) == 1
        session_id = up.json()["session_id"]
        assert (await http.delete(f"/api/sessions/{session_id}")).status_code == 204
        assert slots_held(redis_server) == 0


async def test_a_live_session_rides_out_an_outage(
    server: Server, redis_server: RedisServer, fake: FakeOpenAI
) -> None:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"X-Api-Key": server.demo_key}, timeout=10
    ) as http:
        minted = await http.post("/api/sessions", json={"user_id": unique("user"), "mode": "chat"})
        assert minted.status_code == 201, minted.text
        async with opened(minted.json()["ws_url"]) as live:
            assert (await live.next())["type"] == "session.ready"
            await live.send("user.message", id="before", text="Hello")
            assert said(await live.until("budget"))

            redis_server.stop()
            await live.send("user.message", id="during", text="Are you there?")
            failed = await live.until("reply.done")
            assert types(failed) == ["error", "reply.done"]
            assert failed[0]["code"] == "server.unavailable" and failed[0]["fatal"] is False
            assert failed[1]["status"] == "failed"
            await live.until("budget")

            redis_server.start()
            await live.send("user.message", id="after", text="And now?")
            turn = await live.until("budget")
            assert said(turn) and turn[-2]["status"] == "completed"

            await live.send("session.end")
            _, code = await live.closed()
            assert code == 1000
        assert slots_held(redis_server) == 0
