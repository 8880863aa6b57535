"""Seed 002's "Chat" and "Chat History" against a real server: the seed's example run as
printed, one history for every transport (the conversation API, v2 chat, live sessions),
isolation between accounts, paging, bad input, the context reaching the model; and the
users index that the history lists, exact under concurrency, against a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from api.clone_chat import chat_id_of, user_id_of
from engine import keyspace
from engine.memory import MemoryStore, Turn
from loadtest.fake_llm import DEFAULT_REPLY, FakeOpenAI
from tests.conftest import Server
from tests.seed_002 import examples

CHAT = "/api/kb/v2/chat"
CHATS = "/api/persona/chats"
MESSAGES = "/api/persona/messages/"
SEED = examples()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def tenant(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh account (so its chats are only this test's), as its backend's client."""
    key = server.new_tenant(unique("clone"))
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"X-Api-Key": key}, timeout=30
    ) as client:
        yield client


async def chat(client: httpx.AsyncClient, user_id: str, message: str, **more: str) -> dict:
    response = await client.post(
        CHAT, json={"chat_data": {"user_id": user_id, "message": message, **more}}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def messages(client: httpx.AsyncClient, chat_id: str) -> list[str]:
    response = await client.get(MESSAGES + chat_id)
    assert response.status_code == 200, response.text
    return response.json()["messages"]


async def live_turn(client: httpx.AsyncClient, user_id: str, text: str) -> str:
    """One chat turn over a live session's socket; the reply's text."""
    minted = await client.post("/api/sessions", json={"user_id": user_id, "mode": "chat"})
    assert minted.status_code == 201, minted.text
    async with connect(minted.json()["ws_url"], open_timeout=10, close_timeout=2) as socket:
        assert json.loads(await socket.recv())["type"] == "session.ready"
        await socket.send(json.dumps({"type": "user.message", "text": text}))
        while (event := json.loads(await asyncio.wait_for(socket.recv(), 30)))["type"] != (
            "reply.done"
        ):
            pass
        await socket.send(json.dumps({"type": "session.end"}))
    assert event["status"] == "completed"
    return event["text"]


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


# --- the seed's examples ---------------------------------------------------------------------


async def test_the_seeds_chat_example_runs_as_printed(tenant: httpx.AsyncClient) -> None:
    seed = SEED["POST /api/kb/v2/chat"]
    response = await tenant.post(CHAT, json=seed["request"])
    assert response.status_code == 200, response.text
    body = response.json()
    # The seed's keys, plus the knowledge the reply used.
    assert set(body) == set(seed["response"]) | {"sources"}
    assert body["status"] == "success" and body["sources"] == []
    assert isinstance(body["response"], str) and body["response"]
    assert user_id_of(body["chat_id"]) == seed["request"]["chat_data"]["user_id"]
    # A turn counts against the key's turn window, like the conversation API's.
    assert "RateLimit-Remaining" in response.headers

    listed = (await tenant.get(CHATS)).json()
    assert set(listed) == set(SEED["GET /api/persona/chats"]["response"]) | {"total_count"}
    assert listed["status"] == "success" and listed["total_count"] == 1
    (item,) = listed["chats"]
    assert set(item) == set(SEED["GET /api/persona/chats"]["response"]["chats"][0])
    assert item == {
        "chat_id": body["chat_id"],
        "user_id": "user123",
        "messages": ["Hello, I need help with...", body["response"]],
    }

    shown = await tenant.get(MESSAGES + body["chat_id"])
    assert shown.status_code == 200
    assert set(shown.json()) == set(SEED["GET /api/persona/messages/"]["response"])
    assert shown.json() == {"status": "success", "messages": item["messages"]}


def test_chat_ids_are_reversible_and_url_safe() -> None:
    for user_id in ("user123", "a", "ü/ser:1?x=#y", "☕" * 128, "x" * 128):
        chat_id = chat_id_of(user_id)
        assert chat_id.startswith("chat_")
        assert set(chat_id) <= set(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
        )
        assert user_id_of(chat_id) == user_id
    assert chat_id_of("user123") == "chat_dXNlcjEyMw"


# --- one history for every transport ---------------------------------------------------------


async def test_chats_hold_the_turns_of_every_transport_latest_first(
    tenant: httpx.AsyncClient,
) -> None:
    over_http, over_chat, over_live, everywhere = (
        unique(name) for name in ("http", "chat", "live", "all")
    )
    said: dict[str, list[str]] = {
        user: [] for user in (over_http, over_chat, over_live, everywhere)
    }

    async def conversation(user: str, text: str) -> None:
        response = await tenant.post(
            "/api/v1/conversation", json={"user_id": user, "message": text}
        )
        assert response.status_code == 200, response.text
        said[user] += [text, response.json()["reply"]]

    async def v2(user: str, text: str) -> None:
        said[user] += [text, (await chat(tenant, user, text))["response"]]

    async def live(user: str, text: str) -> None:
        said[user] += [text, await live_turn(tenant, user, text)]

    await conversation(everywhere, "Hello over HTTP.")
    await conversation(over_http, "What can you help with?")
    await v2(over_chat, "Hi from the clone API.")
    await live(over_live, "Hello from a live session.")
    await v2(everywhere, "And now over v2 chat.")
    await live(everywhere, "And finally live.")

    listed = (await tenant.get(CHATS)).json()
    assert listed["total_count"] == 4
    assert [c["user_id"] for c in listed["chats"]] == [everywhere, over_live, over_chat, over_http]
    for item in listed["chats"]:
        assert item["chat_id"] == chat_id_of(item["user_id"])
        assert item["messages"] == said[item["user_id"]]
        assert await messages(tenant, item["chat_id"]) == said[item["user_id"]]
    assert said[everywhere][::2] == [
        "Hello over HTTP.",
        "And now over v2 chat.",
        "And finally live.",
    ]


async def test_a_forgotten_user_has_no_chat(tenant: httpx.AsyncClient) -> None:
    kept, gone = unique("kept"), unique("gone")
    await chat(tenant, kept, "Remember me.")
    gone_id = (await chat(tenant, gone, "Forget me."))["chat_id"]
    assert (await tenant.delete(f"/api/v1/users/{gone}/memory")).status_code == 204
    listed = (await tenant.get(CHATS)).json()
    assert [c["user_id"] for c in listed["chats"]] == [kept] and listed["total_count"] == 1
    assert_problem(await tenant.get(MESSAGES + gone_id), 404, "resource.not_found")
    # Talking again starts a new conversation under the same chat_id.
    assert (await chat(tenant, gone, "Hello again."))["chat_id"] == gone_id
    assert (await messages(tenant, gone_id))[0] == "Hello again."


# --- isolation, paging, bad input ------------------------------------------------------------


async def test_another_accounts_chat_is_404_and_never_listed(
    server: Server, tenant: httpx.AsyncClient
) -> None:
    mine = await chat(tenant, unique("mine"), "A secret of mine.")
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"X-Api-Key": server.new_tenant(unique("other"))},
        timeout=30,
    ) as other:
        assert_problem(await other.get(MESSAGES + mine["chat_id"]), 404, "resource.not_found")
        listed = (await other.get(CHATS)).json()
        assert listed == {"status": "success", "chats": [], "total_count": 0}
        # The same user_id in the other account is the other account's own conversation.
        user = user_id_of(mine["chat_id"])
        assert user is not None
        theirs = await chat(other, user, "Someone else entirely.")
        assert theirs["chat_id"] == mine["chat_id"]
        assert (await messages(other, theirs["chat_id"]))[0] == "Someone else entirely."
    assert (await messages(tenant, mine["chat_id"]))[0] == "A secret of mine."


async def test_chats_page_with_limit_and_offset(tenant: httpx.AsyncClient) -> None:
    users = [unique(f"user{n}") for n in range(5)]
    for user in users:
        await chat(tenant, user, f"I am {user}.")
    newest_first = users[::-1]

    async def page(**query: int) -> dict:
        response = await tenant.get(CHATS, params=query)
        assert response.status_code == 200, response.text
        return response.json()

    assert [c["user_id"] for c in (await page())["chats"]] == newest_first  # limit 50
    first, last = await page(limit=2), await page(limit=2, offset=4)
    assert [c["user_id"] for c in first["chats"]] == newest_first[:2]
    assert [c["user_id"] for c in last["chats"]] == newest_first[4:]
    assert first["total_count"] == last["total_count"] == 5
    assert (await page(limit=200, offset=5))["chats"] == []
    # A user who talks again moves to the front.
    await chat(tenant, users[0], "Me again.")
    assert [c["user_id"] for c in (await page(limit=1))["chats"]] == [users[0]]
    for bad in ({"limit": 0}, {"limit": 201}, {"limit": "many"}, {"offset": -1}):
        assert_problem(await tenant.get(CHATS, params=bad), 400, "validation.failed")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "chat_id",
    [
        "user123",
        "chat_",
        "chat_!!!",
        "chat_dXNlcjEyMw==",  # padded
        "chat_dXNlcjEyMx",  # non-canonical trailing bits
        "chat_dXNlcjEyM",  # a length base64 cannot have
        "chat_" + b64(b"\xff\xfe"),  # not UTF-8
        "chat_" + b64(b"x" * 129),  # longer than any user_id
        # Well formed, and no user of the test's account: fixed, so that every test process
        # collects the same cases.
        "chat_" + b64(b"nobody-never-chatted-here"),
        "chat%2Fx",
    ],
)
async def test_malformed_or_unknown_chat_ids_are_404(
    tenant: httpx.AsyncClient, chat_id: str
) -> None:
    assert_problem(await tenant.get(MESSAGES + chat_id), 404, "resource.not_found")


TOO_LONG = "x" * 4001
BAD_BODIES: list[Any] = [
    {},
    {"chat_data": {}},
    {"chat_data": {"message": "Hi"}},
    {"chat_data": {"user_id": "u"}},
    {"chat_data": "u: Hi"},
    {"chat_data": {"user_id": 5, "message": "Hi"}},
    {"chat_data": {"user_id": "u", "message": None}},
    {"chat_data": {"user_id": "u", "message": ["Hi"]}},
    {"chat_data": {"user_id": "u", "message": "Hi", "context": 7}},
    {"chat_data": {"user_id": "u", "message": "Hi"}, "extra": 1},
    {"chat_data": {"user_id": "u", "message": "Hi", "persona": {"name": "x"}}},
    {"chat_data": {"user_id": "u", "message": ""}},
    {"chat_data": {"user_id": "", "message": "Hi"}},
    {"chat_data": {"user_id": "u" * 129, "message": "Hi"}},
    {"chat_data": {"user_id": "u", "message": TOO_LONG}},
    {"chat_data": {"user_id": "u", "message": "Hi", "context": TOO_LONG}},
    {"user_id": "u", "message": "Hi"},
    ["chat_data"],
    "chat_data",
]


async def test_bad_bodies_are_400_validation_failed_and_spend_nothing(
    tenant: httpx.AsyncClient,
) -> None:
    for body in BAD_BODIES:
        response = await tenant.post(CHAT, json=body)
        assert_problem(response, 400, "validation.failed")
        assert response.json()["errors"], body
    for raw in (
        b"",
        b"null",
        b"{",
        b"not json",
        b'{"chat_data": {"user_id": "u", "message": "Hi"}',
    ):
        response = await tenant.post(
            CHAT, content=raw, headers={"Content-Type": "application/json"}
        )
        assert_problem(response, 400, "validation.failed")
    assert (await tenant.get(CHATS)).json()["total_count"] == 0
    named = await tenant.post(CHAT, json={"chat_data": {"user_id": "u", "message": TOO_LONG}})
    assert list(named.json()["errors"]) == ["chat_data.message"]


async def test_limits_at_the_edges_are_accepted(tenant: httpx.AsyncClient) -> None:
    user = "ü" * 128
    body = await chat(tenant, user, "x" * 4000, context="c" * 4000)
    assert user_id_of(body["chat_id"]) == user
    assert (await messages(tenant, body["chat_id"]))[0] == "x" * 4000


# --- balance and rate limits, as a conversation turn's -----------------------------------------


def test_a_chat_turn_spends_the_balance_and_the_keys_turn_window(server_on) -> None:
    """The same balance and per-key turn window as ``POST /api/v1/conversation``, refused
    in the ``/api/`` family's shape."""
    running = server_on(RAPPORT_KEY_RPM="3")
    name = unique("limits")
    key = running.new_tenant(name)
    body = {"chat_data": {"user_id": "u", "message": "Hello"}}
    with running.client(headers={"X-Api-Key": key}, timeout=30) as client:
        first = client.post(CHAT, json=body)
        assert first.status_code == 200, first.text
        assert first.headers["RateLimit-Limit"] == "3"
        assert first.headers["RateLimit-Remaining"] == "2"
        turn = client.post("/api/v1/conversation", json={"user_id": "u", "message": "Hi"})
        assert turn.status_code == 200 and turn.headers["RateLimit-Remaining"] == "1"
        # A spent balance is 402, in the /api/ family's shape; nothing is remembered. (The
        # balance is set with the CLI's ``main`` in this process: test_limits runs it as the
        # operator's subprocess.)
        shown = running.cli_in_process("balance", "show", "--account", name)
        left = shown.stdout.split(": ")[1].split()[0]
        spent = running.cli_in_process("balance", "add", "--account", name, "--", str(-int(left)))
        assert spent.returncode == 0, spent.stderr
        assert_problem(client.post(CHAT, json=body), 402, "limits.quota_exceeded")
        assert running.cli_in_process("balance", "add", "--account", name, "5").returncode == 0
        # The key's window counts the turns of both APIs (the 402 one too): a fourth is refused.
        limited = client.post(CHAT, json=body)
        assert_problem(limited, 429, "limits.rate_exceeded")
        assert limited.headers["Retry-After"] and limited.headers["RateLimit-Remaining"] == "0"
        assert limited.json()["scope"] == "key", "seed 000: the partition, here the key's slot"
        shown = client.get(MESSAGES + chat_id_of("u")).json()["messages"]
    assert shown[::2] == ["Hello", "Hi"]


# --- the context reaches the model -----------------------------------------------------------


def test_the_context_reaches_the_models_user_message(llm_server: Server, fake: FakeOpenAI) -> None:
    user = unique("ctx")
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}, timeout=30) as client:
        response = client.post(
            CHAT,
            json={
                "chat_data": {
                    "user_id": user,
                    "message": "Which plan suits me?",
                    "context": "The user is on the Pro plan since March.",
                }
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["response"] == DEFAULT_REPLY
        prompt = fake.calls()[-1]["messages"]
        plain = client.post(CHAT, json={"chat_data": {"user_id": user, "message": "Thanks!"}})
        assert plain.status_code == 200, plain.text
        later = fake.calls()[-1]["messages"]
        shown = client.get(MESSAGES + response.json()["chat_id"]).json()["messages"]
    question = prompt[-1]
    assert question["role"] == "user"
    assert question["content"].startswith("Which plan suits me?")
    assert "The user is on the Pro plan since March." in question["content"]
    # Context is for its own turn: neither remembered nor sent again.
    assert "Pro plan" not in json.dumps(later)
    assert later[-1] == {"role": "user", "content": "Thanks!"}
    assert shown[0] == "Which plan suits me?" and shown[2] == "Thanks!"


# --- the users index -------------------------------------------------------------------------

ACCOUNT = "acct-chats"
START = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def turn(n: int) -> Turn:
    return Turn(
        at=START + timedelta(seconds=n), user=f"Message {n}.", reply=f"Reply {n}.",
        request_id=f"req-{n}",
    )  # fmt: skip


async def test_the_users_index_is_exact_under_concurrent_remembers(
    redis: aioredis.Redis,
) -> None:
    store = MemoryStore(redis, max_bytes=600)  # small: remembering also trims and folds
    users = [f"user:{n}/ü" for n in range(20)]
    order = [(users[n % 20], n) for n in range(400)]
    random.Random(7).shuffle(order)  # turns stored out of time order
    await asyncio.gather(*(store.remember(ACCOUNT, user, turn(n)) for user, n in order))

    index = keyspace.AccountKeys(ACCOUNT).memory_users
    scored = dict(await redis.zrange(index, 0, -1, withscores=True))
    latest = {user: max(n for u, n in order if u == user) for user in users}
    # Every user once, at their latest turn's time, however late an older turn was stored.
    assert scored == {
        u: (START + timedelta(seconds=n)).timestamp() * 1000 for u, n in latest.items()
    }
    page, total = await store.conversations(ACCOUNT, limit=200, offset=0)
    assert total == 20
    assert [user for user, _ in page] == sorted(users, key=latest.__getitem__, reverse=True)
    for user, turns in page:
        assert turns and turns == (await store.history(ACCOUNT, user, limit=100, offset=0))[0][::-1]

    # Forgetting races with remembering: afterwards a user is listed exactly when they have
    # a memory, and the forgotten are gone.
    forgotten = users[:10]
    await asyncio.gather(
        *(store.forget(ACCOUNT, user) for user in forgotten),
        *(store.remember(ACCOUNT, user, turn(1000 + n)) for n, user in enumerate(users[5:15])),
    )
    listed = set(await redis.zrange(index, 0, -1))
    remembered = {
        u for u in users if await redis.exists(keyspace.AccountKeys(ACCOUNT).memory_meta(u))
    }
    assert listed == remembered and set(users[15:]) <= listed
    assert not listed & set(users[:5])
    for user in users:
        await store.forget(ACCOUNT, user)
    assert await redis.exists(index) == 0
    assert await store.conversations(ACCOUNT, limit=50, offset=0) == ([], 0)
    assert await store.conversation(ACCOUNT, users[0]) is None
