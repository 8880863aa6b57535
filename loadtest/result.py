"""What a load test found, as written to ``result.json`` and drawn in ``report.html``.

One msgspec schema for both: the runner fills it (:mod:`loadtest.measure`), the report
reads it (:mod:`loadtest.report`), and a user's script can load a result file with
:func:`load` to compare runs. Latencies are milliseconds; times are seconds from the start
of the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec


class Percentiles(msgspec.Struct, frozen=True):
    """One latency distribution, from an HDR histogram (3 significant digits)."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


class Stage(msgspec.Struct, frozen=True):
    """One step of the load: hold ``target`` (arrivals a second in open loop, clients in
    closed loop) for ``duration_s``, ramping linearly from the previous stage's target."""

    duration_s: float
    target: float


class Phase(msgspec.Struct, kw_only=True):
    """What happened during one stage."""

    name: str
    started_s: float
    ended_s: float
    offered_rate: float
    """Arrivals a second the schedule asked for (open loop), or requests started (closed)."""
    achieved_rate: float
    """Completed operations a second, errors included."""
    sent: int
    completed: int
    dropped: int
    """Arrivals the generator could not start on time (it was itself overloaded, or the
    concurrency cap of the open loop was reached): counted, never silently skipped."""
    latency: dict[str, Percentiles]
    """By measure: ``request`` (HTTP), ``mint``, ``queue_wait``, ``connect``,
    ``first_delta``, ``reply``, ``cancel_to_done`` (ws)."""
    outcomes: dict[str, int]
    """By outcome: ``200``, ``429 limits.rate_exceeded``, ``503 queue_unavailable``,
    ``504 upstream_timeout``, ``close 4005``, ``transport ConnectError``…; never averaged."""
    breakdown: dict[str, Percentiles]
    """Rapport's own ``latency_breakdown`` fields, as the server reported them."""


class Tick(msgspec.Struct, frozen=True):
    """One second of the run, for the charts."""

    t_s: float
    started: int
    completed: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


class ServerSample(msgspec.Struct, frozen=True):
    """The server's own figures read from its ``/metrics``."""

    t_s: float
    rss_bytes: float | None
    cpu_seconds: float | None


class SessionSample(msgspec.Struct, frozen=True):
    """The deployment's sessions at one moment, from ``GET /api/sessions``'s ``capacity``;
    None for a second the server did not answer."""

    t_s: float
    held: int | None
    """Slots held, every account's (``slots_held``)."""
    waiting: int | None
    """Clients in the waiting room (``waiting``)."""


class SiteFigures(msgspec.Struct, kw_only=True):
    """A site-like run (``rapport loadtest ws --page-views``): page views, some of whose
    visitors chat, and what they cost in the deployment's slots."""

    start: Literal["first-message", "autostart"]
    page_views: int
    """Page views started (the generator's dropped arrivals are not among them)."""
    chatting: int
    """Visitors who meant to chat."""
    waited: int
    """Chatting visitors whose first message found no session ready and waited in the
    waiting room."""
    refused: int
    """Chatting visitors refused a session (503 waiting_room_full, or a mint or socket
    refused otherwise): they could not chat."""
    mints: int
    """Sessions minted (201 or 202), every visitor's."""
    wait_p50_ms: float | None
    wait_p95_ms: float | None
    """Chatting visitors' wait, from their first message to ``session.ready``."""
    max_sessions: int | None
    """The deployment's cap (``RAPPORT_MAX_SESSIONS``) as the server reported it."""
    samples: list[SessionSample]
    """Once a second, from the first page view until the server held nothing (or
    ``--settle`` ran out)."""

    @property
    def peak_held(self) -> int:
        return max((s.held for s in self.samples if s.held is not None), default=0)

    @property
    def mean_held(self) -> float | None:
        """Over the samples the server answered, from the first page view to the end."""
        held = [s.held for s in self.samples if s.held is not None]
        return sum(held) / len(held) if held else None

    @property
    def slot_seconds(self) -> int:
        """Slots held, summed over the samples (one a second): the area under the curve,
        which compares runs of different lengths."""
        return sum(s.held for s in self.samples if s.held is not None)

    @property
    def peak_waiting(self) -> int:
        return max((s.waiting for s in self.samples if s.waiting is not None), default=0)


class Result(msgspec.Struct, kw_only=True):
    tool: str = "rapport loadtest"
    command: str
    target: str
    scenario: str
    mode: Literal["open", "closed"]
    started_at: str
    """ISO 8601, UTC."""
    duration_s: float
    stages: list[Stage]
    phases: list[Phase]
    totals: Phase
    """The whole run as one phase."""
    timeline: list[Tick]
    server: list[ServerSample]
    histograms: dict[str, list[tuple[float, int]]]
    """By measure, the whole run's distribution: (upper bound in ms, count) buckets."""
    interrupted: bool = False
    """Stopped early (Ctrl-C): the figures cover what ran."""
    site: SiteFigures | None = None
    """A site-like run's own figures; None for every other run."""


encode = msgspec.json.Encoder().encode


def load(path: str | os.PathLike[str]) -> Result:
    """A run's result.json, from a path given as a string or a ``Path``."""
    return msgspec.json.decode(Path(path).read_bytes(), type=Result)


def save(result: Result, path: Path) -> None:
    path.write_bytes(msgspec.json.format(encode(result), indent=2))
