"""Idempotency-Key (seed 004): byte-identical replay, reuse and in-flight 409s, one
computation for any number of concurrent copies, nothing stored for failures."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from engine.accounts import AccountStore
from engine.errors import IdempotencyUnavailable
from engine.idempotency import Idempotency, IdempotencyKey
from engine.memory import MemoryStore
from engine.personas import PersonaStore
from engine.state import connect
from engine.tenants import create_tenant
from engine.turn_store import Opened, TurnStore
from loadtest.fake_llm import FakeOpenAI
from sessions.store import CHARGE
from tests.conftest import RedisServer, Server

URL = "/api/v1/conversation"


def new_key() -> str:
    return f"req-{uuid.uuid4().hex}"


def test_a_repeat_is_replayed_byte_for_byte(llm_server: Server, fake: FakeOpenAI) -> None:
    key = new_key()
    payload = {"user_id": "idem-1", "message": "Help me choose a plan."}
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        first = client.post(URL, json=payload, headers={"Idempotency-Key": key})
        # Same payload, other key order and spacing: still the same payload.
        reordered = '{ "message": "Help me choose a plan.",  "user_id": "idem-1" }'
        second = client.post(
            URL,
            content=reordered,
            headers={"Idempotency-Key": key, "Content-Type": "application/json"},
        )
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert len(fake.calls()) == 1, "the replay must not compute a second reply"


def test_a_key_reused_with_another_payload_is_409(llm_server: Server, fake: FakeOpenAI) -> None:
    key = new_key()
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        assert (
            client.post(
                URL, json={"user_id": "u", "message": "one"}, headers={"Idempotency-Key": key}
            ).status_code
            == 200
        )
        reused = client.post(
            URL, json={"user_id": "u", "message": "two"}, headers={"Idempotency-Key": key}
        )
    assert reused.status_code == 409
    assert reused.json()["detail"]["code"] == "idempotency_key_reused_with_different_payload"
    assert len(fake.calls()) == 1


def test_a_key_still_running_is_409_in_flight(llm_server: Server, fake: FakeOpenAI) -> None:
    fake.configure(delay_s=1.5)
    key = new_key()
    payload = {"user_id": "u", "message": "slow"}

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(
            base_url=llm_server.base_url,
            headers={"X-Api-Key": llm_server.demo_key, "Idempotency-Key": key},
            timeout=30,
        ) as client:
            first = asyncio.create_task(client.post(URL, json=payload))
            # Poll another process (no event to wait on) until the first reached the model.
            while not fake.calls():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            second = await client.post(URL, json=payload)
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200
    assert second.status_code == 409
    assert second.json()["detail"]["code"] == "idempotency_in_flight"


def test_fifty_concurrent_copies_compute_one_reply(llm_server: Server, fake: FakeOpenAI) -> None:
    fake.configure(delay_s=0.3)
    key = new_key()
    payload = {"user_id": "fifty", "message": "Once, please."}

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=llm_server.base_url,
            headers={"X-Api-Key": llm_server.demo_key, "Idempotency-Key": key},
            timeout=30,
            limits=httpx.Limits(max_connections=50),
        ) as client:
            return await asyncio.gather(*(client.post(URL, json=payload) for _ in range(50)))

    responses = asyncio.run(scenario())
    assert len(fake.calls()) == 1
    done = [r for r in responses if r.status_code == 200]
    in_flight = [r for r in responses if r.status_code == 409]
    assert len(done) + len(in_flight) == 50
    assert len({r.content for r in done}) == 1, "every 200 is the same stored reply"
    assert all(r.json()["detail"]["code"] == "idempotency_in_flight" for r in in_flight)
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        history = client.get("/api/v1/users/fifty/history").json()
    assert history["total"] == 1, "one turn remembered, not fifty"


def test_keys_are_scoped_per_account(llm_server: Server, fake: FakeOpenAI) -> None:
    key = new_key()
    other = llm_server.new_tenant(f"idem-{uuid.uuid4().hex[:8]}")
    payload = {"user_id": "u", "message": "hi"}
    with llm_server.client() as client:
        for api_key in (llm_server.demo_key, other):
            response = client.post(
                URL, json=payload, headers={"X-Api-Key": api_key, "Idempotency-Key": key}
            )
            assert response.status_code == 200
            assert "idempotent-replayed" not in response.headers
    assert len(fake.calls()) == 2


def test_validation_failures_store_nothing(llm_server: Server, fake: FakeOpenAI) -> None:
    key = new_key()
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        bad = client.post(URL, json={"user_id": "u"}, headers={"Idempotency-Key": key})
        assert bad.status_code == 400
        good = client.post(
            URL, json={"user_id": "u", "message": "now valid"}, headers={"Idempotency-Key": key}
        )
    assert good.status_code == 200
    assert "idempotent-replayed" not in good.headers


@pytest.mark.parametrize("status", [500, 429])
def test_a_failed_upstream_is_not_kept_so_the_retry_can_succeed(
    llm_server: Server, fake: FakeOpenAI, status: int
) -> None:
    fake.configure(status=status, fail_times=1)
    key = new_key()
    payload = {"user_id": "u", "message": "retry me"}
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        failed = client.post(URL, json=payload, headers={"Idempotency-Key": key})
        assert failed.status_code == 502
        assert failed.json()["detail"]["code"] == "upstream_error"
        retried = client.post(URL, json=payload, headers={"Idempotency-Key": key})
    assert retried.status_code == 200
    assert len(fake.calls()) == 2


async def test_redis_down_is_idempotency_unavailable(redis_server: RedisServer) -> None:
    redis = connect(redis_server.url, 0.5)
    memory = MemoryStore(redis)
    store = TurnStore(
        redis, memory=memory, idempotency=Idempotency(in_flight_ttl=60), key_rpm=60,
        budget=CHARGE,
    )  # fmt: skip
    account = await create_tenant(AccountStore(redis), PersonaStore(redis), "idem-down")
    opened = await store.open(
        account.id, "u", key_slot=None, idempotency_key=IdempotencyKey("k", "fingerprint")
    )
    assert isinstance(opened, Opened) and opened.claim is not None
    redis_server.stop()
    with pytest.raises(IdempotencyUnavailable):
        await store.open(
            account.id, "u", key_slot=None, idempotency_key=IdempotencyKey("k2", "fingerprint")
        )
    with pytest.raises(IdempotencyUnavailable):
        await store.close(account.id, "u", turn=None, claim=opened.claim, outcome=None, refund=True)
    await redis.aclose()
