"""CPU per request of the HTTP protocol ``rapport serve`` uses (api/transport.py: httptools
with head size, head timeout and connection limits) against uvicorn's plain httptools and h11
protocols, in the same run (issue 21, item 4).

Each protocol serves a minimal ASGI app (this module's ``app``: a 2-byte 200) under uvicorn, one
process on a free loopback port; keep-alive clients on raw sockets send small GETs, and the
server's CPU (utime + stime from /proc) is divided by the requests it answered. Rounds
alternate the protocols so that drift on a shared machine falls on all of them. Servers are
stopped by pid.

    .venv/bin/python -m bench.http_parser [--requests 20000] [--clients 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = {
    "httptools (uvicorn)": "httptools",
    "rapport (api.transport)": "api.transport:HttpProtocol",
    "h11 (uvicorn)": "h11",
}
REQUEST = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def _client(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        writer.write(REQUEST)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
    writer.close()


async def _load(port: int, requests: int, clients: int) -> None:
    await asyncio.gather(*(_client(port, requests // clients) for _ in range(clients)))


def measure(http: str, requests: int, clients: int) -> tuple[float, float]:
    """(server CPU µs per request, requests per second) for one protocol."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.http_parser:app", "--port", str(port),
         "--http", http, "--log-level", "warning", "--no-access-log"],
        cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        asyncio.run(_load(port, requests // 10, clients))  # warm-up
        before, started = _cpu_seconds(process.pid), time.perf_counter()
        asyncio.run(_load(port, requests, clients))
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(process.pid) - before
        return cpu / requests * 1e6, requests / elapsed
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in PROTOCOLS}
    for _ in range(args.rounds):
        for name, http in PROTOCOLS.items():
            results[name].append(measure(http, args.requests, args.clients))
    base = statistics.median(cpu for cpu, _ in results["httptools (uvicorn)"])
    print(f"{args.requests} requests x {args.rounds} rounds, {args.clients} keep-alive clients")
    print("| protocol | server CPU µs/request (median) | ratio to httptools | requests/s |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        cpu = statistics.median(c for c, _ in runs)
        rate = statistics.median(r for _, r in runs)
        print(f"| {name} | {cpu:.1f} | {cpu / base:.2f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
