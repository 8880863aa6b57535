"""The dashboard's Usage and Live pages, server side (issue 23, item 4): turns per UTC day and
sessions ended by close code, counted by the scripts that commit them (engine/usage.py), read
by ``GET /api/account/usage``; and ``GET /api/sessions``'s statuses and capacity. Against a
real ``rapport serve`` with the fake LLM, and the store against a real Redis (and a cluster)
with a clock the test moves."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from engine import keyspace, usage
from engine.accounts import Plan
from engine.state import Client
from loadtest.fake_llm import FakeOpenAI
from tests.conftest import ON_BOTH, ChromaServer, Clock, Server, llm_env
from tests.test_account_routes import signed_up
from tests.test_session_store import ACCOUNT, CAP, CONNECT, OTHER, make_store, persona
from tests.test_sessions import opened
from tests.test_signin import Browser

TURN = "/api/v1/conversation"
KEY_RPM = 3
MAX_SESSIONS = 2
ROOM = 3


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI, chroma_server: ChromaServer
) -> Iterator[Server]:
    """Few turns per key a minute, so that one is refused; two slots in the deployment, so
    that a third session queues."""
    env = llm_env(
        fake_llm, RAPPORT_CHROMA_URL=chroma_server.url, RAPPORT_KEY_RPM=str(KEY_RPM),
        RAPPORT_MAX_SESSIONS=str(MAX_SESSIONS), RAPPORT_WAITING_ROOM_SIZE=str(ROOM),
    )  # fmt: skip
    running = Server(tmp_path_factory.mktemp("usage") / "data", **env).start()
    yield running
    running.retire()


def tenant(node: Server) -> tuple[str, httpx.Client, Browser]:
    """A new account: its name, a client with its key, its signed-in owner."""
    name = f"usage-{secrets.token_hex(3)}"
    key = node.new_tenant(name)
    client = httpx.Client(base_url=node.base_url, headers={"X-Api-Key": key}, timeout=10)
    return name, client, signed_up(node, name, f"owner@{name}.example", "owner")


def mint(client: httpx.Client, status: int = 201, **body: object) -> dict:
    made = client.post(
        "/api/sessions", json={"user_id": f"u-{secrets.token_hex(3)}", "mode": "chat", **body}
    )
    assert made.status_code == status, made.text
    return made.json()


def counted(owner: Browser) -> dict:
    """The owner's usage page, with the day it was read on (UTC) checked: 30 days in a
    row, today last."""
    before = datetime.now(UTC).date()
    page = owner.request("GET", "/api/account/usage")
    after = datetime.now(UTC).date()
    assert page.status_code == 200, page.text
    body = page.json()
    days = [date.fromisoformat(d["date"]) for d in body["turns_per_day"]]
    assert days[-1] in (before, after) and len(days) == usage.DAYS
    assert days == [days[-1] - timedelta(days=back) for back in range(usage.DAYS - 1, -1, -1)]
    return body


def test_turns_are_counted_once_each_over_http_and_the_socket(
    node: Server, fake: FakeOpenAI
) -> None:
    _, client, owner = tenant(node)
    first = client.post(
        TURN, json={"user_id": "u1", "message": "hi"}, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == 200, first.text
    replay = client.post(
        TURN, json={"user_id": "u1", "message": "hi"}, headers={"Idempotency-Key": "k1"}
    )
    assert replay.headers["idempotent-replayed"] == "true"
    assert client.post(TURN, json={"user_id": "u1"}).status_code == 400
    assert client.post(TURN, json={"user_id": "u1", "message": "again"}).status_code == 200
    # The key's window (KEY_RPM) is spent: the replay counted in it, as any request does.
    limited = client.post(TURN, json={"user_id": "u1", "message": "more"})
    assert limited.status_code == 429, limited.text
    assert len(fake.calls()) == 2
    # Over the socket: two turns of a session whose budget holds two.
    made = client.post(
        "/api/personas", json={"name": "Two", "publishSettings": {"sessionInteractionLimit": 2}}
    )
    assert made.status_code == 201, made.text
    minted = mint(client, persona_id=made.json()["id"])

    async def talk() -> int | None:
        async with opened(minted["ws_url"]) as live:
            await live.next()
            await live.send("user.message", text="one")
            await live.until("budget")
            await live.send("user.message", text="two")
            return (await live.closed())[1]

    assert asyncio.run(talk()) == 4005
    page = counted(owner)
    assert page["turns_per_day"][-1]["turns"] == 4
    assert sum(d["turns"] for d in page["turns_per_day"]) == 4
    assert page["sessions_closed"] == [{"code": 4005, "count": 1}]
    assert page["usage"] == client.get("/api/subscription/limits").json()["usage"]


def test_sessions_closed_are_counted_once_each_by_code(node: Server) -> None:
    _, client, owner = tenant(node)
    deleted = mint(client)["session_id"]
    assert client.delete(f"/api/sessions/{deleted}").status_code == 204
    assert client.delete(f"/api/sessions/{deleted}").status_code == 404  # ended once
    assert client.get(f"/api/sessions/{deleted}").json()["ended_code"] == 1000
    revoked = mint(client)["session_id"]
    disabled = owner.request("PATCH", "/api/account/api-keys/primary", json={"disabled": True})
    assert disabled.status_code == 200, disabled.text
    owner.request("PATCH", "/api/account/api-keys/primary", json={"disabled": False})
    assert client.get(f"/api/sessions/{revoked}").json()["ended_code"] == 4001
    assert counted(owner)["sessions_closed"] == [
        {"code": 1000, "count": 1},
        {"code": 4001, "count": 1},
    ]


def test_the_live_view_has_each_sessions_status_and_the_capacity(node: Server) -> None:
    _, client, _ = tenant(node)
    live, ready = mint(client), mint(client)
    queued = mint(client, status=202)

    async def listed_while_connected() -> dict:
        async with opened(live["ws_url"]) as socket:
            await socket.next()
            return client.get("/api/sessions").json()

    page = asyncio.run(listed_while_connected())
    items = page["items"]
    assert [i["session_id"] for i in items[:2]] == [live["session_id"], ready["session_id"]]
    assert [i["status"] for i in items] == ["live", "ready", "queued"]
    assert page["capacity"] == {
        "max_concurrent_sessions": Plan().max_concurrent_sessions,
        "account_sessions": 3,
        "max_sessions": MAX_SESSIONS,
        "slots_held": 2,
        "waiting": 1,
        "waiting_room_size": ROOM,
    }
    assert queued["status"] == "queued"


@ON_BOTH
async def test_closes_count_on_their_utc_day_and_thirty_days_read_with_zeros(
    state: Client,
) -> None:
    clock = Clock(datetime(2025, 6, 2, 23, 59, 59, tzinfo=UTC).timestamp())
    store = make_store(state, clock)
    before_midnight = await store.mint(ACCOUNT, "u1", persona(), "chat", account_cap=CAP)
    assert await store.end(ACCOUNT, before_midnight.session.id, 1000)
    clock.now += 2  # 3 June, 00:00:01
    spent = await store.mint(ACCOUNT, "u2", persona(), "chat", account_cap=CAP)
    assert await store.end(ACCOUNT, spent.session.id, 4005)
    unused = await store.mint(ACCOUNT, "u3", persona(), "chat", account_cap=CAP)
    clock.now += CONNECT + 1
    assert await store.live(ACCOUNT) == []  # its connect window lapsed: ended 4001 here
    assert not await store.end(ACCOUNT, unused.session.id, 1000)
    assert (await store.get(ACCOUNT, unused.session.id)).ended == 4001

    june_3 = await usage.read(state, ACCOUNT, today=date(2025, 6, 3))
    assert [d.date for d in june_3.turns_per_day] == [
        (date(2025, 5, 5) + timedelta(days=n)).isoformat() for n in range(30)
    ]
    assert {d.turns for d in june_3.turns_per_day} == {0}
    assert [(c.code, c.count) for c in june_3.sessions_closed] == [(1000, 1), (4001, 1), (4005, 1)]
    june_2 = await usage.read(state, ACCOUNT, today=date(2025, 6, 2))
    assert [(c.code, c.count) for c in june_2.sessions_closed] == [(1000, 1)]
    # Thirty days on, 2 June has left the window; 3 June is its first day.
    july_2 = await usage.read(state, ACCOUNT, today=date(2025, 7, 2))
    assert [(c.code, c.count) for c in july_2.sessions_closed] == [(4001, 1), (4005, 1)]
    assert (await usage.read(state, OTHER, today=date(2025, 6, 3))).sessions_closed == []
    kept = await state.ttl(keyspace.AccountKeys(ACCOUNT).activity("2025-06-03"))
    assert usage.DAYS * 86_400 < kept <= usage.KEEP_SECONDS
