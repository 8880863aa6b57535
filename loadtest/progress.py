"""What the terminal shows while a run goes on (on stderr, with rich): the phase, the target
and achieved rates, the headline measure's p50/p99 over the last second, errors by outcome,
dropped arrivals and the generator's own CPU. A terminal gets it redrawn every second; a
log file (stderr not a terminal) a plain line every few seconds, and the last state once."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from loadtest.measure import histogram

if TYPE_CHECKING:
    from loadtest.runner import Runner

REFRESH_S = 1.0
LOG_EVERY_S = 5.0
BUSY_CPU = 0.8
"""Above this share of a core the generator says it may be the bottleneck."""


class Progress:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.console = Console(stderr=True)
        self.live: Live | None = None
        self.task: asyncio.Task[None] | None = None
        self.last = (time.monotonic(), 0)
        self.rate = 0.0
        self.p50: float | None = None
        self.p99: float | None = None

    def start(self) -> None:
        if self.console.is_terminal:
            self.live = Live(self.render(), console=self.console, auto_refresh=False)
            self.live.start()
        self.task = asyncio.create_task(self._loop())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self._sample()
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            self.live.stop()
        else:
            self.console.print(self.render())

    async def _loop(self) -> None:
        logged = time.monotonic()
        while True:
            await asyncio.sleep(REFRESH_S)
            self._sample()
            if self.live is not None:
                self.live.update(self.render(), refresh=True)
            elif time.monotonic() - logged >= LOG_EVERY_S:
                logged = time.monotonic()
                self.console.print(self.line(), highlight=False)

    def _sample(self) -> None:
        m = self.runner.m
        now, completed = time.monotonic(), m.total.completed
        then, before = self.last
        if now > then:
            self.rate = (completed - before) / (now - then)
        self.last = (now, completed)
        recent = m.recent
        if recent.get_total_count():
            self.p50 = recent.get_value_at_percentile(50) / 1000
            self.p99 = recent.get_value_at_percentile(99) / 1000
        else:
            self.p50 = self.p99 = None
        m.recent = histogram()

    def target(self) -> str:
        r = self.runner
        if r.stage_origin is None:
            return "-"
        value = r.schedule.target_at(time.monotonic() - r.stage_origin)
        return f"{value:.1f}/s" if r.mode == "open" else f"{value:.0f} clients"

    def latency(self) -> str:
        name = self.runner.m.headline or "latency"
        if self.p99 is None:
            return f"{name} -"
        return f"{name} p50 {self.p50:.1f} ms  p99 {self.p99:.1f} ms"

    def line(self) -> str:
        r, m = self.runner, self.runner.m
        return (
            f"{m.now_s():6.1f}/{r.planned_s():.0f} s  {r.phase_name}  target {self.target()}  "
            f"achieved {self.rate:.1f}/s  {self.latency()}  in flight {r.active}  "
            f"sent {m.total.sent}  dropped {m.total.dropped}  errors {m.errors()}"
        )

    def render(self) -> Group:
        r = self.runner
        if not hasattr(r, "m"):
            return Group(Text(f"rapport loadtest {r.name} → {r.url}"))
        m = r.m
        head = Text.assemble(
            ("rapport loadtest ", "bold"),
            (r.name, "bold cyan"),
            f" → {r.url} · {r.mode} loop · {r.phase_name} · ",
            f"{m.now_s():.1f} s of {r.planned_s():.0f} s",
        )
        rates = Text(
            f"target {self.target()}   achieved {self.rate:.1f}/s   in flight {r.active}   "
            f"sent {m.total.sent}   done {m.total.completed}   dropped {m.total.dropped}"
        )
        if m.total.dropped:
            rates.stylize("yellow")
        latency = Text(f"{self.latency()}   (last second, from the intended start)")
        errors = m.errors()
        failing = ", ".join(
            f"{name} {m.total.outcomes[name]}"
            for name in sorted(m.error_names, key=lambda n: -m.total.outcomes[n])
        )
        outcome = Text(f"errors {errors}" + (f": {failing}" if failing else ""))
        if errors:
            outcome.stylize("red")
        cpu = r.generator_cpu()
        generator = Text(
            f"generator CPU {cpu:.0%} of a core, arrivals started up to "
            f"{r.max_late_s * 1000:.1f} ms late"
        )
        if cpu >= BUSY_CPU:
            generator.append(" — the generator may be the bottleneck", style="bold yellow")
        return Group(head, rates, latency, outcome, generator)
