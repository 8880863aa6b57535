"""Live sessions (issue 11): idle sessions one worker holds, a turn over the socket against
the same turn over HTTP, and uvicorn's WebSocket settings compared.

Starts the fake OpenAI-compatible server (``loadtest.fake_llm``, answering at once) and
``rapport serve`` against it (fresh temp data dir, free loopback port, one uvicorn process,
RAPPORT_LOG_LEVEL=warning, the rate limits set so high that every request and upgrade is
counted in Redis but none is refused, RAPPORT_SESSION_CONNECT_SECONDS=3600 so that no minted
session lapses before its socket opens). Every session is minted through
``POST /api/sessions`` by a bounded number of keep-alive HTTP clients, and its ``ws_url``
opened as given.

1. Idle sessions: a separate client process (RLIMIT_NOFILE raised to its hard limit, as in
   this process, whose limit the servers inherit) opens ``--warm`` sockets, then, once the
   server's RSS has been read from /proc, ``--sessions`` more, each waiting for its
   ``session.ready``; the figure is the server's RSS delta over those sessions. The client
   offers permessage-deflate, as browsers do, and sends no pings of its own. With
   ``--idle-window`` the server's CPU (and its redis-server's) is then read over that many
   seconds, starting one ping interval after the first connect, so that every socket is
   pinged in it. Two peers are held open the same way by the same client: a bare Starlette
   WebSocket route under uvicorn with the same WebSocket settings (what uvicorn and
   Starlette cost), and a bare ``websockets.serve`` echo server, compression off.
2. A turn: ``--rounds`` rounds, each of ``--turns`` turns over ``--turn-sessions`` session
   sockets in turn (a session takes 10 frames a second), then as many turns through
   ``POST /api/v1/conversation``, then as many streamed requests sent straight to the fake
   server with the body Rapport last sent it; one at a time, after ``--warmup`` unmeasured
   ones each. Socket messages carry an ``id`` and HTTP turns an ``Idempotency-Key``, so both
   are idempotent; each uses its own users, fresh at the start, so that their histories grow
   alike. CPU per turn is the server's plus its redis-server's, from /proc, and Redis
   commands and round trips come from INFO; the time to the first ``reply.delta`` is
   compared with the fake server's own time to its first token.
3. uvicorn's WebSocket settings: for each implementation (``websockets-sansio``,
   ``wsproto`` and the deprecated ``websockets``, which RAPPORT_WS_IMPL does not offer and
   which is started through the same uvicorn call as ``rapport serve``'s) with
   permessage-deflate on and off, a fresh server: RSS per idle session over
   ``--compare-sessions`` sockets, again after one turn on each (a compressor's memory grows
   with what it has compressed), then CPU per socket turn over ``--compare-turns`` turns.

Latencies are kept in HdrHistograms (microseconds, 3 significant digits). Loopback only;
every loop is bounded by a count and every phase by a timeout; every process is stopped by
its pid whatever happens.

    .venv/bin/python -m bench.live_sessions [--sessions 10000] [--warm 200]
        [--idle-window 20] [--turns 300] [--rounds 3] [--warmup 50] [--turn-sessions 64]
        [--compare-sessions 1000] [--compare-turns 500] [--configs sansio-off ...]
        [--ws wsproto-off] [--skip-idle]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import resource
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import redis
from hdrh.histogram import HdrHistogram

from bench.conversation_overhead import MESSAGE, drive, make_load, run_async
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
    ROOT,
    Budget,
    Server,
    cpu_seconds,
    free_port,
    machine,
    package_versions,
    serve_like_rapport,
    spawn,
    stop,
    wait_ready,
)

MINT_PATH = "/api/sessions"
TURN_PATH = "/api/v1/conversation"
MODEL = "fake-model"
LLM_KEY = "sk-bench"
HIGH_RPM = 10_000_000  # every request and upgrade counted in Redis, none refused
RATE_SETTINGS = (
    "RAPPORT_KEY_RPM",
    "RAPPORT_IP_RPM",
    "RAPPORT_GLOBAL_IP_RPM",
    "RAPPORT_MUTATIONS_RPM",
    "RAPPORT_SESSION_WS_RPM",
    "RAPPORT_QUEUE_WS_RPM",
    "RAPPORT_QUEUE_RPM",
)
"""Every rate limit of rapport serve: set to HIGH_RPM, counted in Redis, never refusing."""
CONNECT_WINDOW_S = 3600  # RAPPORT_SESSION_CONNECT_SECONDS: no minted session lapses unused
MINT_CLIENTS = 16
CONNECT_CONCURRENCY = 64  # sockets the client process opens at once
CLOSE_CONCURRENCY = 256
# Turns run at once on held sockets: few, so that what they allocate while running adds little
# to the RSS read after them.
TURN_CONCURRENCY = 4
PHASE_TIMEOUT_S = 300.0
CLIENT_HOLD_S = 900.0  # the client process closes its sockets and exits by then regardless
SETTLE_S = 2.0
QUIET_TIMEOUT_S = 60.0
FD_SPARE = 300  # the server's own files: Redis, the fake LLM, logs, Chroma
HIST_MAX_US = 60_000_000
READ_LIMIT = 1 << 20
ECHO_PING_S = 20.0  # websockets.serve's ping_interval


@dataclass(frozen=True)
class WsConfig:
    """One uvicorn WebSocket setting measured in the comparison."""

    key: str
    impl: str
    deflate: bool

    @property
    def label(self) -> str:
        return f"{self.impl}, deflate {'on' if self.deflate else 'off'}"

    def env(self) -> dict[str, str]:
        env = {"RAPPORT_WS_PER_MESSAGE_DEFLATE": "true" if self.deflate else "false"}
        if self.impl != "websockets":
            env["RAPPORT_WS_IMPL"] = self.impl
        return env

    def uvicorn(self) -> dict[str, Any]:
        return {"ws": self.impl, "ws_per_message_deflate": self.deflate}

    def command(self) -> list[str] | None:
        if self.impl != "websockets":
            return None
        return [sys.executable, "-m", "bench.live_sessions", "--serve-legacy"]


CONFIGS = {
    c.key: c
    for c in (
        WsConfig("sansio-off", "websockets-sansio", False),
        WsConfig("sansio-on", "websockets-sansio", True),
        WsConfig("wsproto-off", "wsproto", False),
        WsConfig("wsproto-on", "wsproto", True),
        WsConfig("legacy-off", "websockets", False),
        WsConfig("legacy-on", "websockets", True),
    )
}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


def ms(hist: HdrHistogram, q: float) -> float:
    return float(hist.get_value_at_percentile(q)) / 1000


def record(hist: HdrHistogram, seconds: float) -> None:
    hist.record_value(min(HIST_MAX_US, max(1, round(seconds * 1e6))))


# --- processes -----------------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_quiet(pids: list[int], timeout: float = QUIET_TIMEOUT_S) -> None:
    """Until the processes use under 5 % of a core over half a second (sockets closed by
    the hundred leave work behind them), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pids)
        time.sleep(0.5)
        if cpu_seconds(pids) - before < 0.025:
            return


def start_rapport(
    workdir: Path, name: str, upstream: str, servers: list[Server], config: WsConfig | None
) -> tuple[Server, int, str]:
    """``rapport serve`` against the fake LLM: its default WebSocket settings, or
    ``config``'s. Returns the server, its port and the demo key."""
    env = {
        "RAPPORT_LLM_BASE_URL": upstream,
        "RAPPORT_LLM_MODEL": MODEL,
        "RAPPORT_LLM_API_KEY": LLM_KEY,
        **{name: str(HIGH_RPM) for name in RATE_SETTINGS},
        "RAPPORT_SESSION_CONNECT_SECONDS": str(CONNECT_WINDOW_S),
        # Every session minted here gets a slot: the capacity is bench/capacity.py's.
        "RAPPORT_MAX_SESSIONS": str(PLAN_SESSIONS),
    }
    command = None
    if config is not None:
        env.update(config.env())
        command = config.command()
    data_dir = workdir / f"data-{name}"
    server, base, key = spawn_ready_rapport(
        data_dir, workdir / f"{name}.log", servers, env, command
    )
    raise_plan(data_dir)
    return server, int(base.rsplit(":", 1)[1]), key


def serve_legacy() -> None:
    """``rapport serve`` on uvicorn's deprecated ``websockets`` implementation, which
    RAPPORT_WS_IMPL does not offer: api/cli.py's uvicorn call for one worker, ``ws`` aside."""
    import uvicorn

    from api.cli import ws_options
    from engine.config import load_settings

    settings = load_settings()
    uvicorn.run(
        "api.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        **{**ws_options(settings), "ws": "websockets"},
    )


def serve_echo(port: int) -> None:
    """The peer: a bare ``websockets.serve`` echo server, compression off, default pings."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    async def echo(socket: ServerConnection) -> None:
        async for message in socket:
            await socket.send(message)

    def healthz(socket: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return socket.respond(HTTPStatus.OK, "ok\n")
        return None

    async def main() -> None:
        async with serve(echo, LOOPBACK, port, compression=None, process_request=healthz) as s:
            await s.serve_forever()

    raise_nofile()
    run_async(main())


def serve_starlette(port: int, config: WsConfig | None) -> None:
    """The second peer: a bare Starlette WebSocket route under uvicorn with Rapport's
    WebSocket settings (``config``'s, or rapport serve's defaults); it accepts, sends one
    ready frame and reads until the client leaves. No middleware, no Redis."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    from api.cli import ws_options
    from engine.config import Settings

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(json.dumps({"type": "session.ready"}))
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    async def healthz(request: Request) -> Response:
        return Response(b"ok")

    app = Starlette(routes=[WebSocketRoute("/socket", socket), Route("/healthz", healthz)])
    serve_like_rapport(
        app, port, **{**ws_options(Settings()), **(config.uvicorn() if config else {})}
    )


# --- minting -------------------------------------------------------------------------------


async def mint(port: int, api_key: str, users: list[str]) -> list[str]:
    """One session per user through ``POST /api/sessions``, from MINT_CLIENTS keep-alive
    connections; their ``ws_url``s, in the users' order."""
    urls = [""] * len(users)
    budget = Budget(len(users))
    head = (
        f"POST {MINT_PATH} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nX-Api-Key: {api_key}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()

    async def client() -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=READ_LIMIT)
        try:
            while budget.take():
                n = len(users) - budget.left - 1
                body = json.dumps({"user_id": users[n], "mode": "chat"}).encode()
                writer.write(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                answer = await reader.readuntil(b"\r\n\r\n")
                at = answer.lower().index(b"\r\ncontent-length:")
                length = int(answer[at + 17 : answer.index(b"\r\n", at + 2)])
                payload = await reader.readexactly(length)
                if answer[9:12] != b"201":
                    raise RuntimeError(f"mint: {answer[:12]!r} {payload[:300]!r}")
                url = json.loads(payload)["ws_url"]
                if not url.startswith(f"ws://{LOOPBACK}:{port}/"):
                    raise RuntimeError(f"mint: ws_url off loopback: {url}")
                urls[n] = url
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await asyncio.gather(*(client() for _ in range(min(MINT_CLIENTS, len(users)))))
    return urls


# --- the client process that holds idle sockets --------------------------------------------


async def hold_sockets(urls: list[str], warm: int, mode: str) -> None:
    """Open ``warm`` sockets and say so; then, told on stdin, ``next`` opens the rest,
    ``turn`` runs one turn on each of those, ``close`` closes them all. One JSON line on
    stdout answers each step. Each step is bounded, and the whole by CLIENT_HOLD_S."""
    from websockets.asyncio.client import ClientConnection, connect

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    held: list[ClientConnection] = []
    measured: list[ClientConnection] = []

    async def each(
        work: Callable[[Any], Coroutine[Any, Any, None]], items: list[Any], at_once: int
    ) -> str:
        """Run ``work`` on every item, ``at_once`` at a time; the first error."""
        gate = asyncio.Semaphore(at_once)
        errors: list[str] = []

        async def one(item: Any) -> None:
            async with gate:
                try:
                    await work(item)
                except Exception as exc:
                    errors.append(repr(exc))

        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await asyncio.gather(*(one(item) for item in items))
        return f"{len(errors)} failed, the first: {errors[0]}" if errors else ""

    async def open_one(url: str) -> None:
        # compression="deflate": the client offers it, as browsers do; no pings of its own,
        # as browsers send none.
        socket = await connect(url, compression="deflate", ping_interval=None, open_timeout=60)
        if mode == "echo":
            await socket.send("hello")
            await socket.recv()
        else:
            ready = json.loads(await socket.recv())
            if ready.get("type") != "session.ready":
                raise RuntimeError(f"first event {ready}")
        held.append(socket)
        measured.append(socket)

    async def turn_one(socket: ClientConnection) -> None:
        await socket_turns([socket], 1, f"hold-{id(socket)}", None)

    async def step(
        work: Callable[[Any], Coroutine[Any, Any, None]], items: list[Any], at_once: int
    ) -> None:
        started = time.perf_counter()
        error = await each(work, items, at_once)
        said = {"done": len(items), "seconds": time.perf_counter() - started, "error": error}
        print(json.dumps(said), flush=True)

    async def close_one(socket: ClientConnection) -> None:
        await socket.close()

    try:
        async with asyncio.timeout(CLIENT_HOLD_S):
            await step(open_one, urls[:warm], CONNECT_CONCURRENCY)
            measured.clear()
            while (word := (await stdin.readline()).strip()) != b"close":
                if word == b"next":
                    await step(open_one, urls[warm:], CONNECT_CONCURRENCY)
                elif word == b"turn":
                    await step(turn_one, measured, TURN_CONCURRENCY)
                else:
                    raise RuntimeError(f"unknown step {word!r}")
    finally:
        await each(close_one, held, CLOSE_CONCURRENCY)
        print(json.dumps({"closed": len(held)}), flush=True)


class Holder:
    """The client process, as this process sees it: told what to do on its stdin, answering
    one JSON line per step on its stdout."""

    def __init__(self, name: str, urls: list[str], warm: int, mode: str, workdir: Path) -> None:
        url_file = workdir / f"{name}-urls.txt"
        url_file.write_text("\n".join(urls))
        log = workdir / f"{name}.log"
        cmd = [sys.executable, "-m", "bench.live_sessions", "--hold", str(url_file)]
        cmd += ["--hold-warm", str(warm), "--hold-mode", mode]
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        self.server = Server(name, self.proc, log)
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def answer(self, timeout: float = PHASE_TIMEOUT_S + 30) -> dict[str, Any]:
        try:
            said: dict[str, Any] = json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            tail = self.server.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{self.server.name} said nothing; its log ends:\n{tail}") from None
        return said

    def step(self, word: str | None = None) -> float:
        """Tell it ``word`` (None: the first step, begun at start); seconds it took."""
        if word is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(word.encode() + b"\n")
            self.proc.stdin.flush()
        said = self.answer()
        if said.get("error") != "":
            raise RuntimeError(f"{self.server.name}: {word or 'warm'}: {said}")
        return float(said["seconds"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"close\n")
        self.proc.stdin.flush()
        self.answer()
        self.proc.wait(30)


@dataclass
class Idle:
    """Sockets held idle against one server; RSS in KiB."""

    sessions: int
    connect_s: float
    rss_before: int  # the server process, after the warm-up sockets
    rss_after: int  # once the measured sockets are open
    rss_turned: int | None = None  # after one turn on each of them
    rss_idle: int | None = None  # after the idle window
    redis_before: int = 0  # its redis-server, before minting
    redis_after: int = 0
    idle_cpu_s: float | None = None
    window_s: float = 0.0

    def per_session(self, rss: int | None = None) -> float:
        return ((self.rss_after if rss is None else rss) - self.rss_before) / self.sessions

    @property
    def redis_per_session(self) -> float:
        return (self.redis_after - self.redis_before) / self.sessions


def hold_idle(
    name: str,
    server: Server,
    urls: list[str],
    warm: int,
    mode: str,
    workdir: Path,
    servers: list[Server],
    *,
    window: float = 0.0,
    ping: float = 0.0,
    turn: bool = False,
) -> tuple[Idle, Holder]:
    """Open the sockets from a separate process and read the server's RSS before and after
    the measured ones; with ``turn``, again after one turn on each; with ``window``, its
    idle CPU over that many seconds once every socket has been pinged (every ``ping``
    seconds), and its RSS after.
    Returns with the sockets still open."""
    holder = Holder(name, urls, warm, mode, workdir)
    servers.append(holder.server)
    pid = server.proc.pid
    holder.step()
    time.sleep(SETTLE_S)
    before = rss_kib(pid)
    first_connect = time.monotonic()
    connect_s = holder.step("next")
    time.sleep(SETTLE_S)
    idle = Idle(len(urls) - warm, connect_s, before, rss_kib(pid))
    if turn:
        holder.step("turn")
        time.sleep(SETTLE_S)
        idle.rss_turned = rss_kib(pid)
    if window > 0:
        pids = [pid, *server.extra_pids]
        # The server pings each socket one interval after it opened, then every interval.
        time.sleep(max(0.0, first_connect + ping - time.monotonic()))
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        time.sleep(window)
        idle.idle_cpu_s, idle.window_s = cpu_seconds(pids) - cpu0, time.monotonic() - t0
        idle.rss_idle = rss_kib(pid)
    return idle, holder


# --- turns ---------------------------------------------------------------------------------


@dataclass
class Turns:
    """One transport's turns over all rounds."""

    latency: HdrHistogram = field(default_factory=new_histogram)
    ttft: HdrHistogram = field(default_factory=new_histogram)
    turns: int = 0
    server_cpu: float = 0.0  # summed over the measured windows
    redis_cpu: float = 0.0
    fake_cpu: float = 0.0
    client_cpu: float = 0.0
    redis_commands: int = 0  # INFO commandstats, commands run by scripts included
    redis_reads: int = 0  # INFO stats total_reads_processed: round trips
    per_round: list[float] = field(default_factory=list)  # (server + redis) CPU s per turn

    def us(self, seconds: float) -> float:
        return seconds / self.turns * 1e6

    @property
    def cpu_us(self) -> float:
        return self.us(self.server_cpu + self.redis_cpu)


@dataclass
class Target:
    """The processes a measured window is charged to, and the server's Redis."""

    server: Server
    fake: Server
    redis: redis.Redis | None = None

    def cpu(self) -> tuple[float, float, float, float]:
        return (
            cpu_seconds([self.server.proc.pid]),
            cpu_seconds(self.server.extra_pids),
            cpu_seconds([self.fake.proc.pid]),
            time.process_time(),
        )

    def redis_counts(self) -> tuple[int, int]:
        """Commands and read events so far (each INFO adds one of each)."""
        if self.redis is None:
            return 0, 0
        info: dict[str, Any] = self.redis.info("all")
        commands = sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_"))
        return commands, int(info["total_reads_processed"])


def embedded_redis(data_dir: Path) -> redis.Redis | None:
    """A client of the redis-server Rapport started on ``data_dir`` (its unix socket)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        registry = json.loads((data_dir / "redis" / "rapport.rdb.settings").read_text())
        return redis.Redis(unix_socket_path=registry["unixsocket"])
    return None


async def measured(
    target: Target, tally: Turns, n: int, work: Coroutine[Any, Any, None], timed: bool = True
) -> None:
    """Run ``work`` (n turns), charging the CPU and Redis commands it took to ``tally`` when
    ``timed`` (the INFO calls outside the CPU window, their own command and read taken off)."""
    if not timed:
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await work
        return
    commands, reads = target.redis_counts()
    before = target.cpu()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await work
    after = target.cpu()
    commands_after, reads_after = target.redis_counts()
    if target.redis is not None:
        tally.redis_commands += commands_after - commands - 1
        tally.redis_reads += reads_after - reads - 1
    server, redis_cpu, fake, client = (a - b for a, b in zip(after, before, strict=True))
    tally.server_cpu += server
    tally.redis_cpu += redis_cpu
    tally.fake_cpu += fake
    tally.client_cpu += client
    tally.turns += n
    tally.per_round.append((server + redis_cpu) / n)


async def socket_turns(sockets: list[Any], n: int, tag: str, tally: Turns | None) -> None:
    """``n`` turns one at a time, the sockets in turn: time to the first ``reply.delta``
    and to the turn's last event (``budget``, after ``reply.done``)."""
    for i in range(n):
        socket = sockets[i % len(sockets)]
        frame = json.dumps({"type": "user.message", "id": f"{tag}-{i}", "text": MESSAGE})
        started = time.perf_counter()
        await socket.send(frame)
        first = None
        while True:
            event = json.loads(await socket.recv())
            kind = event["type"]
            if kind == "reply.delta" and first is None:
                first = time.perf_counter()
            elif kind == "error" or (kind == "reply.done" and event["status"] != "completed"):
                raise RuntimeError(f"turn {tag}-{i}: {event}")
            elif kind == "budget":
                break
        if tally is not None:
            if first is None:
                raise RuntimeError(f"turn {tag}-{i}: no reply.delta")
            record(tally.ttft, first - started)
            record(tally.latency, time.perf_counter() - started)


async def http_turns(port: int, api_key: str, users: int, n: int, tag: str, tally: Turns | None):
    load = make_load(port, TURN_PATH, api_key, users, tag)
    sink: list[tuple[float, bytes]] = []
    await drive(port, load, 1, n, sink)
    if tally is not None:
        for elapsed, _ in sink:
            record(tally.latency, elapsed)


async def fake_turns(port: int, body: bytes, n: int, tally: Turns | None) -> None:
    """``n`` streamed chat completions straight to the fake server, one at a time on one
    keep-alive connection: time to the first chunk with content, and to the stream's end."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=READ_LIMIT)
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        f"Authorization: Bearer {LLM_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        for _ in range(n):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"200" or b"chunked" not in head.lower():
                raise RuntimeError(f"fake server: {head[:300]!r}")
            first = None
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                chunk = (await reader.readexactly(size + 2))[:-2]
                if first is None and chunk.startswith(b"data: {"):
                    choices = json.loads(chunk[6:])["choices"]
                    if choices and choices[0]["delta"].get("content"):
                        first = time.perf_counter()
            if tally is not None:
                if first is None:
                    raise RuntimeError("fake server: no content chunk")
                record(tally.ttft, first - started)
                record(tally.latency, time.perf_counter() - started)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def open_sockets(urls: list[str]) -> list[Any]:
    from websockets.asyncio.client import connect

    sockets = []
    for url in urls:
        socket = await connect(url, compression="deflate", ping_interval=None, open_timeout=30)
        ready = json.loads(await socket.recv())
        if ready.get("type") != "session.ready":
            raise RuntimeError(f"first event {ready}")
        sockets.append(socket)
    return sockets


async def close_sockets(sockets: list[Any]) -> None:
    for socket in sockets:
        with contextlib.suppress(Exception):
            await socket.close()


def last_llm_body(control: str) -> bytes:
    """The request Rapport last sent the fake server; its record of calls is emptied."""
    with httpx.Client(trust_env=False, timeout=30) as http:
        calls = http.get(f"{control}/_control/calls").json()["calls"]
        http.post(f"{control}/_control/reset").raise_for_status()
    if not calls:
        raise RuntimeError("the fake server saw no call")
    return json.dumps(calls[-1]).encode()


# --- the three parts -----------------------------------------------------------------------


@dataclass
class Results:
    nofile: int
    sessions: int
    rapport: Idle | None = None
    starlette: Idle | None = None
    echo: Idle | None = None
    socket: Turns = field(default_factory=Turns)
    http: Turns = field(default_factory=Turns)
    fake: Turns = field(default_factory=Turns)
    compared: dict[str, tuple[Idle, Turns]] = field(default_factory=dict)
    ws_defaults: str = ""
    ping_s: float = 0.0  # the server's ping interval


def users(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def idle_sessions(
    args: argparse.Namespace,
    workdir: Path,
    servers: list[Server],
    upstream: str,
    fake: Server,
    control: str,
    results: Results,
) -> None:
    """Rapport's idle sessions, then its turns on the same server, then the two peers."""
    config = CONFIGS[args.ws] if args.ws else None
    server, port, key = start_rapport(workdir, "rapport", upstream, servers, config)
    data_dir = workdir / "data-rapport"
    refill(data_dir, args.rounds * (args.warmup + args.turns) * 2 + 100)
    redis_before = sum(rss_kib(pid) for pid in server.extra_pids)
    started = time.perf_counter()
    idle_urls = run_async(mint(port, key, users("idle", args.warm + results.sessions)))
    minted = time.perf_counter() - started
    print(f"rapport: minted {len(idle_urls)} sessions in {minted:.1f} s", flush=True)
    idle, holder = hold_idle(
        "hold-rapport", server, idle_urls, args.warm, "rapport", workdir, servers,
        window=args.idle_window, ping=results.ping_s,
    )  # fmt: skip
    idle.redis_before = redis_before
    idle.redis_after = sum(rss_kib(pid) for pid in server.extra_pids)
    results.rapport = idle
    print(
        f"rapport: {idle.sessions} idle sessions opened in {idle.connect_s:.1f} s, "
        f"{idle.per_session():.1f} KiB each",
        flush=True,
    )
    holder.close()
    wait_quiet([server.proc.pid, *server.extra_pids])
    turns(args, server, port, key, fake, control, data_dir, results)
    stop(server)

    peers = {
        "starlette": ("--serve-starlette", "/socket", "rapport", results.ping_s),
        "echo": ("--serve-echo", "/", "echo", ECHO_PING_S),
    }
    for name, (flag, path, mode, ping) in peers.items():
        peer_port = free_port()
        cmd = [sys.executable, "-m", "bench.live_sessions", flag, str(peer_port)]
        if args.ws:
            cmd += ["--ws", args.ws]
        peer = spawn(name, cmd, dict(os.environ), workdir / f"{name}.log")
        servers.append(peer)
        wait_ready(peer, f"http://{LOOPBACK}:{peer_port}/healthz")
        urls = [f"ws://{LOOPBACK}:{peer_port}{path}"] * (args.warm + results.sessions)
        held, holder = hold_idle(
            f"hold-{name}", peer, urls, args.warm, mode, workdir, servers,
            window=args.idle_window, ping=ping,
        )  # fmt: skip
        setattr(results, name, held)
        print(
            f"{name}: {held.sessions} idle sockets opened in {held.connect_s:.1f} s, "
            f"{held.per_session():.1f} KiB each",
            flush=True,
        )
        holder.close()
        stop(peer)


def turns(
    args: argparse.Namespace,
    server: Server,
    port: int,
    key: str,
    fake: Server,
    control: str,
    data_dir: Path,
    results: Results,
) -> None:
    """Socket, HTTP and the fake server straight, round by round, on one event loop (the
    sockets belong to it)."""
    target = Target(server, fake, embedded_redis(data_dir))
    fake_port = int(control.rsplit(":", 1)[1])
    socket_urls = run_async(mint(port, key, users("live", args.turn_sessions)))
    socket, http, direct = results.socket, results.http, results.fake

    async def rounds() -> None:
        sockets = await open_sockets(socket_urls)
        try:
            for r in range(1, args.rounds + 1):
                work = socket_turns(sockets, args.warmup, f"r{r}w", None)
                await measured(target, socket, 0, work, timed=False)
                work = socket_turns(sockets, args.turns, f"r{r}", socket)
                await measured(target, socket, args.turns, work)
                body = last_llm_body(control)
                work = http_turns(port, key, args.turn_sessions, args.warmup, f"r{r}w", None)
                await measured(target, http, 0, work, timed=False)
                work = http_turns(port, key, args.turn_sessions, args.turns, f"r{r}", http)
                await measured(target, http, args.turns, work)
                last_llm_body(control)
                await fake_turns(fake_port, body, args.warmup, None)
                work = fake_turns(fake_port, body, args.turns, direct)
                await measured(target, direct, args.turns, work)
                print(
                    f"round {r}: socket {socket.per_round[-1] * 1e6:.0f} us/turn, "
                    f"http {http.per_round[-1] * 1e6:.0f} us/turn",
                    flush=True,
                )
        finally:
            await close_sockets(sockets)

    try:
        run_async(rounds())
    finally:
        if target.redis is not None:
            target.redis.close()


def compare(
    args: argparse.Namespace,
    workdir: Path,
    servers: list[Server],
    upstream: str,
    fake: Server,
    results: Results,
) -> None:
    for name in args.configs:
        config = CONFIGS[name]
        server, port, key = start_rapport(workdir, name, upstream, servers, config)
        data_dir = workdir / f"data-{name}"
        refill(data_dir, args.compare_sessions + args.warmup + args.compare_turns + 100)
        urls = run_async(mint(port, key, users("idle", args.warm + args.compare_sessions)))
        idle, holder = hold_idle(
            f"hold-{name}", server, urls, args.warm, "rapport", workdir, servers, turn=True
        )
        holder.close()
        wait_quiet([server.proc.pid, *server.extra_pids])
        tally = Turns()
        target = Target(server, fake, embedded_redis(data_dir))
        socket_urls = run_async(mint(port, key, users("live", args.turn_sessions)))

        async def run_turns(urls: list[str] = socket_urls, t: Target = target, c: Turns = tally):
            sockets = await open_sockets(urls)
            try:
                await measured(t, c, 0, socket_turns(sockets, args.warmup, "w", None), timed=False)
                work = socket_turns(sockets, args.compare_turns, "m", c)
                await measured(t, c, args.compare_turns, work)
            finally:
                await close_sockets(sockets)

        try:
            run_async(run_turns())
        finally:
            if target.redis is not None:
                target.redis.close()
        stop(server)
        results.compared[name] = (idle, tally)
        print(
            f"{config.label}: {idle.per_session():.1f} KiB per idle session, "
            f"{idle.per_session(idle.rss_turned):.1f} after a turn each, "
            f"{tally.cpu_us:.0f} us CPU per socket turn",
            flush=True,
        )


# --- report --------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: Results, wall_s: float) -> None:
    print()
    print("## Live sessions")
    print()
    print(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine():
        print(line)
    print("also: " + package_versions("websockets", "wsproto", "redis", "hdrhistogram"))
    print(
        f"settings: 1 uvicorn process, RAPPORT_LOG_LEVEL=warning, rate limits at {HIGH_RPM}/min "
        f"(counted, never refusing), RAPPORT_SESSION_CONNECT_SECONDS={CONNECT_WINDOW_S}, "
        f"RAPPORT_MAX_SESSIONS and the demo account's max_concurrent_sessions {PLAN_SESSIONS}, "
        f"WebSocket settings {results.ws_defaults} unless named; "
        f"RLIMIT_NOFILE {results.nofile}; the client offers permessage-deflate"
    )
    print(f"wall time: {wall_s:.0f} s")
    idle_table(args, results)
    turn_table(args, results)
    compare_table(args, results)
    verdicts(results)


def kib(idle: Idle, rss: int | None) -> str:
    return "-" if rss is None else f"{idle.per_session(rss):.1f}"


def idle_row(name: str, idle: Idle, redis_kib: str) -> str:
    cpu = "-"
    if idle.idle_cpu_s is not None:
        share = idle.idle_cpu_s / idle.window_s * 100
        cpu = f"{share:.1f} ({idle.idle_cpu_s / idle.sessions * 1e6:.0f})"
    return (
        f"| {name} | {idle.sessions} | {idle.connect_s:.1f} | {idle.rss_before / 1024:.0f} "
        f"| {idle.rss_after / 1024:.0f} | {idle.per_session():.1f} | {kib(idle, idle.rss_idle)} "
        f"| {redis_kib} | {cpu} |"
    )


def idle_table(args: argparse.Namespace, results: Results) -> None:
    rapport, starlette, echo = results.rapport, results.starlette, results.echo
    if rapport is None or starlette is None or echo is None:
        return
    print()
    print(
        f"Idle sessions held by one worker ({args.warm} warm-up sockets open before RSS is "
        f"first read; RSS per socket again after the idle window, in which every socket is "
        f"pinged once):"
    )
    print()
    print(
        "| server | sockets | open s | RSS before MiB | RSS after MiB | KiB per socket "
        "| after idle window | redis-server KiB per session | idle CPU % of a core "
        "(µs per socket) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(idle_row("rapport: minted sessions", rapport, f"{rapport.redis_per_session:.1f}"))
    print(idle_row("peer: uvicorn + Starlette, same ws settings", starlette, "-"))
    print(idle_row("peer: websockets.serve echo, compression off", echo, "-"))
    print()
    print(
        f"RSS per idle socket, rapport/echo peer: {rapport.per_session() / echo.per_session():.2f}"
        f"; rapport/Starlette peer: {rapport.per_session() / starlette.per_session():.2f}"
    )


def turn_row(name: str, t: Turns, ttft: bool, redis_stats: bool) -> str:
    first = f"{ms(t.ttft, 50):.2f} / {ms(t.ttft, 99):.2f}" if ttft else "-"
    stats = "- | -"
    if redis_stats:
        stats = f"{t.redis_commands / t.turns:.1f} | {t.redis_reads / t.turns:.2f}"
    return (
        f"| {name} | {t.turns} | {ms(t.latency, 50):.2f} | {ms(t.latency, 99):.2f} | {first} "
        f"| {t.us(t.server_cpu):.0f} | {t.us(t.redis_cpu):.0f} | {t.us(t.fake_cpu):.0f} "
        f"| {t.us(t.client_cpu):.0f} | {stats} |"
    )


def turn_table(args: argparse.Namespace, results: Results) -> None:
    s, h, f = results.socket, results.http, results.fake
    if not (s.turns and h.turns and f.turns):
        return
    print()
    print(
        f"A turn, one at a time, {args.rounds} round(s) x {args.turns} after {args.warmup} "
        f"warm-up per transport ({args.turn_sessions} sessions / users each):"
    )
    print()
    print(
        "| transport | turns | p50 ms | p99 ms | first token p50 / p99 ms | server CPU µs/turn "
        "| redis CPU µs/turn | fake LLM CPU µs/turn | client CPU µs/turn | Redis commands/turn "
        "| round trips/turn |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(turn_row("socket (`user.message` to `budget`)", s, True, True))
    print(turn_row("HTTP `POST /api/v1/conversation`", h, False, True))
    fake = Turns(f.latency, f.ttft, f.turns, fake_cpu=f.fake_cpu, client_cpu=f.client_cpu)
    print(turn_row("fake LLM direct (streamed)", fake, True, False))
    ratios = [a / b for a, b in zip(s.per_round, h.per_round, strict=True) if b > 0]
    print()
    if h.cpu_us > 0 and ratios:
        print(
            f"CPU per turn (server + redis-server), socket/HTTP: {s.cpu_us / h.cpu_us:.2f} "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f})"
        )
    else:
        # /proc counts CPU in 10 ms ticks: a handful of turns may read as none.
        print("CPU per turn, socket/HTTP: too few turns to read (raise --turns)")
    print(
        f"first reply.delta p50 minus the fake server's first token p50: "
        f"{ms(s.ttft, 50) - ms(f.ttft, 50):.2f} ms"
    )


def compare_table(args: argparse.Namespace, results: Results) -> None:
    if not results.compared:
        return
    print()
    print(
        f"uvicorn's WebSocket settings, a fresh server each: {args.compare_sessions} idle "
        f"sessions after {args.warm} warm-up (RSS read once they are open, and again after "
        f"one turn on each), then {args.compare_turns} socket turns one at a time after "
        f"{args.warmup} warm-up:"
    )
    print()
    print(
        "| ws | deflate | KiB per idle session | after one turn each | open s "
        "| CPU µs per socket turn (server + redis) | first reply.delta p50 ms | turn p50 ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, (idle, t) in results.compared.items():
        config = CONFIGS[name]
        print(
            f"| {config.impl} | {'on' if config.deflate else 'off'} | {idle.per_session():.1f} "
            f"| {kib(idle, idle.rss_turned)} | {idle.connect_s:.1f} | {t.cpu_us:.0f} "
            f"| {ms(t.ttft, 50):.2f} | {ms(t.latency, 50):.2f} |"
        )


def verdicts(results: Results) -> None:
    checks: list[tuple[str, bool]] = []
    idle = results.rapport
    if idle is not None:
        held = idle.sessions
        per = idle.per_session()
        checks.append(
            (f"idle sessions held by one worker: {held} (target >= 10000)", held >= 10_000)
        )
        checks.append((f"RSS per idle session: {per:.1f} KiB (target <= 30)", per <= 30))
    s, h, f = results.socket, results.http, results.fake
    if s.turns and h.turns and f.turns:
        added = ms(s.ttft, 50) - ms(f.ttft, 50)
        if h.cpu_us > 0:
            ratio = s.cpu_us / h.cpu_us
            checks.append((f"CPU per turn, socket/HTTP: {ratio:.2f} (target <= 0.8)", ratio <= 0.8))
        checks.append(
            (f"first reply.delta over the LLM's first token, p50: {added:.2f} ms (target <= 2)",
             added <= 2)
        )  # fmt: skip
    if not checks:
        return
    print()
    print("Targets (issue 11):")
    for text, met in checks:
        print(f"- {text}: {'met' if met else 'MISSED'}")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=10_000, help="idle sessions measured")
    parser.add_argument("--warm", type=int, default=200, help="sockets opened before RSS")
    parser.add_argument(
        "--idle-window",
        type=float,
        default=20.0,
        help="seconds of idle CPU (at least a ping interval); 0: none",
    )
    parser.add_argument("--turns", type=int, default=300, help="measured turns per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured turns before each")
    parser.add_argument("--turn-sessions", type=int, default=64, help="sockets turns rotate on")
    parser.add_argument("--compare-sessions", type=int, default=1000)
    parser.add_argument("--compare-turns", type=int, default=500)
    parser.add_argument(
        "--configs", nargs="*", choices=sorted(CONFIGS), default=list(CONFIGS),
        help="WebSocket settings compared (none: skip the comparison)",
    )  # fmt: skip
    parser.add_argument(
        "--ws", choices=sorted(CONFIGS), help="WebSocket settings of the idle and turn runs "
        "(default: rapport serve's own)",
    )  # fmt: skip
    parser.add_argument("--skip-idle", action="store_true", help="no 10k run, no turns")
    parser.add_argument("--hold", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hold-warm", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hold-mode", choices=("rapport", "echo"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-starlette", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-legacy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("sessions", "warm", "turns", "rounds", "turn_sessions", "compare_sessions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.compare_turns < 1 or args.idle_window < 0:
        parser.error("--warmup and --idle-window must be >= 0, --compare-turns >= 1")
    return args


def run(args: argparse.Namespace, workdir: Path, servers: list[Server]) -> None:
    # Here, not at the top: the client process that holds sockets needs none of the engine.
    from engine.config import Settings

    started = time.monotonic()
    defaults = Settings()
    results = Results(nofile=raise_nofile(), sessions=args.sessions)
    results.ping_s = defaults.ws_ping_interval
    ws = (
        CONFIGS[args.ws].label
        if args.ws
        else f"{defaults.ws_impl}, deflate {'on' if defaults.ws_per_message_deflate else 'off'}"
    )
    results.ws_defaults = (
        f"{'given by --ws' if args.ws else 'at rapport serve defaults'} ({ws}, ping "
        f"{defaults.ws_ping_interval:g}/{defaults.ws_ping_timeout:g} s, max size "
        f"{defaults.ws_max_size})"
    )
    # The server holds the measured, warm-up and turn sockets, plus files of its own.
    fits = results.nofile - args.warm - args.turn_sessions - FD_SPARE
    if fits < args.sessions:
        print(
            f"RLIMIT_NOFILE's hard limit is {results.nofile}: {args.sessions} sessions do not "
            f"fit, measuring {fits}",
            flush=True,
        )
        results.sessions = fits
    fake, control = start_fake_openai(workdir, servers)
    upstream = f"{control}/v1"
    if not args.skip_idle:
        idle_sessions(args, workdir, servers, upstream, fake, control, results)
    compare(args, workdir, servers, upstream, fake, results)
    report(args, results, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hold is not None:
        raise_nofile()
        urls = args.hold.read_text().split()
        run_async(hold_sockets(urls, args.hold_warm, args.hold_mode))
        return 0
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return 0
    if args.serve_starlette is not None:
        serve_starlette(args.serve_starlette, CONFIGS[args.ws] if args.ws else None)
        return 0
    if args.serve_legacy:
        serve_legacy()
        return 0
    return run_bench(lambda workdir, servers: run(args, workdir, servers))


if __name__ == "__main__":
    sys.exit(main())
