"""What a run records: latencies in HDR histograms, outcomes counted by name, and the
per-second timeline; and the :class:`Recorder` a scenario writes to.

Every latency goes into three places: the histogram of the phase the operation belongs to
(the stage of its intended start), the whole run's, and, for the headline measure, the
histogram of the second it was recorded in (the timeline's p50 and p99, kept only until that
second is over). Histograms hold microseconds, 1 µs to an hour, 3 significant digits;
results are milliseconds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from hdrh.histogram import HdrHistogram

from loadtest.result import Percentiles, Phase, Tick

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
DIGITS = 3
BUCKET_FIRST_US = 100  # the whole run's histograms: 0.1 ms, then x 1.25 a bucket
BUCKET_BASE = 1.25
OK_OUTCOMES = frozenset({"ok", "close 1000", "reply completed", "reply cancelled", "resumed"})


def histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def record_seconds(hist: HdrHistogram, seconds: float) -> None:
    hist.record_value(min(HIGHEST_US, max(LOWEST_US, round(seconds * 1e6))))


def percentiles(hist: HdrHistogram) -> Percentiles:
    def ms(us: float) -> float:
        return round(us / 1000, 3)

    return Percentiles(
        count=hist.get_total_count(),
        mean=ms(hist.get_mean_value()),
        p50=ms(hist.get_value_at_percentile(50)),
        p90=ms(hist.get_value_at_percentile(90)),
        p99=ms(hist.get_value_at_percentile(99)),
        p999=ms(hist.get_value_at_percentile(99.9)),
        max=ms(hist.get_max_value()),
    )


def buckets(hist: HdrHistogram) -> list[tuple[float, int]]:
    """(upper bound in ms, count) of the non-empty logarithmic buckets."""
    if hist.get_total_count() == 0:
        return []
    return [
        (round(step.value_iterated_to / 1000, 3), step.count_added_in_this_iter_step)
        for step in hist.get_log_iterator(BUCKET_FIRST_US, BUCKET_BASE)
        if step.count_added_in_this_iter_step
    ]


def is_ok(outcome: str) -> bool:
    """The default verdict on an outcome: one of :data:`OK_OUTCOMES`, or a 2xx status
    (``200``, ``200 replay``, ``mint 201``). Anything else is an error."""
    if outcome in OK_OUTCOMES:
        return True
    for word in outcome.split()[:2]:
        if word.isdigit():
            return word.startswith("2")
    return False


class Tally:
    """One phase's figures as they come."""

    def __init__(self, name: str, started_s: float, mode: str = "open") -> None:
        self.name = name
        self.mode = mode
        self.started_s = started_s
        self.ended_s: float | None = None
        self.scheduled = 0
        self.sent = 0
        self.completed = 0
        self.dropped = 0
        self.latency: dict[str, HdrHistogram] = {}
        self.breakdown: dict[str, HdrHistogram] = {}
        self.outcomes: Counter[str] = Counter()

    def observe(self, kind: dict[str, HdrHistogram], name: str, seconds: float) -> None:
        hist = kind.get(name)
        if hist is None:
            hist = kind[name] = histogram()
        record_seconds(hist, seconds)

    def phase(self, ended_s: float, mode: str) -> Phase:
        ended = self.ended_s if self.ended_s is not None else ended_s
        span = max(ended - self.started_s, 1e-9)
        offered = (self.scheduled if mode == "open" else self.sent) / span
        return Phase(
            name=self.name,
            started_s=round(self.started_s, 3),
            ended_s=round(ended, 3),
            offered_rate=round(offered, 3),
            achieved_rate=round(self.completed / span, 3),
            sent=self.sent,
            completed=self.completed,
            dropped=self.dropped,
            latency={k: percentiles(v) for k, v in sorted(self.latency.items())},
            outcomes=dict(self.outcomes.most_common()),
            breakdown={k: percentiles(v) for k, v in sorted(self.breakdown.items())},
        )


class Second:
    __slots__ = ("completed", "errors", "hist", "started")

    def __init__(self) -> None:
        self.started = 0
        self.completed = 0
        self.errors = 0
        self.hist: HdrHistogram | None = None


class Timeline:
    """Per-second counts and the headline measure's p50/p99, seconds from the run's start."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.ticks: list[Tick] = []
        self.current = Second()

    def second(self) -> Second:
        """The open second, closing those that have passed."""
        now = int(time.monotonic() - self.origin)
        while len(self.ticks) < now:
            self._close()
        return self.current

    def _close(self) -> None:
        s = self.current
        p50 = p99 = None
        if s.hist is not None and s.hist.get_total_count():
            p50 = round(s.hist.get_value_at_percentile(50) / 1000, 3)
            p99 = round(s.hist.get_value_at_percentile(99) / 1000, 3)
        self.ticks.append(Tick(len(self.ticks), s.started, s.completed, s.errors, p50, p99))
        self.current = Second()

    def finish(self) -> list[Tick]:
        """Every second up to now, the last (partial) one included."""
        self.second()
        self._close()
        return self.ticks


class Measurements:
    """The run's tallies: one per phase, one for the whole run, and the timeline."""

    def __init__(self, origin: float, headline: str | None) -> None:
        self.origin = origin
        self.headline = headline
        self.total = Tally("total", 0.0)
        self.phases: list[Tally] = []
        self.timeline = Timeline(origin)
        self.error_names: set[str] = set()
        self.recent: HdrHistogram = histogram()
        """The headline measure since the progress display last looked."""

    def now_s(self) -> float:
        return time.monotonic() - self.origin

    def open_phase(self, name: str, mode: str) -> Tally:
        now = self.now_s()
        if self.phases and self.phases[-1].ended_s is None:
            self.phases[-1].ended_s = now
        tally = Tally(name, now, mode)
        self.phases.append(tally)
        return tally

    def current(self) -> Tally:
        return self.phases[-1]

    # --- what the runner counts -----------------------------------------------------------

    def scheduled(self, tally: Tally) -> None:
        tally.scheduled += 1
        self.total.scheduled += 1

    def dropped(self, tally: Tally) -> None:
        tally.dropped += 1
        self.total.dropped += 1

    def started(self, tally: Tally) -> None:
        tally.sent += 1
        self.total.sent += 1
        self.timeline.second().started += 1

    def completed(self, tally: Tally) -> None:
        tally.completed += 1
        self.total.completed += 1
        self.timeline.second().completed += 1

    # --- what a recorder writes ------------------------------------------------------------

    def latency(self, tally: Tally, measure: str, seconds: float) -> None:
        tally.observe(tally.latency, measure, seconds)
        self.total.observe(self.total.latency, measure, seconds)
        if measure == self.headline or self.headline is None:
            self.headline = measure
            second = self.timeline.second()
            if second.hist is None:
                second.hist = histogram()
            record_seconds(second.hist, seconds)
            record_seconds(self.recent, seconds)

    def breakdown(self, tally: Tally, name: str, ms: float) -> None:
        tally.observe(tally.breakdown, name, ms / 1000)
        self.total.observe(self.total.breakdown, name, ms / 1000)

    def outcome(self, tally: Tally, name: str, ok: bool) -> None:
        tally.outcomes[name] += 1
        self.total.outcomes[name] += 1
        if not ok:
            self.error_names.add(name)
            self.timeline.second().errors += 1

    def errors(self) -> int:
        return sum(self.total.outcomes[name] for name in self.error_names)


class Recorder:
    """What a scenario records, passed to it as ``record``:

    - ``record("reply", seconds)``: one latency of a measure (any name);
    - ``record.outcome("200")``, ``record.outcome("close 4005", ok=False)``: one outcome,
      counted by name, never averaged; ``ok`` defaults to :func:`is_ok`'s verdict;
    - ``record.breakdown("queue_latency_ms", 3)``: one of the server's own figures, in ms;
    - ``record.background()``: a recorder for later events, into the phase of their time.

    An operation that records no outcome and raises nothing counts as ``ok``.
    """

    __slots__ = ("_phase", "measurements", "outcomes")

    def __init__(self, measurements: Measurements, phase: Tally | Callable[[], Tally]) -> None:
        self.measurements = measurements
        self._phase = phase
        self.outcomes = 0

    @property
    def phase(self) -> Tally:
        return self._phase() if callable(self._phase) else self._phase

    def __call__(self, measure: str, seconds: float) -> None:
        self.measurements.latency(self.phase, measure, seconds)

    def outcome(self, name: str, ok: bool | None = None) -> None:
        self.outcomes += 1
        self.measurements.outcome(self.phase, name, is_ok(name) if ok is None else ok)

    def breakdown(self, name: str, ms: float) -> None:
        self.measurements.breakdown(self.phase, name, ms)

    def background(self) -> Recorder:
        """A recorder for what happens outside any one operation (a socket the server
        closes while nothing waits on it): it records into the phase running at the time."""
        return Recorder(self.measurements, self.measurements.current)
