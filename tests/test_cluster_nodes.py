"""One deployment of three ``rapport serve`` nodes, A, B and C, on a real Redis Cluster (3
masters + 3 replicas, tests/redis_cluster.py) and one Chroma server (issue 22, items 2 and
3), started once for this module, all three at once.

What is checked is what only several nodes on a cluster can get wrong: the demo account made
once by nodes starting together; a session that moves between nodes, one of them SIGKILLed;
a newer socket on one node replacing another node's (4009); the account's and the
deployment's caps, the waiting room's order, a key's rate limit and an Idempotency-Key, each
exact while requests are split over the nodes; and, last (it leaves one master without a
replica), a master's failover: the accounts on other masters never notice, and a live socket
on the dead master's account stays open through it.

B is SIGKILLed by one test; the tests after it use A and C only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from engine import keyspace
from engine.apikeys import KeyStore
from loadtest.fake_llm import FakeOpenAI
from tests.conftest import ChromaServer, Server, llm_env
from tests.redis_cluster import NODE_TIMEOUT_MS, RedisCluster, cli
from tests.test_limits import burst, codes
from tests.test_sessions import Live, on, opened, said, seqs, types, unique
from tests.test_waiting_room import Backend, drained, gauges, moves_to, next_of, session_of

URL = "/api/v1/conversation"
CAP = 4
"""RAPPORT_MAX_SESSIONS of the deployment."""
ROOM = 20
"""Its RAPPORT_WAITING_ROOM_SIZE."""
KEY_RPM = 40
"""RAPPORT_KEY_RPM on every node: one window per key, whichever node counts a request."""
REDIS_TIMEOUT_S = 1
"""RAPPORT_REDIS_TIMEOUT: a request to the dead master gives up after this."""
LOCAL = "127.0.0.1"
GLOBAL_KEYS = (
    keyspace.rate_window("v1-ip", LOCAL),
    keyspace.rate_window("Global", LOCAL),
    keyspace.rate_window("SessionWebSocket", LOCAL),
    keyspace.DeploymentKeys.slots,
    keyspace.KbQueueKeys.ring,
    keyspace.ACCOUNTS,
    keyspace.ACCOUNT_NAMES,
)
"""Keys every account's requests share (the client IP's windows, the deployment's slots,
the knowledge queue, the account indexes): the failover test kills a master holding none."""


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI, redis_cluster: RedisCluster,
    chroma_server: ChromaServer,
) -> Iterator[tuple[Server, Server, Server]]:  # fmt: skip
    """A, B and C, started at the same moment on an empty cluster; each dials its own
    master."""
    made = tuple(
        Server(
            tmp_path_factory.mktemp(f"nodes-{name}") / "data",
            **llm_env(
                fake_llm,
                RAPPORT_REDIS_URL=f"redis://{LOCAL}:{port}",
                RAPPORT_CHROMA_URL=chroma_server.url,
                RAPPORT_MAX_SESSIONS=str(CAP),
                RAPPORT_WAITING_ROOM_SIZE=str(ROOM),
                RAPPORT_KEY_RPM=str(KEY_RPM),
                RAPPORT_REDIS_TIMEOUT=str(REDIS_TIMEOUT_S),
            ),
        )
        for name, port in zip("abc", redis_cluster.ports, strict=False)
    )
    try:
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(Server.start, made))
        yield made  # type: ignore[misc]
    finally:
        for running in made:
            running.stop()  # a killed one: reaped already, nothing to stop


def tenant(server: Server, *, plan: int | None = None) -> tuple[str, str]:
    """A new account (its id, its primary key), its plan set as an operator does: setup, so
    the CLI's ``main`` runs in this process (a subprocess is ~0.7 s a command)."""
    name = unique("nodes")
    created = server.cli_in_process("accounts", "create", name)
    assert created.returncode == 0, created.stderr
    account_id = created.stdout.split(" with id ")[1].split()[0]
    if plan is not None:
        planned = server.cli_in_process(
            "accounts", "plan", "--account", name, "--max-concurrent-sessions", str(plan)
        )
        assert planned.returncode == 0, planned.stderr
    issued = server.cli_in_process("keys", "create", "--account", name)
    assert issued.returncode == 0, issued.stderr
    key = next(line for line in issued.stdout.splitlines() if line.startswith("rk_live_"))
    return account_id, key


@contextlib.asynccontextmanager
async def backend_of(key: str, *servers: Server) -> AsyncIterator[Backend]:
    """The account's backend on these nodes; every session it left is ended afterwards."""
    backend = Backend(key, servers)
    try:
        yield backend
    finally:
        await backend.close()


# --- one deployment ----------------------------------------------------------------------------


def test_three_nodes_started_at_once_create_the_demo_account_once(
    nodes: tuple[Server, Server, Server],
) -> None:
    keyed = [node for node in nodes if (node.data_dir / "demo_api_key").exists()]
    assert len(keyed) == 1, "exactly one node made the demo account and printed its key"
    listed = nodes[1].cli("accounts", "list")
    assert listed.returncode == 0, listed.stderr
    demo = [line for line in listed.stdout.splitlines() if line.split()[1] == "demo"]
    assert len(demo) == 1 and demo[0].count("primary") == 1, listed.stdout
    assert "secondary" not in demo[0], "one key issued, not one per node"
    for node in nodes:
        with node.client(headers={"X-Api-Key": keyed[0].demo_key}) as client:
            assert client.get("/api/personas/default").status_code == 200


async def test_the_accounts_cap_is_exact_under_mints_split_over_the_nodes(
    nodes: tuple[Server, Server, Server],
) -> None:
    _, key = await asyncio.to_thread(tenant, nodes[0], plan=3)
    async with backend_of(key, *nodes) as shop:
        answers = await asyncio.gather(*(shop.mint(nodes[i % 3]) for i in range(15)))
        statuses = Counter(r.status_code for r in answers)
        # The deployment has CAP (4) slots: the account's three are all ready, none queued.
        assert statuses == {201: 3, 429: 12}, [r.text for r in answers if r.status_code >= 500]
        assert {r.json()["code"] for r in answers if r.status_code == 429} == {
            "limits.concurrent_session"
        }
        assert await gauges(nodes[2]) == (3, 0)  # the refused ones took nothing
    await drained(nodes[0])


async def test_the_deployments_cap_is_exact_and_the_line_admits_across_nodes_in_order(
    nodes: tuple[Server, Server, Server],
) -> None:
    waiting = 8
    _, key = await asyncio.to_thread(tenant, nodes[0], plan=100)
    async with backend_of(key, *nodes) as shop, contextlib.AsyncExitStack() as stack:
        answers = await asyncio.gather(
            *(shop.mint(nodes[i % 3]) for i in range(CAP + waiting))
        )  # fmt: skip
        assert Counter(r.status_code for r in answers) == {201: CAP, 202: waiting}
        for node in nodes:  # every node sees the one deployment
            assert await gauges(node) == (CAP, waiting)
        ready = [r.json()["session_id"] for r in answers if r.status_code == 201]
        places = sorted(
            ((r.json(), i) for i, r in enumerate(answers) if r.status_code == 202),
            key=lambda place: place[0]["position"],
        )
        assert [p["position"] for p, _ in places] == list(range(1, waiting + 1))
        # Each place is watched on a node it was not minted on.
        line: list[tuple[dict[str, Any], Live]] = []
        for place, i in places:
            watch = await stack.enter_async_context(
                opened(on(nodes[(i + 1) % 3], place["queue_ws_url"]))
            )
            assert (await watch.next())["position"] == place["position"]
            line.append((place, watch))
        # A slot freed on one node goes to the head of the line, whichever node holds its
        # socket; the admitted session ended on yet another node frees the next slot.
        freed = ready.pop()
        turn = 0
        while line:
            await shop.on(nodes[turn % 3]).delete(f"/api/sessions/{freed}")
            place, watch = line.pop(0)
            read, _ = await next_of(watch, "queue.admitted", 5)
            offer = read[-1]
            assert offer["session_id"] == session_of(place["ticket"])
            for position, (_, behind) in enumerate(line, start=1):
                await moves_to(behind, position)
            freed = offer["session_id"]
            turn += 1
        await shop.on(nodes[turn % 3]).delete(f"/api/sessions/{freed}")
        assert await gauges(nodes[1]) == (CAP - 1, 0)
    await drained(nodes[0])


def test_a_keys_limit_is_exact_over_the_nodes(nodes: tuple[Server, Server, Server]) -> None:
    _, key = tenant(nodes[0])
    responses = asyncio.run(burst([(node.base_url, key) for node in nodes], KEY_RPM + 20))
    assert codes(responses) == {200: KEY_RPM, "rate_limited": 20}


def test_one_idempotency_key_sent_to_two_nodes_at_once_runs_once(
    nodes: tuple[Server, Server, Server], fake: FakeOpenAI
) -> None:
    fake.configure(delay_s=0.5)
    _, key = tenant(nodes[0])
    headers = {"X-Api-Key": key, "Idempotency-Key": f"req-{uuid.uuid4().hex}"}
    payload = {"user_id": "twice", "message": "Once, please."}

    async def at_once() -> list[httpx.Response]:
        async with (
            httpx.AsyncClient(base_url=nodes[0].base_url, headers=headers, timeout=30) as a,
            httpx.AsyncClient(base_url=nodes[1].base_url, headers=headers, timeout=30) as b,
        ):
            return await asyncio.gather(*(c.post(URL, json=payload) for c in (a, b) * 5))

    responses = asyncio.run(at_once())
    assert len(fake.calls()) == 1
    done = [r for r in responses if r.status_code == 200]
    in_flight = [r for r in responses if r.status_code == 409]
    assert done and len(done) + len(in_flight) == len(responses), [r.text for r in responses]
    assert len({r.content for r in done}) == 1, "every 200 is the one stored reply"
    assert {r.json()["detail"]["code"] for r in in_flight} <= {"idempotency_in_flight"}
    with nodes[2].client(headers={"X-Api-Key": key}) as client:
        assert client.get("/api/v1/users/twice/history").json()["total"] == 1


# --- a session moves between nodes -------------------------------------------------------------


async def test_a_newer_socket_on_c_replaces_the_one_on_b_which_closes_4009(
    nodes: tuple[Server, Server, Server], fake: FakeOpenAI
) -> None:
    a, b, c = nodes
    _, key = await asyncio.to_thread(tenant, a)
    async with backend_of(key, a) as shop:
        minted = await shop.ready(a)
        async with opened(on(b, minted["ws_url"])) as first:
            await first.next()  # attached on B: only now is there a socket to replace
            async with opened(on(c, minted["ws_url"])) as second:
                ready = await second.next()
                gone, code = await first.closed()
                await second.send("user.message", text="Still there?")
                turn = await second.until("budget")
    assert set(types(gone)) <= {"session.closing"} and code == 4009
    assert ready["type"] == "session.ready" and ready["seq"] == 2
    assert turn[-2]["status"] == "completed"
    await drained(a)


async def test_a_session_minted_on_a_talks_on_b_and_resumes_on_c_after_b_is_killed(
    nodes: tuple[Server, Server, Server], fake: FakeOpenAI
) -> None:
    """No event lost or repeated: what B sent that the client never read is replayed by C,
    and C numbers on from there."""
    a, b, c = nodes
    _, key = await asyncio.to_thread(tenant, a)
    async with backend_of(key, a, c) as shop:
        minted = await shop.ready(a)
        async with opened(on(b, minted["ws_url"])) as live:
            assert (await live.next())["type"] == "session.ready"
            await live.send("user.message", text="one")
            first = await live.until("budget")
            await live.send("user.message", text="two")
            # Read up to the reply's end; its budget event is sent, unread, when B dies.
            await live.until("reply.done")
            read_on_b = list(live.events)
            assert b.process is not None
            os.kill(b.process.pid, signal.SIGKILL)
            b.process.wait(10)
        last = read_on_b[-1]["seq"]
        async with opened(on(c, minted["ws_url"]) + f"&last_seq={last}") as live:
            replayed = await live.until("session.ready")
            await live.send("user.message", text="three")
            third = await live.until("budget")
    assert said(first) and read_on_b[-1]["type"] == "reply.done"
    assert types(replayed) == ["budget", "session.ready"] and replayed[-1]["resumed"] is True
    assert third[-2]["type"] == "reply.done" and third[-2]["status"] == "completed"
    numbered = seqs(read_on_b + replayed + third)
    assert numbered == list(range(1, len(numbered) + 1)), numbered
    await drained(a)


# --- a master's failover (last: it leaves the cluster with one replica fewer) ------------------


async def test_a_masters_failover_spares_other_accounts_and_live_sockets_ride_it_out(
    nodes: tuple[Server, Server, Server], redis_cluster: RedisCluster, fake: FakeOpenAI
) -> None:
    """A master that holds none of the keys all accounts share is SIGKILLed. The accounts
    whose slots are on other masters talk on as if nothing happened; the socket of one on
    the dead master stays open, a turn it cannot run is a non-fatal error event, and it
    talks again once a replica is promoted."""
    a, _, c = nodes
    shared = {redis_cluster.master_of(k) for k in GLOBAL_KEYS}
    victim = next(port for port in redis_cluster.masters() if port not in shared)

    def on_victim(account_id: str, key: str) -> tuple[bool, bool]:
        # (the account's slot is on the victim, the record of its key is)
        return (
            redis_cluster.master_of(keyspace.AccountKeys(account_id).account) == victim,
            redis_cluster.master_of(KeyStore.record_key(key)) == victim,
        )

    bystanders: list[str] = []
    doomed: list[str] = []
    while len(bystanders) < 2 or not doomed:
        account_id, key = tenant(a)
        account_on, record_on = on_victim(account_id, key)
        if account_on:
            doomed.append(key)
        elif not record_on:
            bystanders.append(key)

    async with (
        backend_of(doomed[0], a) as shop,
        httpx.AsyncClient(base_url=c.base_url, timeout=30) as http,
    ):

        async def turn(key: str, n: int) -> httpx.Response:
            return await http.post(
                URL, json={"user_id": "spared", "message": f"hi {n}"}, headers={"X-Api-Key": key}
            )

        minted = await shop.ready(a)
        async with opened(on(c, minted["ws_url"])) as live:
            assert (await live.next())["type"] == "session.ready"
            await live.send("user.message", text="before")
            assert said(await live.until("budget"))
            for key in bystanders:
                assert (await turn(key, 0)).status_code == 200
            await asyncio.sleep(1.5)  # past the AOF's fsync and the replicas' catch-up
            # Redis's default (yes) refuses every query, every slot's, from the moment a
            # master is marked failed until its replica is promoted (CLUSTERDOWN): with it,
            # no account is spared. README tells operators to set it to no.
            for port in redis_cluster.live_ports():
                cli(port, "CONFIG", "SET", "cluster-require-full-coverage", "no")

            redis_cluster.kill(victim)
            await live.send("user.message", text="during")
            failed = await live.until("reply.done")
            assert types(failed) == ["error", "reply.done"], failed
            assert failed[0]["code"] == "server.unavailable" and failed[0]["fatal"] is False
            assert failed[1]["status"] == "failed"
            await live.until("budget")
            # Until the replica takes over, and after: every bystander's turn succeeds.
            spared: list[int] = []
            refused = 0
            n = 0
            deadline = time.monotonic() + NODE_TIMEOUT_MS / 1000 + 10
            while time.monotonic() < deadline:
                n += 1
                answers = await asyncio.gather(*(turn(key, n) for key in bystanders))
                spared += [r.status_code for r in answers]
                probe = await turn(doomed[0], n)
                if probe.status_code == 200:
                    break
                assert probe.status_code == 503, probe.text
                refused += 1
                await asyncio.sleep(0.5)  # a few rounds a second: within the keys' limit
            assert refused, "the killed master's account was never refused"
            assert probe.status_code == 200, "the dead master's slots did not come back"
            assert set(spared) == {200}, Counter(spared)
            # The socket outlived the outage and talks again.
            await live.send("user.message", text="after")
            again = await live.until("budget")
            assert again[-2]["type"] == "reply.done" and again[-2]["status"] == "completed"
    await drained(a)
