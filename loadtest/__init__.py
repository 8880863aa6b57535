"""Load testing Rapport: ``rapport loadtest http|ws``, and the same machinery for your own
scenarios (README, "Load testing").

    from loadtest import Stage, run

    async def limits(client, clock, record):
        answer = await client.get("/api/subscription/limits")
        record("request", clock.elapsed())
        record.outcome(answer.outcome)

    result = run(limits, url="http://127.0.0.1:8000", key=KEY, stages=[Stage(10, 20)],
                 out="lt-limits")

Names are imported on first use, so that ``rapport serve`` (which imports this package for
``rapport fake-llm``) loads none of it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtest.client import Client, Response
    from loadtest.conversation import Conversation
    from loadtest.live_sessions import LiveSessions
    from loadtest.loopback import RemoteTarget
    from loadtest.measure import Recorder
    from loadtest.result import Result, Stage, load, save
    from loadtest.runner import Clock, run, write

_EXPORTS = {
    "run": "loadtest.runner",
    "write": "loadtest.runner",
    "Clock": "loadtest.runner",
    "Recorder": "loadtest.measure",
    "Client": "loadtest.client",
    "Response": "loadtest.client",
    "RemoteTarget": "loadtest.loopback",
    "Conversation": "loadtest.conversation",
    "LiveSessions": "loadtest.live_sessions",
    "Result": "loadtest.result",
    "Stage": "loadtest.result",
    "load": "loadtest.result",
    "save": "loadtest.result",
}
__all__ = [
    "Client",
    "Clock",
    "Conversation",
    "LiveSessions",
    "Recorder",
    "RemoteTarget",
    "Response",
    "Result",
    "Stage",
    "load",
    "run",
    "save",
    "write",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loadtest' has no attribute {name!r}")
    return getattr(import_module(module), name)
