"""Engine overhead per conversation turn, measured against two bare Starlette peers (issue 3).

Starts the fake OpenAI-compatible server (``loadtest.fake_llm``, answering at once), then
``rapport serve`` against it (fresh temp data dir, free loopback port, one uvicorn process,
RAPPORT_LOG_LEVEL=warning) with memory, rate limits and idempotency all on: the per-key and
per-IP limits are set so high that every request is counted in Redis but none is refused,
and every request carries a fresh ``Idempotency-Key`` (a claim and a settle in Redis). Each
of ``--users`` end users is first given ``--prime`` turns, so recall reads a full window of
history. Each peer is a bare Starlette app under uvicorn with the same settings whose
``POST /turn`` sends the fake server the very request Rapport sends it (the prompt is read
back from the fake server after priming, and each peer's first request is checked against
it) through ``openai.AsyncOpenAI``, streamed, and returns ``{"reply": ...}``: no middleware,
no Redis. ``peer-create`` calls ``client.chat.completions.create(..., stream=True)``, the
peer issue 3 describes; ``peer-raw`` calls ``client.post("/chat/completions", ...)`` with the
body engine/llm.py sends, skipping ``create``'s per-message parameter transform as Rapport
does. The fake server does the same work for all three, so the difference between Rapport
and ``peer-raw`` is Rapport's own engine cost; against ``peer-create`` it is the overhead as
the issue defines it.

For each round, concurrency and target it sends a bounded number of keep-alive requests over
raw asyncio streams (uvloop; one connection per concurrent client, request bytes built from
a template, response framed by Content-Length), and prints client-side latency percentiles,
throughput, CPU per request of every process (from /proc), the overhead of Rapport over
each peer and the Redis commands per turn.
Everything is loopback only; every process is stopped by its pid whatever happens.

    .venv/bin/python -m bench.conversation_overhead [--requests 1500] [--warmup 200]
        [--rounds 2] [--concurrency 1 16 64] [--users 32] [--profile rapport.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import redis

from bench.harness import refill, run_bench, start_fake_openai
from bench.http_overhead import (
    LOOPBACK,
    Budget,
    Server,
    Tally,
    cpu_seconds,
    free_port,
    machine,
    rapport_command,
    rapport_env,
    redis_pid,
    serve_like_rapport,
    spawn,
    wait_ready,
)

T = TypeVar("T")

RAPPORT_PATH = "/api/v1/conversation"
PEER_PATH = "/turn"
MODEL = "fake-model"
LLM_KEY = "sk-bench"
HIGH_RPM = 10_000_000  # limits on (every request counted in Redis), never reached
TURN_QUEUE = 1000
MESSAGE = "Hello! What are your opening hours on Saturdays, and do I need to book ahead?"
LEVEL_TIMEOUT_S = 300.0
READ_LIMIT = 1 << 20
# target -> how it calls the LLM
PEER_CALLS = {"peer-create": "create", "peer-raw": "raw", "peer-lean": "lean"}
TARGETS = ("rapport", *PEER_CALLS)
TARGET_CONC = 16  # the concurrency issue 3 sets its targets at


@dataclass
class TurnTally(Tally):
    """One (target, concurrency) over all rounds; CPU fields are sums over measured windows."""

    upstream_cpu: float = 0.0
    bodies: list[bytes] = field(default_factory=list)
    redis_calls: Counter[str] = field(default_factory=Counter)
    redis_usec: float = 0.0
    redis_reads: int = 0


@dataclass
class Load:
    """Request bytes for one measured or warm-up run: users round robin, a fresh key each."""

    head: bytes
    bodies: list[bytes]
    prefix: bytes
    sent: int = 0

    def next(self) -> bytes:
        n, self.sent = self.sent, self.sent + 1
        body = self.bodies[n % len(self.bodies)]
        return b"%sIdempotency-Key: %s-%d\r\nContent-Length: %d\r\n\r\n%s" % (
            self.head,
            self.prefix,
            n,
            len(body),
            body,
        )


def make_load(port: int, path: str, api_key: str, users: int, prefix: str) -> Load:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nX-Api-Key: {api_key}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    bodies = [
        json.dumps({"user_id": f"bench-user-{u:03d}", "message": MESSAGE}).encode()
        for u in range(users)
    ]
    return Load(head, bodies, prefix.encode())


# --- the bare peers ------------------------------------------------------------------------


def serve_peer(port: int, upstream: str, prompt_file: Path, call: str) -> None:
    """Starlette + the openai client, one route, no middleware, no Redis.

    ``call`` is ``create`` (``chat.completions.create``), ``raw`` (the client's ``post``
    with the library's typed ``ChatCompletionChunk``s, the peer issue 10 measures against)
    or ``lean`` (exactly as engine/llm.py calls and decodes: ``AsyncStream[object]`` and
    msgspec's ``StreamChunk``), so that Rapport over ``peer-lean`` is the engine's own cost.
    """
    import openai
    from openai import AsyncStream
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from engine.llm import StreamChunk

    prompt = json.loads(prompt_file.read_text())
    client = openai.AsyncOpenAI(base_url=upstream, api_key=LLM_KEY, timeout=30, max_retries=0)

    async def turn(request: Request) -> Response:
        body = await request.json()
        messages = [*prompt["history"], {"role": "user", "content": body["message"]}]
        parts: list[str] = []
        raw_body = {
            "model": prompt["model"],
            "messages": messages,
            "max_tokens": prompt["max_tokens"],
            "stream": True,
        }
        if call == "lean":
            data_stream = await client.post(
                "/chat/completions",
                cast_to=ChatCompletion,
                body=raw_body,
                stream=True,
                stream_cls=AsyncStream[object],
            )
            async for data in data_stream:
                text = msgspec.convert(data, StreamChunk).text
                if text:
                    parts.append(text)
            return JSONResponse({"reply": "".join(parts).strip()})
        stream: AsyncStream[ChatCompletionChunk]
        if call == "create":
            stream = await client.chat.completions.create(
                model=prompt["model"],
                messages=messages,  # type: ignore[arg-type]
                max_tokens=prompt["max_tokens"],
                stream=True,
            )
        else:
            stream = await client.post(
                "/chat/completions",
                cast_to=ChatCompletion,
                body=raw_body,
                stream=True,
                stream_cls=AsyncStream[ChatCompletionChunk],
            )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return JSONResponse({"reply": "".join(parts).strip()})

    async def healthz(request: Request) -> Response:
        return Response(b"ok")

    app = Starlette(routes=[Route(PEER_PATH, turn, methods=["POST"]), Route("/healthz", healthz)])
    serve_like_rapport(app, port)


# --- the load ------------------------------------------------------------------------------


async def client(
    port: int, load: Load, budget: Budget, sink: list[tuple[float, bytes]] | None
) -> None:
    """One keep-alive connection sending requests until the shared budget runs out."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=READ_LIMIT)
    try:
        while budget.take():
            request = load.next()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.lower().find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError(f"no Content-Length in {head[:300]!r}")
            length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
            body = await reader.readexactly(length)
            elapsed = time.perf_counter() - started
            if head[9:12] != b"200":
                raise RuntimeError(f"port {port}: {head[:12]!r} {body[:300]!r}")
            if sink is not None:
                sink.append((elapsed, body))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def drive(
    port: int, load: Load, concurrency: int, n: int, sink: list[tuple[float, bytes]] | None
) -> float:
    """Send n requests from `concurrency` clients; returns the wall time in seconds."""
    budget = Budget(n)
    started = time.perf_counter()
    async with asyncio.timeout(LEVEL_TIMEOUT_S):
        await asyncio.gather(*(client(port, load, budget, sink) for _ in range(concurrency)))
    return time.perf_counter() - started


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed: the client shares the cores, so keep it cheap."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


@dataclass
class Bench:
    """The four processes and what is needed to load and account for them."""

    servers: dict[str, Server]  # by target name
    upstream: Server
    ports: dict[str, int]
    api_key: str
    control: str  # the fake server's base URL
    redis: redis.Redis | None

    @property
    def rapport(self) -> Server:
        return self.servers["rapport"]

    def pids(self, target: str) -> list[int]:
        return [self.servers[target].proc.pid]

    def redis_info(self) -> dict[str, Any]:
        """INFO all: ``cmdstat_*`` per command, and ``total_reads_processed``, the read
        events of the server: one per request or pipeline a client sends, so its change
        over a run is the run's round trips."""
        if self.redis is None:
            return {}
        info: dict[str, Any] = self.redis.info("all")
        return info

    def upstream_calls(self) -> int:
        with httpx.Client(trust_env=False, timeout=30) as http:
            return len(http.get(f"{self.control}/_control/calls").json()["calls"])

    def upstream_reset(self) -> None:
        with httpx.Client(trust_env=False, timeout=30) as http:
            http.post(f"{self.control}/_control/reset").raise_for_status()


def measure(
    bench: Bench, target: str, conc: int, args: argparse.Namespace, tag: str, tally: TurnTally
) -> None:
    port = bench.ports[target]
    path = RAPPORT_PATH if target == "rapport" else PEER_PATH
    bench.upstream_reset()
    warm = make_load(port, path, bench.api_key, args.users, f"{tag}-warm")
    run_async(drive(port, warm, conc, args.warmup, None))
    load = make_load(port, path, bench.api_key, args.users, tag)
    sink: list[tuple[float, bytes]] = []
    pids = bench.pids(target)
    redis_pids = bench.rapport.extra_pids if target == "rapport" else []
    up_pids = [bench.upstream.proc.pid]
    stats0 = bench.redis_info() if target == "rapport" else {}
    server0, redis0, up0 = cpu_seconds(pids), cpu_seconds(redis_pids), cpu_seconds(up_pids)
    client0 = time.process_time()
    wall = run_async(drive(port, load, conc, args.requests, sink))
    tally.client_cpu += time.process_time() - client0
    tally.server_cpu += cpu_seconds(pids) - server0
    tally.redis_cpu += cpu_seconds(redis_pids) - redis0
    tally.upstream_cpu += cpu_seconds(up_pids) - up0
    if target == "rapport":
        stats = bench.redis_info()
        for name, now in stats.items():
            if not name.startswith("cmdstat_"):
                continue
            before = stats0.get(name, {"calls": 0, "usec": 0})
            tally.redis_calls[name.removeprefix("cmdstat_")] += int(now["calls"] - before["calls"])
            tally.redis_usec += now["usec"] - before["usec"]
        tally.redis_calls["info"] -= 1  # our own INFO above
        tally.redis_reads += stats["total_reads_processed"] - stats0["total_reads_processed"] - 1
    calls = bench.upstream_calls()
    if calls != args.warmup + args.requests:
        raise RuntimeError(f"{target}: the fake server saw {calls} calls, expected every turn")
    tally.latencies += [elapsed for elapsed, _ in sink]
    tally.bodies += [body for _, body in sink]
    tally.requests += len(sink)
    tally.throughputs.append(len(sink) / wall)


# --- processes -----------------------------------------------------------------------------


def start_rapport(
    data_dir: Path, port: int, upstream: str, log: Path, profile: Path | None
) -> Server:
    env = rapport_env(
        data_dir,
        port,
        RAPPORT_LLM_BASE_URL=upstream,
        RAPPORT_LLM_MODEL=MODEL,
        RAPPORT_LLM_API_KEY=LLM_KEY,
        RAPPORT_KEY_RPM=str(HIGH_RPM),
        RAPPORT_IP_RPM=str(HIGH_RPM),
        RAPPORT_TURN_QUEUE=str(TURN_QUEUE),
    )
    cmd = rapport_command()
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "api.cli", "serve"]
    return spawn("rapport", cmd, env, log)


def settings_line(args: argparse.Namespace) -> str:
    return (
        f"settings: 1 uvicorn process each, RAPPORT_LOG_LEVEL=warning, RAPPORT_KEY_RPM="
        f"RAPPORT_IP_RPM={HIGH_RPM}, RAPPORT_TURN_QUEUE={TURN_QUEUE}, other RAPPORT_* at their "
        f"defaults (RAPPORT_TURN_WORKERS=16, RAPPORT_MEMORY_BYTES=262144); a fresh "
        f"Idempotency-Key per request; {args.users} users round robin, each primed with "
        f"{args.prime} turns; {args.rounds} round(s) x {args.requests} measured requests after "
        f"{args.warmup} warm-up per target and concurrency; raw asyncio-stream client on "
        f"uvloop, one keep-alive connection per concurrent client"
    )


def setup(args: argparse.Namespace, workdir: Path, servers: list[Server]) -> Bench:
    upstream, control = start_fake_openai(workdir, servers)

    data_dir = workdir / "data"
    rapport_port = free_port()
    rapport = start_rapport(
        data_dir, rapport_port, f"{control}/v1", workdir / "rapport.log", args.profile
    )
    servers.append(rapport)
    wait_ready(rapport, f"http://{LOOPBACK}:{rapport_port}/healthz")
    pid = redis_pid(data_dir)
    if pid is not None:
        rapport.extra_pids.append(pid)
    api_key = (data_dir / "demo_api_key").read_text().strip()
    socket_path = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        registry = json.loads((data_dir / "redis" / "rapport.rdb.settings").read_text())
        socket_path = registry["unixsocket"]

    # Every Rapport request spends one of the account's requests: refill for the whole run.
    turns = (
        args.users * args.prime
        + 1
        + args.rounds * len(args.concurrency) * (args.warmup + args.requests)
    )
    refill(data_dir, turns)

    # Give every user a full window of history, then read back what Rapport now sends.
    prime = make_load(rapport_port, RAPPORT_PATH, api_key, args.users, "prime")
    with httpx.Client(trust_env=False, timeout=30) as http:
        http.post(f"{control}/_control/reset").raise_for_status()
        run_async(drive(rapport_port, prime, min(16, args.users), args.users * args.prime, None))
        # One more turn, so the prompt read back carries the history measured turns will.
        probe = make_load(rapport_port, RAPPORT_PATH, api_key, 1, "probe")
        run_async(drive(rapport_port, probe, 1, 1, None))
        sent = http.get(f"{control}/_control/calls").json()["calls"][-1]
    if set(sent) != {"model", "messages", "max_tokens", "stream"}:
        raise RuntimeError(f"Rapport sent fields the peers do not: {sorted(sent)}")
    if sent["messages"][-1] != {"role": "user", "content": MESSAGE}:
        raise RuntimeError(f"Rapport's last message is not the user's: {sent['messages'][-1]}")
    prompt = {"model": sent["model"], "max_tokens": sent["max_tokens"]}
    prompt["history"] = sent["messages"][:-1]
    prompt_file = workdir / "prompt.json"
    prompt_file.write_text(json.dumps(prompt))
    print(
        f"prompt: {len(sent['messages'])} messages, "
        f"{len(json.dumps(sent['messages']).encode())} bytes of JSON, max_tokens "
        f"{sent['max_tokens']} (the same for every target)",
        flush=True,
    )

    targets = {"rapport": rapport}
    ports = {"rapport": rapport_port}
    for name, call in PEER_CALLS.items():
        port = free_port()
        cmd = [sys.executable, "-m", "bench.conversation_overhead", "--serve-peer", str(port)]
        cmd += ["--peer-upstream", f"{control}/v1", "--peer-prompt", str(prompt_file)]
        cmd += ["--peer-call", call]
        peer = spawn(name, cmd, dict(os.environ), workdir / f"{name}.log")
        servers.append(peer)
        wait_ready(peer, f"http://{LOOPBACK}:{port}/healthz")
        targets[name], ports[name] = peer, port
        # The peer must send the fake server exactly what Rapport sends it.
        with httpx.Client(trust_env=False, timeout=30) as http:
            http.post(f"{control}/_control/reset").raise_for_status()
            user = {"user_id": "bench-user-000", "message": MESSAGE}
            http.post(f"http://{LOOPBACK}:{port}{PEER_PATH}", json=user).raise_for_status()
            (got,) = http.get(f"{control}/_control/calls").json()["calls"]
        if got != sent:
            raise RuntimeError(f"{name} sent the fake server another request than Rapport's")
    return Bench(
        servers=targets,
        upstream=upstream,
        ports=ports,
        api_key=api_key,
        control=control,
        redis=redis.Redis(unix_socket_path=socket_path) if socket_path else None,
    )


# --- report --------------------------------------------------------------------------------


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def per_req(seconds: float, tally: TurnTally) -> str:
    return f"{seconds / tally.requests * 1e6:.0f}"


def report(
    args: argparse.Namespace, tallies: dict[tuple[str, int], TurnTally], wall_s: float
) -> None:
    print()
    print("## Conversation overhead")
    print()
    print(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine():
        print(line)
    packages = ("openai", "redis", "hiredis", "msgspec")
    print("also: " + ", ".join(f"{name} {version(name)}" for name in packages))
    print(settings_line(args))
    print(f"wall time: {wall_s:.0f} s")
    print()
    print(
        "| target | conc | p50 ms | p99 ms | req/s | server CPU us/req | redis CPU us/req "
        "| fake LLM CPU us/req | client CPU us/req |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for conc in args.concurrency:
        for target in TARGETS:
            t = tallies[(target, conc)]
            redis_cpu = per_req(t.redis_cpu, t) if target == "rapport" else "-"
            print(
                f"| {target} | {conc} | {t.p(50):.2f} | {t.p(99):.2f} | {t.rps:.0f} "
                f"| {per_req(t.server_cpu, t)} | {redis_cpu} | {per_req(t.upstream_cpu, t)} "
                f"| {per_req(t.client_cpu, t)} |"
            )
    print()
    print(
        "Overhead of Rapport over each peer, same run: Rapport minus the peer for the p50, p99 "
        "and CPU\n(Rapport's process plus its redis-server against the peer's process); req/s "
        "ratio Rapport/peer,\nmedian of the rounds with the lowest and highest round:"
    )
    print()
    print(
        "| vs | conc | p50 overhead ms | p99 overhead ms | req/s ratio | CPU overhead ms/turn "
        "| CPU ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for peer in PEER_CALLS:
        for conc in args.concurrency:
            o = Overhead.of(tallies, peer, conc)
            print(
                f"| {peer} | {conc} | {o.p50:.2f} | {o.p99:.2f} "
                f"| {o.ratio:.2f} ({o.ratio_min:.2f}-{o.ratio_max:.2f}) "
                f"| {o.cpu_ms:.2f} | {o.cpu_ratio:.2f} |"
            )
    print()
    print("Rapport's own latency_breakdown (integer ms, as the server reports it):")
    print()
    print("| conc | total p50 | total p99 | queue p50 | queue p99 | worker p50 | worker p99 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for conc in args.concurrency:
        replies = [json.loads(b)["latency_breakdown"] for b in tallies[("rapport", conc)].bodies]
        cols = []
        for name in ("total_latency_ms", "queue_latency_ms", "worker_latency_ms"):
            values = [float(x[name]) for x in replies]
            cols += [f"{pct(values, 50):.0f}", f"{pct(values, 99):.0f}"]
        print(f"| {conc} | " + " | ".join(cols) + " |")
    print()
    calls: Counter[str] = Counter()
    usec = 0.0
    turns = 0
    reads = 0
    for conc in args.concurrency:
        t = tallies[("rapport", conc)]
        calls += t.redis_calls
        usec += t.redis_usec
        reads += t.redis_reads
        turns += t.requests
    if turns and calls:
        mix = ", ".join(f"{name} {n / turns:.1f}" for name, n in calls.most_common() if n > 0)
        print(
            f"Redis commands per turn (INFO commandstats, all levels; commands run inside "
            f"scripts counted too): {sum(calls.values()) / turns:.1f} in all, "
            f"{usec / turns:.0f} us of Redis time: {mix}; round trips per turn (INFO stats "
            f"total_reads_processed): {reads / turns:.2f}"
        )
    verdict(tallies)


@dataclass(frozen=True)
class Overhead:
    """Rapport against one peer at one concurrency."""

    p50: float  # ms, difference of the medians
    p99: float  # ms, difference of the p99s
    ratio: float  # req/s, Rapport/peer, of the round medians
    ratio_min: float  # lowest and highest round
    ratio_max: float
    cpu_ms: float  # CPU per turn, Rapport (+ redis-server) minus the peer
    cpu_ratio: float

    @classmethod
    def of(cls, tallies: dict[tuple[str, int], TurnTally], peer: str, conc: int) -> Overhead:
        r, p = tallies[("rapport", conc)], tallies[(peer, conc)]
        per_round = [a / b for a, b in zip(r.throughputs, p.throughputs, strict=True)]
        r_cpu = (r.server_cpu + r.redis_cpu) / r.requests
        p_cpu = p.server_cpu / p.requests
        return cls(
            p50=r.p(50) - p.p(50),
            p99=r.p(99) - p.p(99),
            ratio=r.rps / p.rps,
            ratio_min=min(per_round),
            ratio_max=max(per_round),
            cpu_ms=(r_cpu - p_cpu) * 1000,
            cpu_ratio=r_cpu / p_cpu,
        )


def verdict(tallies: dict[tuple[str, int], TurnTally]) -> None:
    if ("rapport", TARGET_CONC) not in tallies:
        return
    print()
    print(f"Targets at {TARGET_CONC} clients (issue 3):")
    meanings = {
        "peer-lean": "the engine's own overhead: the peer calls and decodes as Rapport does",
        "peer-raw": "the peer of issue 10: Rapport's call, the library's typed chunks",
        "peer-create": "the overhead as issue 3 defines it: the peer calls create()",
    }
    for peer in ("peer-lean", "peer-raw", "peer-create"):  # the engine's own cost first
        if (peer, TARGET_CONC) not in tallies:
            continue
        o = Overhead.of(tallies, peer, TARGET_CONC)
        print(f"against {peer} ({meanings[peer]}):")
        checks = (
            (f"overhead p50 {o.p50:.2f} ms (target <= 3 ms)", o.p50 <= 3),
            (f"overhead p99 {o.p99:.2f} ms (target <= 15 ms)", o.p99 <= 15),
            (f"throughput {o.ratio:.2f} of the peer's (target >= 0.50)", o.ratio >= 0.5),
        )
        for text, met in checks:
            print(f"- {text}: {'met' if met else 'MISSED'}")
    if ("peer-raw", TARGET_CONC) in tallies:
        o = Overhead.of(tallies, "peer-raw", TARGET_CONC)
        print(f"Targets at {TARGET_CONC} clients (issue 10), against peer-raw:")
        checks = (
            (f"CPU per turn {o.cpu_ratio:.2f}x the peer's (target <= 1.3)", o.cpu_ratio <= 1.3),
            (f"throughput {o.ratio:.2f} of the peer's (target >= 0.8)", o.ratio >= 0.8),
        )
        for text, met in checks:
            print(f"- {text}: {'met' if met else 'MISSED'}")


def stop_profiled(server: Server) -> None:
    """SIGINT, so cProfile writes its stats: uvicorn re-raises the signal it stopped on, and
    a re-raised SIGTERM would end the process before cProfile's ``finally`` runs."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(60)


def print_profile(path: Path, lines: int = 30) -> None:
    print()
    print(f"cProfile of the Rapport process ({path}; timings above are inflated by it):")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--requests", type=int, default=1500, help="measured, per level/round")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured, per level/round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16, 64], help="concurrent clients"
    )
    parser.add_argument("--users", type=int, default=32, help="distinct user_ids, round robin")
    parser.add_argument("--prime", type=int, default=12, help="turns per user before measuring")
    parser.add_argument(
        "--profile", type=Path, help="run Rapport under cProfile, write the stats here"
    )
    parser.add_argument("--serve-peer", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--peer-upstream", help=argparse.SUPPRESS)
    parser.add_argument("--peer-prompt", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--peer-call", choices=sorted(set(PEER_CALLS.values())), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve_peer is None:
        for name in ("requests", "rounds", "users", "prime"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be at least 1")
        if args.warmup < 0 or min(args.concurrency) < 1:
            parser.error("--warmup must be >= 0 and every --concurrency >= 1")
        if args.profile is not None:
            args.profile = args.profile.resolve()
    return args


def run(args: argparse.Namespace, workdir: Path, servers: list[Server]) -> None:
    started = time.monotonic()
    bench = setup(args, workdir, servers)
    tallies = {(t, c): TurnTally() for t in TARGETS for c in args.concurrency}
    try:
        for round_no in range(1, args.rounds + 1):
            for conc in args.concurrency:
                for target in TARGETS:
                    tally = tallies[(target, conc)]
                    measure(bench, target, conc, args, f"r{round_no}-c{conc}", tally)
                    print(
                        f"round {round_no} conc {conc:>2} {target:<11} "
                        f"{tally.throughputs[-1]:7.0f} req/s",
                        flush=True,
                    )
    finally:
        if bench.redis is not None:
            bench.redis.close()
    report(args, tallies, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_peer is not None:
        serve_peer(args.serve_peer, args.peer_upstream, args.peer_prompt, args.peer_call)
        return 0

    def profiled(server: Server) -> None:
        if args.profile is not None and server.name == "rapport":
            stop_profiled(server)

    status = run_bench(lambda workdir, servers: run(args, workdir, servers), before_stop=profiled)
    if args.profile is not None and args.profile.exists():
        print_profile(args.profile)
    return status


if __name__ == "__main__":
    sys.exit(main())
