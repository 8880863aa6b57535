"""The runner: drives a scenario through the stages, open or closed loop, and returns the
:class:`~loadtest.result.Result` (written to ``result.json`` and ``report.html``).

A scenario is an async function ``scenario(client, clock, record)`` that performs one
operation: ``client`` is the run's :class:`~loadtest.client.Client`, ``clock`` a
:class:`Clock` (when the operation was due), ``record`` a :class:`~loadtest.measure.Recorder`.

- **Open loop** (the default): arrivals are due at fixed times computed from the stages'
  rates (:mod:`loadtest.schedule`); each starts as a task at its time whatever the ones before
  it are doing, and ``clock.elapsed()`` counts from that intended time, so a server that
  stalls shows as latency instead of hiding behind a client that slowed down with it
  (coordinated omission). An arrival the generator cannot start within ``SLACK_S`` of its
  time, or while ``max_in_flight`` operations are running, is counted as dropped.
- **Closed loop**: ``target`` clients, each starting its next operation when the last ends.

Every run is bounded: the stages' total, then at most ``drain_s`` for the operations still
running (those left are cancelled and counted ``unfinished``), then at most ``TEARDOWN_S``
for the teardown (or what the scenario asks: a site-like run waits there for the server to
free its sessions); at most ``max_operations`` operations are started. SIGINT or SIGTERM
(Ctrl-C) stops at once: scheduling ends, running operations are cancelled (or the teardown,
when it comes during the teardown), and the result is still built and written, with
``interrupted`` set; a second Ctrl-C quits without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from loadtest.client import Client, transport_outcome
from loadtest.loopback import check_target
from loadtest.measure import Measurements, Recorder, Tally, buckets
from loadtest.progress import Progress
from loadtest.report import render
from loadtest.result import Result, ServerSample, SiteFigures, Stage, save
from loadtest.schedule import Schedule
from loadtest.server_stats import sample

Scenario = Callable[[Client, "Clock", Recorder], Awaitable[None]]
Mode = Literal["open", "closed"]

SLACK_S = 0.1
"""How late an open-loop arrival may start before it counts as dropped."""
CLOSED_POLL_S = 0.05
TEARDOWN_S = 5.0
CANCEL_WAIT_S = 5.0
TRANSPORT_ERRORS = (OSError, EOFError, TimeoutError, ConnectionClosed, InvalidHandshake)


class Clock:
    """When an operation was due, on the ``time.monotonic()`` scale."""

    __slots__ = ("intended", "origin")

    def __init__(self, intended: float, origin: float) -> None:
        self.intended = intended
        self.origin = origin

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the operation was due: the latency to record in open loop."""
        return time.monotonic() - self.intended

    @property
    def t(self) -> float:
        """When the operation was due, in seconds from the start of the run."""
        return self.intended - self.origin


def failure_outcome(exc: BaseException) -> str:
    if isinstance(exc, TRANSPORT_ERRORS):
        return transport_outcome(exc)
    return f"error {type(exc).__name__}"


class Runner:
    def __init__(
        self,
        scenario: Scenario,
        *,
        url: str,
        stages: Sequence[Stage],
        mode: Mode,
        key: str | None,
        name: str,
        measure: str | None,
        setup: tuple[Scenario, Sequence[Stage]] | None,
        teardown: Callable[[], Awaitable[None]] | None,
        teardown_s: float,
        site: Callable[[], SiteFigures] | None,
        max_in_flight: int,
        max_operations: int,
        connections: int,
        timeout_s: float,
        drain_s: float,
        progress: bool,
        command: str,
    ) -> None:
        self.scenario = scenario
        self.url = url
        self.stages = list(stages)
        self.schedule = Schedule(self.stages)
        self.mode = mode
        self.key = key
        self.name = name
        self.measure = measure
        self.setup = setup
        self.teardown = teardown
        self.teardown_s = teardown_s
        self.site = site
        self.max_in_flight = max_in_flight
        self.max_operations = max_operations
        self.connections = connections
        self.timeout_s = timeout_s
        self.drain_s = drain_s
        self.progress = progress
        self.command = command
        self.interrupted = False
        self.capped = False
        self.active = 0
        self.max_late_s = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self.samples: list[ServerSample] = []
        self.reported: set[str] = set()
        self.phase_name = "starting"
        self.stage_origin: float | None = None
        self._work: asyncio.Task[None] | None = None

    def planned_s(self) -> float:
        setup = Schedule(self.setup[1]).total_s if self.setup else 0.0
        return setup + self.schedule.total_s

    # --- the run ---------------------------------------------------------------------------

    async def main(self) -> Result:
        self.origin = time.monotonic()
        self.cpu_origin = time.process_time()
        self.started_at = datetime.now(UTC)
        self.m = Measurements(self.origin, self.measure)
        self.client = Client(
            self.url, key=self.key, connections=self.connections, timeout_s=self.timeout_s
        )
        sampler = asyncio.create_task(sample(self.url, self.origin, self.samples))
        display = Progress(self) if self.progress else None
        if display is not None:
            display.start()
        self._work = asyncio.create_task(self._run())
        if self.interrupted:  # Ctrl-C came before there was anything to stop
            self._work.cancel()
        try:
            await self._work
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
        finally:
            await self._cancel_tasks()
            if self.m.phases and self.m.phases[-1].ended_s is None:
                self.m.phases[-1].ended_s = self.m.now_s()
            if self.teardown is not None:
                # Interrupted, a scenario's longer teardown (a settling) is cut short; a
                # Ctrl-C during it ends it as one during the run ends the run (interrupt()).
                bound = TEARDOWN_S if self.interrupted else self.teardown_s
                self._work = asyncio.create_task(self._tear_down(bound))
                try:
                    await self._work
                except asyncio.CancelledError:
                    if not self.interrupted:
                        raise
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            await self.client.aclose()
            if display is not None:
                display.stop()
        if self.capped:
            print(
                f"loadtest: stopped starting operations at max_operations ({self.max_operations})",
                file=sys.stderr,
            )
        return self.result()

    async def _tear_down(self, bound: float) -> None:
        assert self.teardown is not None
        try:
            async with asyncio.timeout(bound):
                await self.teardown()
        except Exception as exc:
            print(f"loadtest: teardown failed: {exc!r}", file=sys.stderr)

    def interrupt(self) -> None:
        """Ctrl-C: stop scheduling and cancel what runs, the run or its teardown; the result
        is still written."""
        if self.interrupted:
            return
        self.interrupted = True
        print("\nloadtest: interrupted, writing the report (Ctrl-C again to quit)", file=sys.stderr)
        if self._work is not None:
            self._work.cancel()

    async def _run(self) -> None:
        if self.setup is not None:
            scenario, stages = self.setup
            self.phase_name = "setup"
            tally = self.m.open_phase("setup", "open")
            await self._open_loop(scenario, Schedule(stages), time.monotonic(), lambda i: tally)
            await self._drain()
        origin = self.stage_origin = time.monotonic()
        tallies: list[Tally] = []

        def tally_of(i: int) -> Tally:
            while len(tallies) <= i:
                n = len(tallies)
                self.phase_name = self.stage_name(n)
                tallies.append(self.m.open_phase(self.phase_name, self.mode))
            return tallies[i]

        async def open_phases() -> None:
            for i, start in enumerate(self.schedule.starts):
                await asyncio.sleep(max(0.0, origin + start - time.monotonic()))
                tally_of(i)

        opener = asyncio.create_task(open_phases())
        try:
            if self.mode == "open":
                await self._open_loop(self.scenario, self.schedule, origin, tally_of)
            else:
                await self._closed_loop(self.scenario, self.schedule, origin, tally_of)
        finally:
            opener.cancel()
        if self.m.phases[-1].ended_s is None:
            self.m.phases[-1].ended_s = self.m.now_s()
        self.phase_name = "draining"
        await self._drain()

    def stage_name(self, i: int) -> str:
        stage = self.stages[i]
        unit = "/s" if self.mode == "open" else " clients"
        before = self.schedule.begin(i)
        target = f"{stage.target:g}{unit}"
        if before != stage.target:
            target = f"{before:g}→{stage.target:g}{unit}"
        return f"stage {i + 1} ({target})"

    async def _open_loop(
        self,
        scenario: Scenario,
        schedule: Schedule,
        origin: float,
        tally_of: Callable[[int], Tally],
    ) -> None:
        for n, (t, i) in enumerate(schedule.arrivals()):
            due = origin + t
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 64 == 0:
                await asyncio.sleep(0)  # far behind: let the running operations breathe
            tally = tally_of(i)
            if self.m.total.scheduled >= self.max_operations:
                self.capped = True
                break
            self.m.scheduled(tally)
            late = time.monotonic() - due
            self.max_late_s = max(self.max_late_s, late)
            if late > SLACK_S or self.active >= self.max_in_flight:
                self.m.dropped(tally)
                continue
            self._start(scenario, Clock(due, self.origin), tally)
        await asyncio.sleep(max(0.0, origin + schedule.total_s - time.monotonic()))

    async def _closed_loop(
        self,
        scenario: Scenario,
        schedule: Schedule,
        origin: float,
        tally_of: Callable[[int], Tally],
    ) -> None:
        end = origin + schedule.total_s

        async def client(w: int) -> None:
            while (now := time.monotonic()) < end:
                t = now - origin
                if w >= round(schedule.target_at(t)):
                    await asyncio.sleep(CLOSED_POLL_S)
                    continue
                if self.m.total.sent >= self.max_operations:
                    self.capped = True
                    return
                tally = tally_of(schedule.stage_at(t))
                self.m.scheduled(tally)
                await self._one(scenario, Clock(now, self.origin), tally)

        top = math.ceil(max(stage.target for stage in schedule.stages))
        for w in range(top):
            self._track(asyncio.create_task(client(w)))
        await asyncio.sleep(max(0.0, end - time.monotonic()))

    def _track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _start(self, scenario: Scenario, clock: Clock, tally: Tally) -> None:
        self._track(asyncio.create_task(self._one(scenario, clock, tally)))

    async def _one(self, scenario: Scenario, clock: Clock, tally: Tally) -> None:
        record = Recorder(self.m, tally)
        self.m.started(tally)
        self.active += 1
        try:
            await scenario(self.client, clock, record)
        except asyncio.CancelledError:
            record.outcome("unfinished", ok=False)
            raise
        except Exception as exc:
            record.outcome(failure_outcome(exc), ok=False)
            self._report(exc)
        else:
            if not record.outcomes:
                record.outcome("ok")
        finally:
            self.active -= 1
        self.m.completed(tally)

    def _report(self, exc: Exception) -> None:
        """A scenario's own bug shows once per exception class, with its traceback."""
        name = type(exc).__name__
        if isinstance(exc, TRANSPORT_ERRORS) or name in self.reported:
            return
        self.reported.add(name)
        text = "".join(traceback.format_exception(exc)).rstrip()
        print(
            f"loadtest: the scenario raised (counted as 'error {name}'):\n{text}", file=sys.stderr
        )

    async def _drain(self) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.drain_s)
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_WAIT_S)

    # --- figures ---------------------------------------------------------------------------

    def generator_cpu(self) -> float:
        """The generator's own CPU, as a share of one core since the start."""
        wall = time.monotonic() - self.origin
        return (time.process_time() - self.cpu_origin) / wall if wall > 0 else 0.0

    def result(self) -> Result:
        end = self.m.now_s()
        # The whole run's rates are over the phases' time, as each phase's are over its own.
        phases_end = self.m.phases[-1].ended_s if self.m.phases else None
        totals = self.m.total.phase(phases_end or end, self.mode)
        return Result(
            command=self.command,
            target=self.url,
            scenario=self.name,
            mode=self.mode,
            started_at=self.started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            duration_s=round(end, 3),
            stages=self.stages,
            phases=[tally.phase(end, tally.mode) for tally in self.m.phases],
            totals=totals,
            timeline=self.m.timeline.finish(),
            server=self.samples,
            histograms={k: buckets(v) for k, v in sorted(self.m.total.latency.items())},
            interrupted=self.interrupted,
            site=self.site() if self.site is not None else None,
        )


def run(
    scenario: Scenario,
    *,
    url: str,
    stages: Sequence[Stage],
    mode: Mode = "open",
    key: str | None = None,
    out: Path | str | None = None,
    name: str | None = None,
    measure: str | None = None,
    setup: tuple[Scenario, Sequence[Stage]] | None = None,
    teardown: Callable[[], Awaitable[None]] | None = None,
    teardown_s: float = TEARDOWN_S,
    site: Callable[[], SiteFigures] | None = None,
    allow_remote: bool = False,
    max_in_flight: int = 1000,
    max_operations: int = 1_000_000,
    connections: int = 256,
    timeout_s: float = 30.0,
    drain_s: float = 10.0,
    progress: bool = True,
    command: str | None = None,
) -> Result:
    """Run ``scenario`` against ``url`` through ``stages`` and return what was measured;
    with ``out``, write ``result.json`` and ``report.html`` there.

    - ``mode``: ``"open"`` (a stage's target is arrivals a second) or ``"closed"`` (clients).
    - ``measure``: the measure shown live and in the timeline (default: the first recorded).
    - ``setup``: ``(scenario, stages)`` run first, open loop, as the phase ``setup`` (say,
      opening sessions); the stages start once its operations are done. ``teardown``: an
      async function run at the end, bounded by ``teardown_s``, even when interrupted.
    - ``site``: a site-like run's own figures, read once the teardown is over.
    - ``allow_remote``: without it, a ``url`` that is not loopback raises
      :class:`~loadtest.loopback.RemoteTarget` before anything is sent.

    Blocks until the run is over; Ctrl-C (SIGINT) or SIGTERM ends it early with
    ``interrupted`` set on the result.
    """
    check_target(url, allow_remote=allow_remote)
    if mode not in ("open", "closed"):
        raise ValueError(f"mode is 'open' or 'closed', not {mode!r}")
    runner = Runner(
        scenario,
        url=url,
        stages=stages,
        mode=mode,
        key=key,
        name=name or getattr(scenario, "__name__", type(scenario).__name__),
        measure=measure,
        setup=setup,
        teardown=teardown,
        teardown_s=teardown_s,
        site=site,
        max_in_flight=max_in_flight,
        max_operations=max_operations,
        connections=connections,
        timeout_s=timeout_s,
        drain_s=drain_s,
        progress=progress,
        command=command or shlex.join(sys.argv),
    )
    planned = runner.schedule.expected() if mode == "open" else 0
    if setup is not None:
        planned += Schedule(setup[1]).expected()
    if planned > max_operations:
        raise ValueError(
            f"the stages ask for {planned:.0f} operations, more than max_operations "
            f"({max_operations}): raise it (--max-operations) if that is meant"
        )
    result = _run_loop(runner)
    if out is not None:
        write(result, Path(out))
    return result


def _run_loop(runner: Runner) -> Result:
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
        loop = loop_runner.get_loop()
        # The caller's own handlers come back afterwards: uvloop leaves its handler installed
        # once the loop has stopped, which would swallow every later Ctrl-C and SIGTERM.
        previous = (
            {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
            if threading.current_thread() is threading.main_thread()
            else {}
        )

        def restore() -> None:
            for number, handler in previous.items():
                loop.remove_signal_handler(number)
                signal.signal(number, handler)

        def interrupt() -> None:
            runner.interrupt()
            # A second Ctrl-C quits the usual way, without the report.
            restore()

        for number in previous:
            loop.add_signal_handler(number, interrupt)
        try:
            return loop_runner.run(runner.main())
        finally:
            restore()


def write(result: Result, out: Path) -> list[Path]:
    """``result.json``, then ``report.html`` (a report that cannot be drawn is said, and the
    JSON, written first, still stands)."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "result.json"]
    save(result, written[0])
    try:
        html = render(result)
    except Exception:
        print("loadtest: report.html could not be drawn:", file=sys.stderr)
        traceback.print_exc()
        return written
    (out / "report.html").write_text(html, encoding="utf-8")
    written.append(out / "report.html")
    return written
