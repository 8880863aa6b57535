"""The server's own figures over the run: its RSS and CPU seconds, read from ``/metrics``
every second on a connection of their own.

They come from prometheus_client's process collector (``process_resident_memory_bytes``,
``process_cpu_seconds_total``). With several uvicorn workers Rapport exposes no process
figures (the multiprocess collector has none), and a server that does not answer within the
interval gives no figures for that second either: both are then None, never guessed.

A server with RAPPORT_METRICS_TOKEN set is read with that token from the load tester's own
environment (``Authorization: Bearer``); without it such a server's figures are None.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from loadtest.client import Client
from loadtest.result import ServerSample

RSS = "process_resident_memory_bytes"
CPU = "process_cpu_seconds_total"
METRICS_PATH = "/metrics"
METRICS_TOKEN_ENV = "RAPPORT_METRICS_TOKEN"  # noqa: S105 - a variable name, not a secret


def parse(text: str) -> tuple[float | None, float | None]:
    """(RSS bytes, CPU seconds) from Prometheus text; None for a figure not there."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name in (RSS, CPU):
            with contextlib.suppress(ValueError, IndexError):
                found[name] = float(rest.split()[0])
    return found.get(RSS), found.get(CPU)


async def sample(url: str, origin: float, into: list[ServerSample], every_s: float = 1.0) -> None:
    """Append one sample a second until cancelled."""
    client = Client(url, connections=1, timeout_s=every_s)
    token = os.environ.get(METRICS_TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        next_at = time.monotonic()
        while True:
            t = time.monotonic() - origin
            rss = cpu = None
            try:
                answer = await client.get(METRICS_PATH, headers=headers)
                if answer.status == 200:
                    rss, cpu = parse(answer.body.decode("utf-8", "replace"))
            except (OSError, EOFError, TimeoutError, ValueError):
                pass
            into.append(ServerSample(round(t, 3), rss, cpu))
            next_at += every_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        await client.aclose()
