"""Limits of the conversation API: rate limits exact under concurrency (per key, per IP,
across processes), the request balance, the worker queue and the turn deadline."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from engine.errors import RateLimiterUnavailable
from engine.ratelimit import RateLimits
from engine.state import connect
from loadtest.fake_llm import FakeOpenAI
from tests.conftest import ChromaServer, RedisServer, Server, llm_env

URL = "/api/v1/conversation"


async def burst(
    targets: list[tuple[str, str]], count: int, payload: dict | None = None
) -> list[httpx.Response]:
    """``count`` concurrent conversation requests, spread over (base_url, api_key) pairs."""
    clients = [
        httpx.AsyncClient(
            base_url=base, headers={"X-Api-Key": key}, timeout=60,
            limits=httpx.Limits(max_connections=count),
        )
        for base, key in targets
    ]  # fmt: skip
    body = payload or {"user_id": "burst", "message": "hi"}
    try:
        return await asyncio.gather(
            *(clients[i % len(clients)].post(URL, json=body) for i in range(count))
        )
    finally:
        for client in clients:
            await client.aclose()


def codes(responses: list[httpx.Response]) -> Counter:
    return Counter(
        r.status_code if r.status_code == 200 else r.json()["detail"]["code"] for r in responses
    )


KEY_RPM = 60
"""RAPPORT_KEY_RPM of ``key_limited``."""


@pytest.fixture(scope="module")
def key_limited(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI) -> Iterator[Server]:
    """60 turns a minute per key, 360 per IP: the IP window holds the bursts of both key
    tests (each with keys of its own) within one minute."""
    env = llm_env(fake_llm, RAPPORT_KEY_RPM=str(KEY_RPM), RAPPORT_IP_RPM="360")
    running = Server(tmp_path_factory.mktemp("key-limited") / "data", **env).start()
    yield running
    running.retire()


def test_the_key_limit_is_exact_under_200_concurrent_requests(key_limited: Server) -> None:
    server = key_limited
    responses = asyncio.run(burst([(server.base_url, server.demo_key)], 200))
    assert codes(responses) == {200: 60, "rate_limited": 140}
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["retry-after"] == "60"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert limited.headers["ratelimit-limit"] == "60"
    ok = next(r for r in responses if r.status_code == 200)
    assert int(ok.headers["ratelimit-remaining"]) < 60


def test_the_ip_limit_is_exact_across_keys(server_on, fake_llm: FakeOpenAI) -> None:
    server = server_on(
        **llm_env(fake_llm, RAPPORT_IP_RPM="100", RAPPORT_KEY_RPM="1000", RAPPORT_TURN_QUEUE="200")
    )
    keys = [server.demo_key, server.new_tenant("ip-b"), server.new_tenant("ip-c")]
    responses = asyncio.run(burst([(server.base_url, k) for k in keys], 200))
    assert codes(responses) == {200: 100, "rate_limited_ip": 100}
    assert all(r.headers["retry-after"] == "60" for r in responses if r.status_code == 429)


def test_the_key_limit_holds_across_two_processes_sharing_redis(
    server_on, redis_server: RedisServer, chroma_server: ChromaServer, fake_llm: FakeOpenAI
) -> None:
    env = llm_env(
        fake_llm, RAPPORT_REDIS_URL=redis_server.url, RAPPORT_CHROMA_URL=chroma_server.url,
        RAPPORT_KEY_RPM="60",
    )  # fmt: skip
    first = server_on(**env)
    second = server_on(**env)
    key = first.demo_key  # the second process found the demo account already made
    assert not (second.data_dir / "demo_api_key").exists()
    targets = [(first.base_url, key), (second.base_url, key)]
    responses = asyncio.run(burst(targets, 200))
    assert codes(responses) == {200: 60, "rate_limited": 140}


def test_keys_have_separate_windows(key_limited: Server) -> None:
    server = key_limited
    one, other = server.new_tenant("window-a"), server.new_tenant("window-b")
    first = asyncio.run(burst([(server.base_url, one)], KEY_RPM + 3))
    second = asyncio.run(burst([(server.base_url, other)], KEY_RPM + 3))
    assert codes(first) == codes(second) == {200: KEY_RPM, "rate_limited": 3}


async def test_redis_down_is_rate_limiter_unavailable(redis_server: RedisServer) -> None:
    redis = connect(redis_server.url, 0.5)
    limits = RateLimits(redis, key_rpm=60, ip_rpm=360)
    assert (await limits.hit_key("acct", "primary")).remaining == 59
    redis_server.stop()
    with pytest.raises(RateLimiterUnavailable):
        await limits.hit_key("acct", "primary")
    await redis.aclose()


def balance(server: Server, account: str) -> int:
    shown = server.cli("balance", "show", "--account", account)
    assert shown.returncode == 0, shown.stderr
    return int(shown.stdout.split(": ")[1].split()[0])


def test_a_reply_spends_one_request_and_zero_is_402(llm_server: Server, fake: FakeOpenAI) -> None:
    name = f"bal-{uuid.uuid4().hex[:8]}"
    key = llm_server.new_tenant(name)
    start = balance(llm_server, name)
    assert start == 10_000
    with llm_server.client(headers={"X-Api-Key": key}) as client:
        assert client.post(URL, json={"user_id": "u", "message": "hi"}).status_code == 200
        assert balance(llm_server, name) == start - 1
        limits = client.get("/api/subscription/limits").json()["usage"]
        assert limits["requestBalance"] == start - 1

        assert (
            llm_server.cli("balance", "add", "--account", name, "--", str(1 - start)).returncode
            == 0
        )
        assert balance(llm_server, name) == 0
        empty = client.post(URL, json={"user_id": "u", "message": "hi"})
        assert empty.status_code == 402
        assert empty.json()["detail"]["code"] == "no_requests"

        llm_server.cli("balance", "add", "--account", name, "2")
        concurrent = asyncio.run(burst([(llm_server.base_url, key)], 10))
    assert codes(concurrent) == {200: 2, "no_requests": 8}, "never overdrawn"
    assert balance(llm_server, name) == 0


def test_a_failed_turn_costs_nothing(llm_server: Server, fake: FakeOpenAI) -> None:
    name = f"refund-{uuid.uuid4().hex[:8]}"
    key = llm_server.new_tenant(name)
    fake.configure(status=500)
    with llm_server.client(headers={"X-Api-Key": key}) as client:
        failed = client.post(URL, json={"user_id": "u", "message": "hi"})
        assert failed.status_code == 502 and failed.json()["detail"]["code"] == "upstream_error"
        assert client.get("/api/v1/users/u/history").json()["total"] == 0
    assert balance(llm_server, name) == 10_000


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI) -> Iterator[Server]:
    """One turn worker, a queue of one, and a 1.5 s deadline for the LLM's reply."""
    env = llm_env(
        fake_llm, RAPPORT_TURN_WORKERS="1", RAPPORT_TURN_QUEUE="1", RAPPORT_LLM_TIMEOUT="1.5"
    )
    running = Server(tmp_path_factory.mktemp("one-worker") / "data", **env).start()
    yield running
    running.retire()


def test_a_full_queue_is_503_and_a_slow_reply_is_504(
    one_worker: Server, fake_llm: FakeOpenAI
) -> None:
    server = one_worker
    fake_llm.reset()
    fake_llm.configure(delay_s=1.0)
    try:
        # One runs, one waits for it, the rest find the queue full. The one that waited
        # is past its deadline before its reply can come.
        responses = asyncio.run(burst([(server.base_url, server.demo_key)], 4))
        assert codes(responses) == {200: 1, "upstream_timeout": 1, "queue_unavailable": 2}
        full = next(r for r in responses if r.status_code == 503)
        assert full.headers["retry-after"] == "1"

        fake_llm.configure(delay_s=3.0)
        with server.client(headers={"X-Api-Key": server.demo_key}) as client:
            slow = client.post(URL, json={"user_id": "u", "message": "hi"})
            assert slow.status_code == 504
            assert slow.json()["detail"]["code"] == "upstream_timeout"
            limits = client.get("/api/subscription/limits").json()["usage"]
        assert limits["requestBalance"] == 10_000 - 1, "only the one reply was paid for"
    finally:
        fake_llm.reset()


def test_a_stalled_stream_ends_in_504(one_worker: Server, fake_llm: FakeOpenAI) -> None:
    # An account of its own: the demo account's balance is the full-queue test's to count.
    key = one_worker.new_tenant("stalled")
    fake_llm.reset()
    fake_llm.configure(stall_after_chunks=2)
    try:
        with one_worker.client(headers={"X-Api-Key": key}) as client:
            stalled = client.post(URL, json={"user_id": "u", "message": "hi"})
        assert stalled.status_code == 504
        assert stalled.json()["detail"]["code"] == "upstream_timeout"
    finally:
        fake_llm.reset()


def test_an_unreachable_llm_is_502_not_500(server_on) -> None:
    server = server_on(
        RAPPORT_LLM_BASE_URL="http://127.0.0.1:9/v1", RAPPORT_LLM_MODEL="m"
    )  # port 9 (discard) has no listener here
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        response = client.post(URL, json={"user_id": "u", "message": "hi"})
    assert response.status_code == 502
    assert response.json()["detail"]["code"] == "upstream_error"


def test_the_api_policies_of_seed_000(server_on) -> None:
    server = server_on(
        RAPPORT_UPLOADS_RPM="3", RAPPORT_MUTATIONS_RPM="4", RAPPORT_GLOBAL_IP_RPM="40"
    )
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        uploads = [
            client.put(f"/api/knowledge/docs/by-external-id/u{i}", json={"content": "x"})
            for i in range(4)
        ]
        assert [r.status_code for r in uploads] == [201, 201, 201, 429]
        limited = uploads[-1]
        assert limited.headers["content-type"] == "application/problem+json"
        body = limited.json()
        assert body["code"] == "limits.rate_exceeded" and body["scope"] == "user"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # Other mutations have their own window: uploads being spent does not block them.
        deletes = [client.delete(f"/api/knowledge/docs/by-external-id/u{i}") for i in range(5)]
        assert [r.status_code for r in deletes] == [204, 204, 204, 404, 429]
        # Reads count only against the per-IP window.
        reads = [client.get("/api/knowledge/docs").status_code for _ in range(40)]
        assert reads.count(429) > 0 and reads[0] == 200
        blocked = client.get("/api/subscription/limits")
        assert blocked.status_code == 429 and blocked.json()["scope"] == "ip"
        # /api/v1/ has seed 004's limits instead, untouched by these.
        assert client.get("/api/v1/users/u/history").status_code == 200
