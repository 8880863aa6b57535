"""The conversation and live-session benchmarks re-run with the load tool (issue 14), and one
overload run: what a client sees when turns arrive faster than Rapport can take them.

Three parts, each driven by the tool's own entry point, ``loadtest.run``, open loop (every
arrival due at a fixed time, latency from that time, arrivals the generator could not start
counted as dropped), each writing the tool's ``result.json`` and ``report.html`` under
``--out``:

1. **Conversation.** The fake OpenAI-compatible server (``loadtest.fake_llm``, answering at
   once, or after ``--ttft-ms``), ``rapport serve`` against it (fresh temp data dir, free
   loopback port, one uvicorn process, RAPPORT_LOG_LEVEL=warning, every rate limit at
   10,000,000 a minute: counted in Redis, never refusing; RAPPORT_TURN_QUEUE=1000; the
   balance refilled for the run) and the ``peer-raw`` peer of
   ``bench/conversation_overhead.py``: a bare Starlette app under uvicorn with the same
   settings whose ``POST /turn`` sends the fake server the very request Rapport sends it
   (read back from the fake server after priming, and checked against the peer's first
   request), no middleware, no Redis. Rapport's ``USERS`` end users are first given
   ``PRIME`` turns each through the tool, so that every measured turn recalls a full window
   of history, as the peer's prompt does. Then both are driven at ``--rate`` for
   ``--duration`` seconds, one after the other, each after a short unmeasured warm-up:
   Rapport with the tool's built-in scenario (``loadtest.Conversation``: ``POST
   /api/v1/conversation``, its users round robin, its questions), the peer with a scenario
   that POSTs the same bodies to ``/turn``. Printed for each: offered and achieved rate,
   dropped, the latency percentiles, the outcomes, server CPU per request from /proc
   (Rapport's process plus its embedded redis-server), and the ratios Rapport/peer. The
   fake server must have seen one call per 200.
2. **Overload.** A fresh ``rapport serve`` with RAPPORT_TURN_WORKERS=2 and
   RAPPORT_TURN_QUEUE=8 against a slow fake server of its own (``--ttft-ms 200
   --tokens-per-s 50``: 300 ms a turn, so about 7 turns a second), driven at
   ``--overload-rate`` (about 4x that) for ``--overload-duration`` seconds. The built-in
   scenario keeps one ``request`` measure for every outcome, so this part runs a scenario
   that sends the built-in's bodies and records ``request_ok`` (200) and ``request_refused``
   (503) apart as well. The verdict: every arrival sent (none dropped), every one answered
   (the outcomes add up to what was sent), and the server's own ``/metrics`` count of
   ``POST /api/v1/conversation`` by status equal to the outcomes; the share refused against
   the offered rate, and the refusals' p99 (a refusal must not wait). No peer: a ratio means
   nothing here.
3. **Live sessions.** ``rapport serve`` as ``bench/live_sessions.py`` starts it (every rate
   limit high, RAPPORT_MAX_SESSIONS and the demo plan raised) against the fake server of
   part 1, and the tool's ws scenario (``loadtest.LiveSessions``): ``--sessions`` minted
   and opened over ``max(1, sessions / 100)`` s, then ``--talkers`` of them talking at
   ``--ws-rate`` messages a second for ``--ws-duration`` s, 10 % of the replies cancelled at
   their first delta and 5 % of the turns followed by a dropped socket and a resume.
   Printed: mint, connect, first_delta, reply, cancel_to_done and resume percentiles, the
   outcomes and close codes, server CPU per turn (from the first turn to the teardown). The
   peer, same run: ``PEER_TURNS`` streamed completions sent one at a time straight to the
   fake server with the body Rapport last sent it (``bench.live_sessions.fake_turns``), so
   that first_delta and reply read against the model's own first token and whole reply.

A Markdown summary ready for BENCHMARKS.md ends the output: the machine, the command, the
tables and the verdict lines. Loopback only; every run is bounded by its stages and the
tool's drain; every process is started by this script and stopped by its pid whatever
happens (``bench.harness.run_bench``), Ctrl-C included. About 100 s on 2 cores.

    .venv/bin/python -m bench.loadtool [--rate 150] [--duration 20] [--ttft-ms 0]
        [--overload-rate 27] [--overload-duration 15] [--sessions 200] [--talkers 50]
        [--ws-rate 20] [--ws-duration 15] [--skip-conversation] [--skip-overload]
        [--skip-ws] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.conversation_overhead import PEER_PATH, TURN_QUEUE, run_async
from bench.harness import refill, run_bench, spawn_ready_rapport, start_fake_openai
from bench.http_overhead import (
    LOOPBACK,
    Server,
    cpu_seconds,
    free_port,
    machine,
    package_versions,
    spawn,
    stop,
    wait_ready,
)
from bench.live_sessions import (
    HIGH_RPM,
    LLM_KEY,
    MODEL,
    RATE_SETTINGS,
    Turns,
    fake_turns,
    ms,
    start_rapport,
)
from loadtest import Client, Clock, Conversation, LiveSessions, Recorder, Result, Stage, run
from loadtest.result import Percentiles

CONVERSATION_PATH = "/api/v1/conversation"
JSON_HEADERS = {"Content-Type": "application/json"}
USERS = 32  # end users of part 1, round robin (bench/conversation_overhead.py's)
PRIME = 12  # turns each is given first: a full window of history
PRIME_RATE = 100.0
WARMUP_S = 2.0  # unmeasured, at the measured rate, before each measured run
OVERLOAD_WORKERS = 2
OVERLOAD_QUEUE = 8
OVERLOAD_FAKE = ("--ttft-ms", "200", "--tokens-per-s", "50")
OVERLOAD_TURN_S = 0.3  # the slow model's whole reply: first word at 200 ms, 5 more at 50/s
CANCEL_SHARE = 0.1
DROP_SHARE = 0.05
PEER_TURNS = 200
REFUSED_CODE = "503 queue_unavailable"
COUNTER = re.compile(r"^rapport_http_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')
CONTROL_TIMEOUT_S = 30.0
MEASURES_WS = ("mint", "queue_wait", "connect", "first_delta", "reply", "cancel_to_done", "resume")


# --- processes -----------------------------------------------------------------------------


def llm_env(upstream: str) -> dict[str, str]:
    """Rapport against the fake server at ``upstream``, every rate limit counted, none
    refusing."""
    return {
        "RAPPORT_LLM_BASE_URL": f"{upstream}/v1",
        "RAPPORT_LLM_MODEL": MODEL,
        "RAPPORT_LLM_API_KEY": LLM_KEY,
        **{name: str(HIGH_RPM) for name in RATE_SETTINGS},
    }


def fake_calls(upstream: str) -> list[dict[str, Any]]:
    with httpx.Client(trust_env=False, timeout=CONTROL_TIMEOUT_S) as http:
        calls: list[dict[str, Any]] = http.get(f"{upstream}/_control/calls").json()["calls"]
    return calls


def fake_reset(upstream: str) -> None:
    with httpx.Client(trust_env=False, timeout=CONTROL_TIMEOUT_S) as http:
        http.post(f"{upstream}/_control/reset").raise_for_status()


def conversation_counts(base: str) -> Counter[int]:
    """The server's own count of ``POST /api/v1/conversation`` answers, by status."""
    counts: Counter[int] = Counter()
    with httpx.Client(trust_env=False, timeout=CONTROL_TIMEOUT_S) as http:
        text = http.get(f"{base}/metrics").text
    for line in text.splitlines():
        match = COUNTER.match(line)
        if match is None:
            continue
        labels = dict(LABEL.findall(match["labels"]))
        if labels.get("route") == CONVERSATION_PATH and labels.get("method") == "POST":
            counts[int(labels["status"])] += int(float(match["value"]))
    return counts


# --- the tool ------------------------------------------------------------------------------


@dataclass
class Run:
    """One ``loadtest.run``: the tool's result and the CPU of the processes around it."""

    result: Result
    out: Path | None
    wall_s: float
    server_cpu_s: float  # the server's processes (Rapport's redis-server included), /proc
    upstream_cpu_s: float  # the fake LLM's
    client_cpu_s: float  # this process: the generator

    @property
    def totals(self) -> Any:
        return self.result.totals

    def latency(self, measure: str) -> Percentiles | None:
        return self.result.totals.latency.get(measure)

    def count(self, outcome: str) -> int:
        return self.result.totals.outcomes.get(outcome, 0)

    def per_op_us(self, seconds: float) -> float:
        return seconds / max(self.totals.completed, 1) * 1e6


def drive(
    scenario: Callable[[Client, Clock, Recorder], Awaitable[None]],
    *,
    url: str,
    stages: list[Stage],
    out: Path | None,
    pids: list[int],
    upstream_pids: list[int],
    key: str | None = None,
    **options: Any,
) -> Run:
    """``loadtest.run`` with the server's and the generator's CPU read around it; a run the
    tool reports interrupted (Ctrl-C, SIGTERM) stops the bench."""
    server0, upstream0 = cpu_seconds(pids), cpu_seconds(upstream_pids)
    client0, started = time.process_time(), time.monotonic()
    result = run(scenario, url=url, key=key, stages=stages, out=out, **options)
    wall = time.monotonic() - started
    done = Run(
        result=result,
        out=out,
        wall_s=wall,
        server_cpu_s=cpu_seconds(pids) - server0,
        upstream_cpu_s=cpu_seconds(upstream_pids) - upstream0,
        client_cpu_s=time.process_time() - client0,
    )
    if result.interrupted:
        raise KeyboardInterrupt
    return done


class PeerTurn:
    """The peer's scenario: the built-in conversation scenario's bodies, POSTed to the
    peer's ``/turn`` (which reads ``message`` and sends the fake server Rapport's prompt)."""

    def __init__(self, users: int) -> None:
        self.bodies = Conversation(users=users)
        self.n = 0

    async def __call__(self, client: Client, clock: Clock, record: Recorder) -> None:
        n, self.n = self.n, self.n + 1
        answer = await client.post(PEER_PATH, body=self.bodies.body(n), headers=JSON_HEADERS)
        record("request", clock.elapsed())
        record.outcome(answer.outcome)


class SplitConversation:
    """The built-in conversation scenario's bodies, with the latency recorded three times:
    ``request`` (every answer, as the built-in does), and ``request_ok`` (200) or
    ``request_refused`` (503) or ``request_other`` apart; Rapport's latency_breakdown of
    every 200 as the built-in records it."""

    def __init__(self, users: int) -> None:
        self.bodies = Conversation(users=users)
        self.n = 0

    async def __call__(self, client: Client, clock: Clock, record: Recorder) -> None:
        n, self.n = self.n, self.n + 1
        answer = await client.post(
            CONVERSATION_PATH, body=self.bodies.body(n), headers=JSON_HEADERS
        )
        elapsed = clock.elapsed()
        record("request", elapsed)
        split = {200: "request_ok", 503: "request_refused"}.get(answer.status, "request_other")
        record(split, elapsed)
        record.outcome(answer.outcome)
        if answer.status == 200:
            Conversation.breakdown(answer, record)


class CpuWindow:
    """The ws scenario's turns, reading the server's CPU at the first turn; ``close`` reads
    it again before the tool's teardown ends the sessions."""

    def __init__(self, sessions: LiveSessions, pids: list[int]) -> None:
        self.sessions = sessions
        self.pids = pids
        self.first: float | None = None
        self.last: float | None = None

    async def turn(self, client: Client, clock: Clock, record: Recorder) -> None:
        if self.first is None:
            self.first = cpu_seconds(self.pids)
        await self.sessions.turn(client, clock, record)

    async def close(self) -> None:
        self.last = cpu_seconds(self.pids)
        await self.sessions.close()

    @property
    def cpu_s(self) -> float:
        if self.first is None or self.last is None:
            return 0.0
        return self.last - self.first


# --- part 1: conversation ------------------------------------------------------------------


@dataclass
class ConversationPart:
    rapport: Run
    peer: Run
    prompt_messages: int
    prompt_bytes: int
    upstream_calls: dict[str, int]  # by target: what the fake server saw in the measured run


def conversation(
    args: argparse.Namespace,
    workdir: Path,
    servers: list[Server],
    fake: Server,
    upstream: str,
    out: Path,
) -> ConversationPart:
    data_dir = workdir / "data-conversation"
    env = {**llm_env(upstream), "RAPPORT_TURN_QUEUE": str(TURN_QUEUE)}
    rapport, base, key = spawn_ready_rapport(
        data_dir, workdir / "rapport-conversation.log", servers, env
    )
    primed = USERS * PRIME + 1
    refill(data_dir, primed + 2 * round((WARMUP_S + args.duration) * args.rate) + 100)
    pids, up = [rapport.proc.pid, *rapport.extra_pids], [fake.proc.pid]

    # Every user gets a full window of history, then one more turn: the longest prompt the
    # fake server saw is what every measured turn sends, and what the peer will send.
    scenario = Conversation(users=USERS)
    fake_reset(upstream)
    drive(
        scenario, url=base, key=key, stages=[Stage(primed / PRIME_RATE, PRIME_RATE)],
        out=None, pids=pids, upstream_pids=up, progress=False, name="prime",
    )  # fmt: skip
    sent = max(reversed(fake_calls(upstream)), key=lambda call: len(call["messages"]))
    if set(sent) != {"model", "messages", "max_tokens", "stream"}:
        raise RuntimeError(f"Rapport sent fields the peer does not: {sorted(sent)}")
    prompt = {"model": sent["model"], "max_tokens": sent["max_tokens"]}
    prompt["history"] = sent["messages"][:-1]
    prompt_file = workdir / "prompt.json"
    prompt_file.write_text(json.dumps(prompt))

    port = free_port()
    cmd = [sys.executable, "-m", "bench.conversation_overhead", "--serve-peer", str(port)]
    cmd += ["--peer-upstream", f"{upstream}/v1", "--peer-prompt", str(prompt_file)]
    cmd += ["--peer-call", "raw"]
    peer = spawn("peer-raw", cmd, dict(os.environ), workdir / "peer-raw.log")
    servers.append(peer)
    peer_base = f"http://{LOOPBACK}:{port}"
    wait_ready(peer, f"{peer_base}/healthz")
    fake_reset(upstream)
    with httpx.Client(trust_env=False, timeout=CONTROL_TIMEOUT_S) as http:
        user = {"user_id": "lt-0", "message": sent["messages"][-1]["content"]}
        http.post(f"{peer_base}{PEER_PATH}", json=user).raise_for_status()
    (got,) = fake_calls(upstream)
    if got != sent:
        raise RuntimeError("peer-raw sent the fake server another request than Rapport's")
    print(
        f"conversation: prompt of {len(sent['messages'])} messages, "
        f"{len(json.dumps(sent['messages']).encode())} bytes of JSON, the same for both",
        flush=True,
    )

    stages = [Stage(args.duration, args.rate)]
    runs: dict[str, Run] = {}
    calls: dict[str, int] = {}
    targets = (
        ("rapport", scenario, base, key, pids, "conversation"),
        ("peer", PeerTurn(USERS), peer_base, None, [peer.proc.pid], "peer-raw /turn"),
    )
    for name, turn, url, api_key, server_pids, label in targets:
        drive(
            turn, url=url, key=api_key, stages=[Stage(WARMUP_S, args.rate)], out=None,
            pids=server_pids, upstream_pids=up, progress=False, name=f"{label} (warm-up)",
        )  # fmt: skip
        fake_reset(upstream)
        runs[name] = done = drive(
            turn, url=url, key=api_key, stages=stages, out=out / f"conversation-{name}",
            pids=server_pids, upstream_pids=up, name=label, measure="request",
            command=f"{shlex.join(sys.orig_argv)}  # part 1, {label}",
        )  # fmt: skip
        calls[name] = len(fake_calls(upstream))
        print(f"conversation, {name}: {one_line(done, 'request')}", flush=True)
    stop(peer)
    stop(rapport)
    return ConversationPart(
        rapport=runs["rapport"],
        peer=runs["peer"],
        prompt_messages=len(sent["messages"]),
        prompt_bytes=len(json.dumps(sent["messages"]).encode()),
        upstream_calls=calls,
    )


# --- part 2: overload ----------------------------------------------------------------------


@dataclass
class OverloadPart:
    run: Run
    expected: int  # arrivals the schedule asked for
    server_counts: Counter[int]  # /metrics, the run's change, by status
    upstream_calls: int


def overload(
    args: argparse.Namespace, workdir: Path, servers: list[Server], out: Path
) -> OverloadPart:
    slow, slow_url = start_fake_openai(workdir, servers, *OVERLOAD_FAKE, name="fake-llm-slow")
    data_dir = workdir / "data-overload"
    env = {
        **llm_env(slow_url),
        "RAPPORT_TURN_WORKERS": str(OVERLOAD_WORKERS),
        "RAPPORT_TURN_QUEUE": str(OVERLOAD_QUEUE),
    }
    rapport, base, key = spawn_ready_rapport(
        data_dir, workdir / "rapport-overload.log", servers, env
    )
    refill(data_dir, round(args.overload_rate * args.overload_duration) + 100)
    before = conversation_counts(base)
    fake_reset(slow_url)
    stages = [Stage(args.overload_duration, args.overload_rate)]
    done = drive(
        SplitConversation(USERS), url=base, key=key, stages=stages, out=out / "overload",
        pids=[rapport.proc.pid, *rapport.extra_pids], upstream_pids=[slow.proc.pid],
        name="conversation, overload", measure="request",
        command=f"{shlex.join(sys.orig_argv)}  # part 2, overload",
    )  # fmt: skip
    after = conversation_counts(base)
    after.subtract(before)
    upstream_calls = len(fake_calls(slow_url))
    print(f"overload: {one_line(done, 'request')}", flush=True)
    stop(rapport)
    stop(slow)
    return OverloadPart(
        run=done,
        expected=round(args.overload_rate * args.overload_duration),
        server_counts=+after,
        upstream_calls=upstream_calls,
    )


# --- part 3: live sessions -----------------------------------------------------------------


@dataclass
class LivePart:
    run: Run
    turn_cpu_s: float
    model: Turns = field(default_factory=Turns)
    body_bytes: int = 0


def live(
    args: argparse.Namespace,
    workdir: Path,
    servers: list[Server],
    fake: Server,
    upstream: str,
    out: Path,
) -> LivePart:
    rapport, port, key = start_rapport(workdir, "rapport-ws", f"{upstream}/v1", servers, None)
    refill(workdir / "data-rapport-ws", args.sessions + 2 * round(args.ws_rate * args.ws_duration))
    base = f"http://{LOOPBACK}:{port}"
    pids = [rapport.proc.pid, *rapport.extra_pids]
    sessions = LiveSessions(
        sessions=args.sessions,
        talkers=args.talkers,
        cancel_share=CANCEL_SHARE,
        drop_share=DROP_SHARE,
        seed=1,
    )
    window = CpuWindow(sessions, pids)
    ramp = max(1.0, args.sessions / 100)
    fake_reset(upstream)
    done = drive(
        window.turn, url=base, key=key, stages=[Stage(args.ws_duration, args.ws_rate)],
        out=out / "ws", pids=pids, upstream_pids=[fake.proc.pid], name="live sessions",
        measure="reply", setup=(sessions.open_session, [Stage(ramp, args.sessions / ramp)]),
        teardown=window.close, command=f"{shlex.join(sys.orig_argv)}  # part 3, live sessions",
    )  # fmt: skip
    print(f"live sessions: {one_line(done, 'reply')}", flush=True)
    part = LivePart(run=done, turn_cpu_s=window.cpu_s)
    stop(rapport)

    # The peer: the model's own latency for Rapport's last prompt, nothing in between.
    calls = fake_calls(upstream)
    if not calls:
        raise RuntimeError("live sessions: the fake server saw no call")
    body = json.dumps(calls[-1]).encode()
    part.body_bytes = len(body)
    fake_port = int(upstream.rsplit(":", 1)[1])
    run_async(fake_turns(fake_port, body, 20, None))  # warm-up
    run_async(fake_turns(fake_port, body, PEER_TURNS, part.model))
    part.model.turns = PEER_TURNS
    print(
        f"live sessions, the model itself: first token p50 {ms(part.model.ttft, 50):.2f} ms, "
        f"whole reply p50 {ms(part.model.latency, 50):.2f} ms",
        flush=True,
    )
    return part


# --- report --------------------------------------------------------------------------------


def one_line(done: Run, measure: str) -> str:
    t = done.totals
    p = done.latency(measure)
    lat = f"p50 {p.p50:.1f} ms, p99 {p.p99:.1f} ms" if p else "no latency"
    return (
        f"offered {t.offered_rate:.1f}/s, achieved {t.achieved_rate:.1f}/s, sent {t.sent}, "
        f"dropped {t.dropped}; {lat}; {dict(t.outcomes)}; generator CPU "
        f"{done.client_cpu_s / done.wall_s:.0%} of a core"
    )


def outcomes_text(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in outcomes.items()) or "-"


def pct_cells(p: Percentiles | None) -> str:
    if p is None:
        return "- | - | - | - | - | -"
    return f"{p.count} | {p.p50:.2f} | {p.p90:.2f} | {p.p99:.2f} | {p.p999:.2f} | {p.max:.2f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def check(text: str, ok: bool) -> str:
    return f"- {text}: {'OK' if ok else 'FAILED'}"


def conversation_report(args: argparse.Namespace, part: ConversationPart) -> list[str]:
    lines = [
        f"### Conversation, open loop at {args.rate:g}/s for {args.duration:g} s",
        "",
        f"Rapport (`loadtest.Conversation`, {USERS} users each primed with {PRIME} turns, "
        f"`POST /api/v1/conversation`) against `peer-raw` (`POST /turn`, the same bodies; "
        f"the same upstream request: {part.prompt_messages} messages, {part.prompt_bytes} "
        f"bytes of JSON), one after the other, each after {WARMUP_S:g} s of unmeasured "
        f"warm-up. Latency from each arrival's intended time to the answer's last byte.",
        "",
        "| target | offered/s | achieved/s | sent | dropped | p50 ms | p90 ms | p99 ms "
        "| p99.9 ms | max ms | outcomes | server CPU µs/req | fake LLM CPU µs/req "
        "| generator CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, done in (("rapport", part.rapport), ("peer-raw", part.peer)):
        t, p = done.totals, done.latency("request")
        cells = pct_cells(p).split(" | ")[1:]
        lines.append(
            f"| {name} | {t.offered_rate:.1f} | {t.achieved_rate:.1f} | {t.sent} | {t.dropped} "
            f"| {' | '.join(cells)} | {outcomes_text(t.outcomes)} "
            f"| {done.per_op_us(done.server_cpu_s):.0f} "
            f"| {done.per_op_us(done.upstream_cpu_s):.0f} "
            f"| {done.client_cpu_s / done.wall_s:.0%} |"
        )
    r, p = part.rapport.latency("request"), part.peer.latency("request")
    r_cpu = part.rapport.per_op_us(part.rapport.server_cpu_s)
    p_cpu = part.peer.per_op_us(part.peer.server_cpu_s)
    lines += [
        "",
        "| Rapport/peer-raw, same run | p50 | p99 | server CPU per request |",
        "|---|---:|---:|---:|",
        f"| ratio | {ratio(r.p50, p.p50) if r and p else '-'} "
        f"| {ratio(r.p99, p.p99) if r and p else '-'} | {ratio(r_cpu, p_cpu)} |",
        "",
        "(server CPU: Rapport's process plus its embedded redis-server, against the peer's "
        "process, from /proc over the measured run.)",
        "",
    ]
    breakdown = part.rapport.totals.breakdown
    if breakdown:
        lines += [
            "Rapport's own latency_breakdown over the run (ms, as the server reports it):",
            "",
            "| field | count | p50 | p90 | p99 | p99.9 | max |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {name} | {pct_cells(b)} |" for name, b in breakdown.items()]
        lines.append("")
    return lines


def conversation_verdicts(part: ConversationPart) -> list[str]:
    lines = []
    for name, done in (("rapport", part.rapport), ("peer", part.peer)):
        t = done.totals
        ok = t.outcomes.get("200", 0)
        calls = part.upstream_calls[name]
        lines.append(
            check(
                f"conversation, {name}: none dropped ({t.dropped}), every one of {t.sent} "
                f"answered 200 ({ok}), one fake LLM call per 200 ({calls})",
                t.dropped == 0 and ok == t.sent == calls,
            )
        )
    return lines


def overload_report(args: argparse.Namespace, part: OverloadPart) -> list[str]:
    done = part.run
    t = done.totals
    ok = done.count("200")
    capacity = OVERLOAD_WORKERS / OVERLOAD_TURN_S
    lines = [
        f"### Overload: {args.overload_rate:g} turns/s for {args.overload_duration:g} s into "
        f"{OVERLOAD_WORKERS} workers and a queue of {OVERLOAD_QUEUE}",
        "",
        f"`rapport serve` with RAPPORT_TURN_WORKERS={OVERLOAD_WORKERS}, "
        f"RAPPORT_TURN_QUEUE={OVERLOAD_QUEUE}, against `rapport fake-llm "
        f"{' '.join(OVERLOAD_FAKE)}` ({OVERLOAD_TURN_S * 1000:.0f} ms a reply: a capacity of "
        f"about {capacity:.1f} turns/s, so {args.overload_rate / capacity:.1f}x that offered). "
        f"The built-in scenario keeps one `request` measure for every outcome; this run's "
        f"scenario sends its bodies and also records `request_ok` (200) and "
        f"`request_refused` (503) apart.",
        "",
        f"Offered {t.offered_rate:.1f}/s, achieved {t.achieved_rate:.1f}/s, sent {t.sent}, "
        f"dropped {t.dropped}; answered 200 at {ok / args.overload_duration:.1f}/s; the "
        f"server's CPU {done.per_op_us(done.server_cpu_s):.0f} µs per request (all outcomes).",
        "",
        "| what the client saw | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| every answer (`request`) | {pct_cells(done.latency('request'))} |",
        f"| 200 (`request_ok`) | {pct_cells(done.latency('request_ok'))} |",
        f"| {REFUSED_CODE} (`request_refused`) | {pct_cells(done.latency('request_refused'))} |",
    ]
    other = done.latency("request_other")
    if other is not None:
        lines.append(f"| anything else (`request_other`) | {pct_cells(other)} |")
    lines += [
        "",
        f"Outcomes: {outcomes_text(t.outcomes)}. The server's own count (`/metrics`, "
        f"`rapport_http_requests_total` of `POST /api/v1/conversation`, the run's change): "
        f"{', '.join(f'{s}: {n}' for s, n in sorted(part.server_counts.items())) or '-'}.",
        "",
    ]
    breakdown = t.breakdown
    if breakdown:
        lines += [
            "Rapport's latency_breakdown of the 200s (ms):",
            "",
            "| field | count | p50 | p90 | p99 | p99.9 | max |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {name} | {pct_cells(b)} |" for name, b in breakdown.items()]
        lines.append("")
    return lines


def overload_verdicts(args: argparse.Namespace, part: OverloadPart) -> list[str]:
    done = part.run
    t = done.totals
    answered = sum(t.outcomes.values())
    by_status: Counter[int] = Counter()
    for name, count in t.outcomes.items():
        head = name.split()[0]
        if head.isdigit():
            by_status[int(head)] += count
    server = sum(part.server_counts.values())
    ok, refused = done.count("200"), done.count(REFUSED_CODE)
    refusals = done.latency("request_refused")
    other = {k: v for k, v in t.outcomes.items() if k not in ("200", REFUSED_CODE)}
    return [
        check(
            f"nothing lost: {part.expected} arrivals due, {t.sent} sent + {t.dropped} dropped; "
            f"{t.sent} sent = {answered} outcomes = {server} counted by the server "
            f"({dict(sorted(part.server_counts.items()))}), status by status",
            t.dropped == 0
            and t.sent + t.dropped == part.expected
            and t.sent == answered == server
            and by_status == part.server_counts,
        ),
        check(
            f"every answer a 200 or a {REFUSED_CODE} ({ok} + {refused}; others: "
            f"{outcomes_text(other)}); one fake LLM call per 200 ({part.upstream_calls})",
            not other and part.upstream_calls == ok,
        ),
        check(
            f"refused {refused / max(t.sent, 1):.0%} of the offered "
            f"{t.offered_rate:.1f}/s ({refused / args.overload_duration:.1f}/s); refusals "
            f"p99 {refusals.p99 if refusals else float('nan'):.1f} ms, max "
            f"{refusals.max if refusals else float('nan'):.1f} ms: a refusal does not wait "
            f"(under the model's {OVERLOAD_TURN_S * 1000:.0f} ms reply)",
            refusals is not None and refusals.p99 < OVERLOAD_TURN_S * 1000,
        ),
    ]


def live_report(args: argparse.Namespace, part: LivePart) -> list[str]:
    done = part.run
    phases = {phase.name: phase for phase in done.result.phases}
    setup = phases.get("setup")
    turns = [phase for phase in done.result.phases if phase.name != "setup"]
    lines = [
        f"### Live sessions: {args.sessions} sessions, {args.talkers} talking at "
        f"{args.ws_rate:g} messages/s for {args.ws_duration:g} s",
        "",
        f"`loadtest.LiveSessions` (chat mode), {CANCEL_SHARE:.0%} of the replies cancelled at "
        f"their first delta, {DROP_SHARE:.0%} of the turns followed by a dropped socket and a "
        f"resume. Setup: offered {setup.offered_rate:.1f}/s, sent {setup.sent}, dropped "
        f"{setup.dropped}. Turns: "
        + "; ".join(
            f"offered {ph.offered_rate:.1f}/s, achieved {ph.achieved_rate:.1f}/s, sent "
            f"{ph.sent}, dropped {ph.dropped}"
            for ph in turns
        )
        + f". Server CPU per turn (first turn to the teardown, Rapport plus its redis-server): "
        f"{part.turn_cpu_s / max(sum(ph.sent for ph in turns), 1) * 1e6:.0f} µs.",
        "",
        "| measure | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for measure in MEASURES_WS:
        p = done.latency(measure)
        if p is not None:
            lines.append(f"| {measure} | {pct_cells(p)} |")
    model = part.model
    lines += [
        f"| peer: the fake LLM's first token | {model.turns} | {ms(model.ttft, 50):.2f} "
        f"| {ms(model.ttft, 90):.2f} | {ms(model.ttft, 99):.2f} | {ms(model.ttft, 99.9):.2f} "
        f"| {ms(model.ttft, 100):.2f} |",
        f"| peer: the fake LLM's whole reply | {model.turns} | {ms(model.latency, 50):.2f} "
        f"| {ms(model.latency, 90):.2f} | {ms(model.latency, 99):.2f} "
        f"| {ms(model.latency, 99.9):.2f} | {ms(model.latency, 100):.2f} |",
        "",
        f"(peer: {model.turns} streamed completions sent one at a time straight to the fake "
        f"server, with the {part.body_bytes}-byte body Rapport last sent it.)",
        "",
    ]
    first, reply = done.latency("first_delta"), done.latency("reply")
    ttft, whole = ms(model.ttft, 50), ms(model.latency, 50)
    if first and reply:
        lines += [
            "| p50, same run | Rapport | the model | ratio | difference ms |",
            "|---|---:|---:|---:|---:|",
            f"| first_delta / first token | {first.p50:.2f} | {ttft:.2f} "
            f"| {ratio(first.p50, ttft)} | {first.p50 - ttft:.2f} |",
            f"| reply / whole reply | {reply.p50:.2f} | {whole:.2f} "
            f"| {ratio(reply.p50, whole)} | {reply.p50 - whole:.2f} |",
            "",
        ]
    lines += [f"Outcomes and close codes: {outcomes_text(done.totals.outcomes)}.", ""]
    cancels = done.latency("cancel_to_done")
    if cancels is not None:
        lines += [
            f"Cancels sent at a first delta: {cancels.count}; replies that ended cancelled: "
            f"{done.count('reply cancelled')} (a reply the model has already streamed whole "
            f"ends completed: the cancel comes after it).",
            "",
        ]
    return lines


def live_verdicts(part: LivePart) -> list[str]:
    t = part.run.totals
    bad = {
        name: count
        for name, count in t.outcomes.items()
        if not (
            name.startswith("mint 201")
            or name in ("reply completed", "reply cancelled", "resumed", "ok")
        )
    }
    return [
        check(
            f"live sessions: none dropped ({t.dropped}), every turn a reply and every resume "
            f"resumed (anything else: {outcomes_text(bad)})",
            t.dropped == 0 and not bad,
        )
    ]


def summary(
    args: argparse.Namespace,
    out: Path,
    wall_s: float,
    parts: dict[str, Any],
) -> None:
    lines = [
        "## Load tool runs (issue 14)",
        "",
        "`bench/loadtool.py` drives Rapport with `loadtest.run`, open loop (latency from each "
        "arrival's intended time), against a peer measured in the same run.",
        "",
        *(f"- {line}" for line in machine()),
        "- also: " + package_versions("openai", "redis", "hiredis", "msgspec", "websockets")[10:],
        f"- Command (from the repository root, {wall_s:.0f} s): `{shlex.join(sys.orig_argv)}`",
        f"- Results: the tool's `result.json` and `report.html` of each run under `{out}`",
        "",
    ]  # fmt: skip
    verdicts: list[str] = []
    if "conversation" in parts:
        lines += conversation_report(args, parts["conversation"])
        verdicts += conversation_verdicts(parts["conversation"])
    if "overload" in parts:
        lines += overload_report(args, parts["overload"])
        verdicts += overload_verdicts(args, parts["overload"])
    if "live" in parts:
        lines += live_report(args, parts["live"])
        verdicts += live_verdicts(parts["live"])
    lines += ["Verdicts:", "", *verdicts, ""]
    print()
    print("\n".join(lines).rstrip())


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rate", type=float, default=150.0, help="part 1: turns a second")
    parser.add_argument("--duration", type=float, default=20.0, help="part 1: seconds")
    parser.add_argument(
        "--ttft-ms", type=float, default=0.0, help="the fake LLM of parts 1 and 3 (default 0)"
    )
    parser.add_argument(
        "--overload-rate", type=float, default=27.0, help="part 2: turns a second (about 4x)"
    )
    parser.add_argument("--overload-duration", type=float, default=15.0, help="part 2: seconds")
    parser.add_argument("--sessions", type=int, default=200, help="part 3: sessions opened")
    parser.add_argument("--talkers", type=int, default=50, help="part 3: sessions that talk")
    parser.add_argument("--ws-rate", type=float, default=20.0, help="part 3: messages a second")
    parser.add_argument("--ws-duration", type=float, default=15.0, help="part 3: seconds")
    parser.add_argument("--skip-conversation", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument("--skip-ws", action="store_true")
    parser.add_argument(
        "--out", type=Path, help="where the tool's results go (default: a new temp dir)"
    )
    args = parser.parse_args(argv)
    for name in ("rate", "duration", "overload_rate", "overload_duration", "ws_rate"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    if not args.ws_duration > 0 or args.ttft_ms < 0:
        parser.error("--ws-duration must be above 0 and --ttft-ms 0 or more")
    if args.sessions < 1 or not 0 <= args.talkers <= args.sessions:
        parser.error("--sessions must be at least 1, --talkers between 0 and --sessions")
    return args


def bench(args: argparse.Namespace, workdir: Path, servers: list[Server], out: Path) -> None:
    started = time.monotonic()
    parts: dict[str, Any] = {}
    fake = upstream = None
    if not (args.skip_conversation and args.skip_ws):
        flags = ("--ttft-ms", f"{args.ttft_ms:g}") if args.ttft_ms else ()
        fake, upstream = start_fake_openai(workdir, servers, *flags, name="fake-llm")
    if not args.skip_conversation:
        assert fake is not None and upstream is not None
        parts["conversation"] = conversation(args, workdir, servers, fake, upstream, out)
    if not args.skip_overload:
        parts["overload"] = overload(args, workdir, servers, out)
    if not args.skip_ws:
        assert fake is not None and upstream is not None
        parts["live"] = live(args, workdir, servers, fake, upstream, out)
    summary(args, out, time.monotonic() - started, parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="rapport-loadtool-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"results: {out}", flush=True)
    return run_bench(lambda workdir, servers: bench(args, workdir, servers, out))


if __name__ == "__main__":
    sys.exit(main())
