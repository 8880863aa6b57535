"""The load's shape: stages parsed from ``30s:50,60s:200,30s:0``, the target at any moment
(linear ramps between stages), and the intended send time of every arrival of an open loop.

The first stage holds its target for its whole duration (nothing comes before it); each later
stage ramps linearly from the previous stage's target to its own. Arrivals are evenly spaced
by the rate of the moment: arrival ``k`` is due when the schedule's cumulative count reaches
``k + 1/2``, so a flat 50/s for 2 s makes exactly 100 arrivals, 20 ms apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence

from loadtest.result import Stage

_DURATION = re.compile(r"\A\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*\Z")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``500ms``, ``1h`` or plain seconds (``45``, ``2.5``)."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 2m, 500ms)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_stages(text: str) -> list[Stage]:
    """``30s:50,60s:200,30s:0``: each stage a duration and a target (arrivals a second in
    open loop, clients in closed loop)."""
    stages = []
    for part in text.split(","):
        duration, sep, target = part.partition(":")
        if not sep:
            raise ValueError(f"a stage is DURATION:TARGET, e.g. 30s:50; got {part.strip()!r}")
        try:
            value = float(target)
        except ValueError:
            raise ValueError(f"not a target: {target.strip()!r} in {part.strip()!r}") from None
        seconds = parse_duration(duration)
        if seconds <= 0 or not math.isfinite(seconds):
            raise ValueError(f"a stage's duration must be above 0: {part.strip()!r}")
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"a stage's target must be 0 or more: {part.strip()!r}")
        stages.append(Stage(duration_s=seconds, target=value))
    return stages


class Schedule:
    """Stages laid end to end from t = 0 (seconds)."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("at least one stage")
        self.stages = list(stages)
        self.starts: list[float] = []
        self.counts: list[float] = []
        """Arrivals each stage asks for (the integral of its rate)."""
        t = 0.0
        for i, stage in enumerate(self.stages):
            self.starts.append(t)
            a, b = self.begin(i), stage.target
            self.counts.append((a + b) / 2 * stage.duration_s)
            t += stage.duration_s
        self.total_s = t

    def begin(self, i: int) -> float:
        """The target at the start of stage ``i``: the previous stage's, the first's own."""
        return self.stages[i - 1].target if i > 0 else self.stages[0].target

    def stage_at(self, t: float) -> int:
        """The stage running at ``t`` (the last one from its end on)."""
        for i in range(len(self.stages) - 1, 0, -1):
            if t >= self.starts[i]:
                return i
        return 0

    def target_at(self, t: float) -> float:
        i = self.stage_at(t)
        stage = self.stages[i]
        into = min(max(t - self.starts[i], 0.0), stage.duration_s)
        a = self.begin(i)
        return a + (stage.target - a) * into / stage.duration_s

    def expected(self) -> float:
        """Arrivals the whole schedule asks for."""
        return sum(self.counts)

    def arrivals(self) -> Iterator[tuple[float, int]]:
        """Every arrival's intended time and stage, in order."""
        done = 0.0  # arrivals due before the current stage (the integral so far)
        k = 0
        for i, stage in enumerate(self.stages):
            a, b = self.begin(i), stage.target
            slope = (b - a) / stage.duration_s
            end = done + self.counts[i]
            while k + 0.5 < end:
                c = k + 0.5 - done
                # a·τ + slope·τ²/2 = c, in the form that stays exact when slope ≈ 0.
                root = math.sqrt(max(a * a + 2 * slope * c, 0.0))
                tau = 2 * c / (a + root) if a + root > 0 else 0.0
                yield self.starts[i] + min(tau, stage.duration_s), i
                k += 1
            done = end
