"""``rapport loadtest``: run as a user runs it (a subprocess) against real ``rapport serve``
processes, its figures checked against what the servers say they answered (their own
``/metrics``). Every run is a few seconds."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest import Stage, load, run
from loadtest.schedule import Schedule, parse_stages
from tests.conftest import Server, llm_env, wait_until

try:  # the fake LLM moved from tests/ to the package; either way the fixtures start it
    from loadtest.fake_llm import FakeOpenAI
except ImportError:  # pragma: no cover
    from tests.fake_openai import FakeOpenAI  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
CONVERSATION = "/api/v1/conversation"
COUNTER = re.compile(r"^rapport_http_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
RUN_TIMEOUT = 60


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI) -> Iterator[Server]:
    """A server of this module's own: its counters move only with these runs."""
    running = Server(tmp_path_factory.mktemp("loadtest") / "data", **llm_env(fake_llm)).start()
    yield running
    running.retire()


def loadtest(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "api.cli", "loadtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def against(server: Server, out: Path, *args: str) -> list[str]:
    return ["--url", server.base_url, "--key", server.demo_key, "--out", str(out), *args]


def answered(server: Server) -> Counter[int]:
    """The server's own count of conversation requests, by status."""
    counts: Counter[int] = Counter()
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    for line in text.splitlines():
        match = COUNTER.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels["route"] == CONVERSATION and labels["method"] == "POST":
            counts[int(labels["status"])] += int(float(match["value"]))
    return counts


def by_status(outcomes: dict[str, int]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for name, count in outcomes.items():
        counts[int(name.split()[0])] += count
    return counts


def test_the_stages_ramp_linearly_and_arrivals_follow_them() -> None:
    stages = parse_stages("1s:10,2s:30,500ms:0")
    assert stages == [Stage(1, 10), Stage(2, 30), Stage(0.5, 0)]
    schedule = Schedule(stages)
    assert schedule.target_at(0.5) == 10 and schedule.target_at(2) == 20
    arrivals = list(schedule.arrivals())
    # 10, then 40 (the ramp's mean rate, 20/s, for 2 s), then 7.5: the half is not due.
    assert schedule.expected() == 57.5 and len(arrivals) == 10 + 40 + 7
    times = [t for t, _ in arrivals]
    assert times == sorted(times) and times[-1] < schedule.total_s
    assert Counter(stage for _, stage in arrivals) == {0: 10, 1: 40, 2: 7}
    # Halfway up the ramp (t = 2 s) arrivals come at 20 a second.
    near = [t for t in times if 1.9 <= t < 2.1]
    assert len(near) == 4


def test_arrivals_past_the_in_flight_cap_are_dropped_and_counted(tmp_path: Path) -> None:
    """No server needed: the operation only takes half a second. 100 arrivals in a second,
    at most 10 running: those that find 10 running are dropped, never silently skipped."""

    async def slow(client, clock, record) -> None:
        await asyncio.sleep(0.5)
        record("request", clock.elapsed())

    result = run(
        slow, url="http://127.0.0.1:9", stages=[Stage(1, 100)], max_in_flight=10,
        progress=False,
    )  # fmt: skip
    totals = result.totals
    assert totals.sent + totals.dropped == 100
    assert 15 <= totals.sent <= 25 and totals.dropped >= 75
    assert totals.outcomes == {"ok": totals.sent}
    assert result.phases[0].offered_rate == pytest.approx(100, rel=0.05)
    assert all(sample.rss_bytes is None for sample in result.server)  # nothing on port 9


def test_a_run_gives_the_callers_signal_handlers_back() -> None:
    async def nothing(client, clock, record) -> None:
        record.outcome("ok")

    mine = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    def ours(number: int, frame: object) -> None:
        raise AssertionError("not to be called")

    signal.signal(signal.SIGTERM, ours)
    try:
        run(nothing, url="http://127.0.0.1:9", stages=[Stage(0.2, 10)], progress=False)
        assert signal.getsignal(signal.SIGTERM) is ours
        assert signal.getsignal(signal.SIGINT) is mine[signal.SIGINT]
    finally:
        for number, handler in mine.items():
            signal.signal(number, handler)


def test_ctrl_c_during_a_long_teardown_ends_it(tmp_path: Path) -> None:
    # A site-like run settles for minutes at its end; Ctrl-C then ends the settling too.
    async def nothing(client, clock, record) -> None:
        record.outcome("ok")

    async def settle() -> None:
        asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGINT)
        await asyncio.sleep(8)

    started = time.monotonic()
    result = run(
        nothing, url="http://127.0.0.1:9", stages=[Stage(0.2, 10)], teardown=settle,
        teardown_s=8, progress=False, out=tmp_path,
    )  # fmt: skip
    assert time.monotonic() - started < 4
    assert result.interrupted and result.totals.sent == 2
    assert load(tmp_path / "result.json").interrupted


def test_an_http_run_counts_what_the_server_counted(target: Server, tmp_path: Path) -> None:
    before = answered(target)
    done = loadtest(
        "http",
        *against(target, tmp_path, "--rate", "20", "--duration", "2", "--users", "5"),
        "--voice-share", "0.1", "--retry-share", "0.25",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    server = answered(target) - before
    result = load(tmp_path / "result.json")
    totals = result.totals
    assert (result.scenario, result.mode, result.interrupted) == ("conversation", "open", False)
    assert totals.sent == totals.completed == 40 and totals.dropped == 0
    assert sum(totals.outcomes.values()) == totals.sent
    assert by_status(totals.outcomes) == server
    assert totals.outcomes.get("200 replay", 0) > 0
    assert not any("differs" in name for name in totals.outcomes)
    assert totals.latency["request"].count == totals.sent
    assert set(totals.breakdown) == {"queue_latency_ms", "worker_latency_ms", "total_latency_ms"}
    assert [phase.name for phase in result.phases] == ["stage 1 (20/s)"]
    assert result.phases[0].offered_rate == pytest.approx(20, rel=0.05)
    assert result.histograms["request"]
    assert sum(tick.started for tick in result.timeline) == totals.sent
    assert any(sample.rss_bytes for sample in result.server)
    assert (tmp_path / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert "request" in done.stdout and "wrote" in done.stdout


def test_429_503_and_the_rest_are_counted_apart(
    server_on, fake: FakeOpenAI, tmp_path: Path
) -> None:
    strict = server_on(
        **llm_env(fake, RAPPORT_KEY_RPM="5", RAPPORT_TURN_WORKERS="1", RAPPORT_TURN_QUEUE="1")
    )
    fake.configure(delay_s=1.0)
    before = answered(strict)
    done = loadtest("http", *against(strict, tmp_path, "--rate", "10", "--duration", "2"))
    assert done.returncode == 0, done.stderr
    outcomes = load(tmp_path / "result.json").totals.outcomes
    sent = sum(outcomes.values())
    assert sent == 20
    # Five requests pass the key's window: one runs, one waits, three find the queue full.
    assert outcomes == {"429 rate_limited": sent - 5, "503 queue_unavailable": 3, "200": 2}
    assert by_status(outcomes) == answered(strict) - before


def test_the_open_loop_keeps_its_rate_through_a_stalled_server(
    target: Server, tmp_path: Path
) -> None:
    before = sum(answered(target).values())
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "loadtest", "http",
         *against(target, tmp_path, "--rate", "50", "--duration", "3", "--quiet")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert target.process is not None
    try:
        wait_until(lambda: sum(answered(target).values()) >= before + 10, 20, "the run")
        target.process.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
    finally:
        target.process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == 0, err
    totals = load(tmp_path / "result.json").totals
    # 150 arrivals were due; all were started on time, none held back by the stall.
    assert totals.sent + totals.dropped == 150
    assert totals.sent == pytest.approx(150, rel=0.1)
    assert totals.outcomes.get("200", 0) == totals.sent
    # Latency runs from the intended start: the second the server stood still shows.
    request = totals.latency["request"]
    assert request.max >= 800 and request.p99 >= 800
    assert request.p50 < 800


def test_a_spent_session_budget_closes_4005(target: Server, tmp_path: Path) -> None:
    created = httpx.post(
        f"{target.base_url}/api/personas",
        headers={"X-Api-Key": target.demo_key},
        json={"name": "two-turns", "publishSettings": {"sessionInteractionLimit": 2}},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    done = loadtest(
        "ws",
        *against(target, tmp_path, "--sessions", "2", "--rate", "4", "--duration", "2"),
        "--persona", created.json()["id"], "--ramp", "0.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = load(tmp_path / "result.json")
    outcomes = result.totals.outcomes
    assert outcomes["mint 201"] == 2
    # Two turns a session, then the server closes each: the arrivals after find none left.
    assert outcomes["reply completed"] == 4
    assert outcomes["close 4005"] == 2
    assert outcomes["no live session"] == 8 - 4
    assert [phase.name for phase in result.phases] == ["setup", "stage 1 (4/s)"]
    latency = result.totals.latency
    assert latency["mint"].count == latency["connect"].count == 2
    assert latency["first_delta"].count == latency["reply"].count == 4


def test_a_remote_target_is_refused_without_allow_remote(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed: the remote runs go in a network namespace")
    remote = ["--url", "http://203.0.113.1:8000", "--key", "k", "--duration", "1", "--quiet"]
    offline = ("unshare", "--net")  # nothing can leave this namespace, even by a bug
    refused = loadtest("http", *remote, "--out", str(tmp_path / "refused"), prefix=offline)
    assert refused.returncode == 2, refused.stderr
    assert "203.0.113.1 is not this machine" in refused.stderr
    assert "--allow-remote" in refused.stderr
    assert not (tmp_path / "refused").exists()
    tried = loadtest(
        "http", *remote, "--allow-remote", "--out", str(tmp_path / "tried"), prefix=offline
    )
    assert tried.returncode == 0, tried.stderr
    totals = load(tmp_path / "tried" / "result.json").totals
    assert totals.sent == 10
    assert sum(totals.outcomes.values()) == 10
    assert all(name.startswith("transport ") for name in totals.outcomes), totals.outcomes


def test_ctrl_c_stops_at_once_and_still_writes_the_report(target: Server, tmp_path: Path) -> None:
    before = sum(answered(target).values())
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "loadtest", "http",
         *against(target, tmp_path, "--rate", "20", "--duration", "60")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: sum(answered(target).values()) >= before + 10, 20, "the run")
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert time.monotonic() - stopped < 5
    assert process.returncode == 130, err
    assert "interrupted" in err
    result = load(tmp_path / "result.json")
    assert result.interrupted
    assert result.totals.sent > 0 and result.totals.completed > 0
    assert result.duration_s < 30
    assert (tmp_path / "report.html").exists()


def test_a_scenario_of_ones_own_uses_the_same_runner(target: Server, tmp_path: Path) -> None:
    """The README's example: a function that gets a client, a clock and a recorder."""

    async def limits(client, clock, record) -> None:
        answer = await client.get("/api/subscription/limits")
        record("request", clock.elapsed())
        record.outcome(answer.outcome)

    result = run(
        limits, url=target.base_url, key=target.demo_key, stages=[Stage(1, 2)], mode="closed",
        out=tmp_path, progress=False,
    )  # fmt: skip
    totals = result.totals
    assert result.mode == "closed" and totals.sent > 2
    assert totals.outcomes == {"200": totals.sent}
    assert totals.latency["request"].count == totals.sent
    assert load(tmp_path / "result.json") == result
    assert os.path.exists(tmp_path / "report.html")
