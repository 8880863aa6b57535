"""Prometheus metrics: requests by route and status, latency histograms; sockets by route
and outcome, with their lifetimes.

Labels use the route template (``/api/personas/{persona_id}``), never the raw path, so the
series count stays bounded whatever clients send. A socket's ``status`` is how it ended: 101
when it was accepted and the client ended it, the close code when the server closed it, the
HTTP status (403, 500) when its handshake was refused. The close codes are only ours (the
error table's and 1000); a client's close code is never a label, so it cannot add series.
Sockets have their own families because they live for minutes: in the request histogram
they would bury the latencies it is there to show. With several uvicorn workers the parent
sets ``PROMETHEUS_MULTIPROC_DIR`` and every worker's samples are summed at scrape time.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# Seconds; dense below 50 ms where the engine's own overhead lives, sparse up to LLM times.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Seconds a socket stays open: a failed handshake, a short exchange, a session (up to an hour).
SOCKET_BUCKETS = (0.01, 0.1, 1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiproc_dir:
            MultiProcessCollector(self.registry, path=multiproc_dir)
        else:
            ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "rapport_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=None if multiproc_dir else self.registry,
        )
        self.latency = Histogram(
            "rapport_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=None if multiproc_dir else self.registry,
        )
        self.sockets = Counter(
            "rapport_websocket_connections",
            "WebSocket connections ended, by route template and status (see the module).",
            ("route", "status"),
            registry=None if multiproc_dir else self.registry,
        )
        self.socket_duration = Histogram(
            "rapport_websocket_connection_duration_seconds",
            "Time from the upgrade request to the socket's end, by route template.",
            ("route",),
            buckets=SOCKET_BUCKETS,
            registry=None if multiproc_dir else self.registry,
        )

        # The waiting room's moves, counted by the process whose script made them; the two
        # gauges are deployment-wide (every node reports the same), read from Redis at scrape.
        own = None if multiproc_dir else self.registry
        self.admissions = Counter(
            "rapport_waiting_room_admissions", "Queued sessions offered a slot.", registry=own
        )
        self.noshows = Counter(
            "rapport_waiting_room_noshows",
            "Offered slots not taken within the connect window (passed to the next).",
            registry=own,
        )
        self.evictions = Counter(
            "rapport_waiting_room_evictions",
            "Queued clients that lost their place: neither connected nor polling.",
            registry=own,
        )
        self.lapsed = Counter(
            "rapport_session_leases_lapsed",
            "Session slots freed because their lease ran out (a process stopped renewing).",
            registry=own,
        )
        self.live_sessions = Gauge(
            "rapport_live_sessions",
            "Session slots held in the deployment (ready, live, or offered to a queued client).",
            registry=own,
            multiprocess_mode="mostrecent",
        )
        self.queued_clients = Gauge(
            "rapport_queued_clients",
            "Clients waiting in the deployment's waiting room.",
            registry=own,
            multiprocess_mode="mostrecent",
        )

    def observe_sweep(self, admitted: int, noshows: int, evicted: int, lapsed: int) -> None:
        for counter, n in (
            (self.admissions, admitted),
            (self.noshows, noshows),
            (self.evictions, evicted),
            (self.lapsed, lapsed),
        ):
            if n:
                counter.inc(n)

    def observe_capacity(self, held: int, queued: int) -> None:
        self.live_sessions.set(held)
        self.queued_clients.set(queued)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_socket(self, route: str, status: int, seconds: float) -> None:
        self.sockets.labels(route, str(status)).inc()
        self.socket_duration.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
