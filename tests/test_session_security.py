"""Issue 21's "should fix" items on live sessions, against real ``rapport serve`` processes
(two on one Redis where a socket must close on another node) and real ``websockets``
clients: a key slot disabled or regenerated ends the sessions and tickets it minted (4001,
wherever their sockets are); a wrong secret answers the same whether or not the session or
ticket exists; a refused upgrade is logged at info; the account's allowed origins cover
sockets and browser mints, and never the server's own pages."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed

from engine import keyspace
from tests.conftest import ChromaServer, RedisServer, Server, running_together
from tests.test_sessions import Live, on, opened, types, unique
from tests.test_waiting_room import opened_from, problem, refused

SESSIONS = "/api/sessions"


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    running = RedisServer(tmp_path_factory.mktemp("security-redis"))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory,
    shared_redis: RedisServer,
    chroma_server: ChromaServer,
) -> Iterator[tuple[Server, Server]]:
    """A deployment of two: one Redis and one Chroma server for both. The nodes start at
    once: no test here needs to know which of them made the demo account."""
    a, b = (
        Server(
            tmp_path_factory.mktemp(name) / "data",
            RAPPORT_REDIS_URL=shared_redis.url,
            RAPPORT_CHROMA_URL=chroma_server.url,
        )
        for name in ("security-a", "security-b")
    )
    with running_together(a, b):
        yield a, b


@pytest.fixture(scope="module")
def node(nodes: tuple[Server, Server]) -> Server:
    return nodes[0]


@pytest.fixture(scope="module")
def other_node(nodes: tuple[Server, Server]) -> Server:
    return nodes[1]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A deployment of one slot: the second session minted waits in line with a ticket."""
    running = Server(tmp_path_factory.mktemp("security-full") / "data", RAPPORT_MAX_SESSIONS="1")
    running.start()
    yield running
    running.retire()


@contextlib.asynccontextmanager
async def backend(server: Server, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"X-Api-Key": key}, timeout=10
    ) as client:
        yield client


async def mint(client: httpx.AsyncClient, status: int = 201, **headers: str) -> dict[str, Any]:
    response = await client.post(
        SESSIONS, json={"user_id": unique("user"), "mode": "chat"}, headers=headers
    )
    assert response.status_code == status, response.text
    return response.json()


# The operator's commands below run the CLI's ``main`` in this process (a subprocess is
# ~0.7 s a command): what is tested is what the change does to sessions, on every node;
# tests/test_auth.py runs the same commands as subprocesses.


def second_key(server: Server, account: str) -> str:
    issued = server.cli_in_process("keys", "create", "--account", account, "--slot", "secondary")
    assert issued.returncode == 0, issued.stderr
    return next(line for line in issued.stdout.splitlines() if line.startswith("rk_live_"))


def revoke(server: Server, action: str, account: str) -> str | None:
    """``rapport keys ACTION --slot primary``; the new key when regenerated."""
    done = server.cli_in_process("keys", action, "--account", account, "--slot", "primary")
    assert done.returncode == 0, done.stderr
    return next((line for line in done.stdout.splitlines() if line.startswith("rk_live_")), None)


async def closing(live: Live) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """The events read until the server closed the socket, its close code and reason."""
    read: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            read.append(await live.next())
    assert live.socket.close_code is not None
    return read, live.socket.close_code, live.socket.close_reason


async def shut(url: str) -> tuple[int | None, str | None]:
    """The close code and reason of a socket the server accepts and then closes."""
    async with opened(url) as live:
        assert live.socket.response.status_code == 101
        events, code, reason = await closing(live)
    assert events == []
    return code, reason


def drop_key_slot(server: Server, session_id: str, account_id: str) -> None:
    """Make the session's record look like one minted before the slot was kept."""
    client = redis.Redis.from_url(server.env["RAPPORT_REDIS_URL"], decode_responses=True)
    key = keyspace.AccountKeys(account_id).session(session_id)
    record = json.loads(client.hget(key, "record"))
    del record["key_slot"]
    client.hset(key, "record", json.dumps(record))
    client.close()


# --- a key slot disabled or regenerated -------------------------------------------------------


@pytest.mark.parametrize("action", ["disable", "regenerate"])
async def test_revoking_a_key_slot_closes_its_sessions_4001_on_every_node(
    node: Server, other_node: Server, action: str
) -> None:
    account = unique("revoke")
    primary = node.new_tenant(account)
    secondary = second_key(node, account)
    async with backend(node, primary) as first, backend(node, secondary) as second:
        here, there, old = await mint(first), await mint(first), await mint(first)
        kept = await mint(second)
        drop_key_slot(node, old["session_id"], old["token"].split(".")[0])
        async with (
            opened(here["ws_url"]) as a,
            opened(on(other_node, there["ws_url"])) as b,
            opened(old["ws_url"]) as c,
            opened(on(other_node, kept["ws_url"])) as d,
        ):
            for live in (a, b, c, d):
                assert (await live.next())["type"] == "session.ready"
            new_key = revoke(node, action, account)
            for live in (a, b):
                events, code, reason = await closing(live)
                assert types(events) == ["session.closing"]
                assert (events[0]["code"], events[0]["reason"]) == (4001, "API key revoked")
                assert (code, reason) == (4001, "API key revoked")
            # The other slot's session, and one minted before slots were kept, live on.
            await c.quiet(0.2)
            await d.quiet(0.2)
        # The revoked tokens stay refused, 4001 on either node.
        assert (await shut(here["ws_url"]))[0] == 4001
        assert (await shut(on(other_node, there["ws_url"])))[0] == 4001
        listed = (await second.get(SESSIONS)).json()["items"]
        assert {item["session_id"] for item in listed} == {old["session_id"], kept["session_id"]}
        for item in listed:
            assert (await second.delete(f"{SESSIONS}/{item['session_id']}")).status_code == 204
    if new_key is not None:
        async with backend(node, new_key) as renewed:
            minted = await mint(renewed)
            assert (await renewed.delete(f"{SESSIONS}/{minted['session_id']}")).status_code == 204


async def test_revoking_a_key_slot_ends_the_tickets_it_minted(full: Server) -> None:
    account = unique("tickets")
    primary = full.new_tenant(account)
    async with backend(full, primary) as client:
        live_one = await mint(client)
        queued = await mint(client, status=202)
        async with (
            opened(live_one["ws_url"]) as live,
            opened(queued["queue_ws_url"]) as waiting,
        ):
            assert (await live.next())["type"] == "session.ready"
            assert (await waiting.next())["type"] == "queue.position"
            new_key = revoke(full, "regenerate", account)
            events, code, _ = await closing(live)
            assert types(events) == ["session.closing"] and code == 4001
            events, code, _ = await closing(waiting)
            assert events == [] and code == 4001
        polled = await client.get(queued["poll_url"])
        assert polled.status_code == 401
        assert problem(polled)["code"] == "auth.session_token_invalid"
    assert new_key is not None
    async with backend(full, new_key) as renewed:
        minted = await mint(renewed)  # both slots were freed: the deployment's one is free
        assert (await renewed.delete(f"{SESSIONS}/{minted['session_id']}")).status_code == 204


# --- a wrong secret tells nothing -------------------------------------------------------------


def forged(credential: str, session_id: str | None = None) -> str:
    """The credential with another secret, for its session or for ``session_id``."""
    account_id, own_id, _ = credential.split(".")
    return f"{account_id}.{session_id or own_id}.{'x' * 43}"


async def test_a_wrong_secret_closes_4001_whether_or_not_the_session_exists(node: Server) -> None:
    async with backend(node, node.new_tenant(unique("secret"))) as client:
        minted = await mint(client)
        path = minted["ws_url"].split("?")[0]
        nowhere = str(uuid.uuid4())
        existing = await shut(f"{path}?token={forged(minted['token'])}")
        elsewhere = path.replace(minted["session_id"], nowhere)
        missing = await shut(f"{elsewhere}?token={forged(minted['token'], nowhere)}")
        assert existing == missing and existing[0] == 4001
        # A genuine token tells that its own session ended: 4004.
        assert (await client.delete(f"{SESSIONS}/{minted['session_id']}")).status_code == 204
        assert (await shut(minted["ws_url"]))[0] == 4004


async def test_a_wrong_ticket_is_refused_the_same_whether_or_not_the_place_exists(
    full: Server,
) -> None:
    async with backend(full, full.new_tenant(unique("ticket"))) as client:
        live_one = await mint(client)
        queued = await mint(client, status=202)
        session_id, ticket = queued["poll_url"].split("/")[-1].split("?")[0], queued["ticket"]
        nowhere = str(uuid.uuid4())
        poll_url = queued["poll_url"].split("?")[0]
        socket_url = queued["queue_ws_url"].split("?")[0]
        answers = []
        for place, credential in ((session_id, forged(ticket)), (nowhere, forged(ticket, nowhere))):
            polled = await client.get(
                poll_url.replace(session_id, place), params={"ticket": credential}
            )
            left = await client.delete(
                poll_url.replace(session_id, place), params={"ticket": credential}
            )
            closed = await shut(f"{socket_url.replace(session_id, place)}?ticket={credential}")
            answers.append((polled.status_code, polled.json()["code"], left.status_code, closed))
        assert answers[0] == answers[1]
        assert answers[0][:3] == (401, "auth.session_token_invalid", 401)
        assert answers[0][3][0] == 4001
        # A place given up: its own ticket is told it is gone, a wrong one still learns nothing.
        assert (await client.delete(queued["poll_url"])).status_code == 204
        assert (await client.get(queued["poll_url"])).status_code == 404
        wrong = await client.get(poll_url, params={"ticket": forged(ticket)})
        assert wrong.status_code == 401
        await client.delete(f"{SESSIONS}/{live_one['session_id']}")


# --- a refused upgrade is normal traffic ------------------------------------------------------


async def test_a_refused_upgrade_is_logged_at_info(node: Server) -> None:
    account = unique("logged")
    async with backend(node, node.new_tenant(account)) as client:
        added = node.cli_in_process(
            "accounts", "origins", "add", "--account", account, "https://shop.example"
        )
        assert added.returncode == 0, added.stderr
        minted = await mint(client)
        answer = await refused(minted["ws_url"], "https://evil.example")
        assert answer.status_code == 403
        line = node.wait_for_log(answer.headers["x-request-id"])
        assert (line["level"], line["status"]) == ("info", 403)
        # uvicorn writes its own line, if any, right after the refusal: a request sent after
        # it is logged after that.
        after = await client.get(f"{SESSIONS}/{minted['session_id']}")
        node.wait_for_log(after.headers["x-request-id"])
        await client.delete(f"{SESSIONS}/{minted['session_id']}")
    errors = [
        entry
        for entry in map(json.loads, node.stderr_path.read_text().splitlines())
        if entry["level"] in ("error", "critical")
    ]
    assert errors == []


# --- allowed origins --------------------------------------------------------------------------


async def test_allowed_origins_cover_sockets_and_browser_mints_but_not_the_servers_own(
    node: Server,
) -> None:
    account = unique("origins")
    async with backend(node, node.new_tenant(account)) as client:
        added = node.cli_in_process(
            "accounts", "origins", "add", "--account", account, "https://shop.example"
        )
        assert added.returncode == 0, added.stderr
        own = f"http://127.0.0.1:{node.port}"
        # A page of another site that holds the key cannot mint; no Origin (a backend), a
        # listed one, and the server's own pages (the playground) can.
        refusal = await mint(client, 403, Origin="https://evil.example")
        assert refusal["code"] == "auth.origin_not_allowed"
        other_port = f"http://127.0.0.1:{node.port + 1 if node.port < 65535 else node.port - 1}"
        assert (await mint(client, 403, Origin=other_port))["code"] == "auth.origin_not_allowed"
        minted = [
            await mint(client),
            await mint(client, Origin="https://shop.example"),
            await mint(client, Origin=own),
        ]
        # Other routes are not covered: the list is about minting and sockets.
        listed = await client.get(SESSIONS, headers={"Origin": "https://evil.example"})
        assert listed.status_code == 200
        # Sockets: the same rule.
        answer = await refused(minted[0]["ws_url"], "https://evil.example")
        assert answer.status_code == 403 and problem(answer)["code"] == "auth.origin_not_allowed"
        assert (await refused(minted[0]["ws_url"], other_port)).status_code == 403
        async with opened_from(minted[2]["ws_url"], own) as live:
            assert (await live.next())["type"] == "session.ready"
        async with opened_from(minted[1]["ws_url"], "https://shop.example") as live:
            assert (await live.next())["type"] == "session.ready"
        for session in minted:
            await client.delete(f"{SESSIONS}/{session['session_id']}")
