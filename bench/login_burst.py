"""Dashboard sign-in under load (issue 23): the logins a second one server sustains, and what a
burst of them does to conversation turns (turn p99 during the burst against the same without).

Starts the fake OpenAI-compatible server (``loadtest.fake_llm``, answering at once) and
``rapport serve`` against it (fresh temp data dir, free loopback port, one uvicorn process,
RAPPORT_LOG_LEVEL=warning, every rate limit, the sign-in throttles
RAPPORT_DASHBOARD_LOGIN_IP_RPM and RAPPORT_DASHBOARD_LOGIN_EMAIL_RPM included, so high that
none refuses). ``--users`` dashboard owners of the demo account are created with
``rapport users create`` and set their passwords through ``POST /api/auth/set-password``.

Each of ``--runs`` runs has two phases of ``--seconds`` each, in turn:

- alone: conversation turns (``POST /api/v1/conversation``, a fresh Idempotency-Key and a
  user of its own each) sent open-loop at ``--rate`` a second, each at its scheduled time
  whatever the earlier ones are doing; a turn's latency runs from its scheduled time (so a
  stalled server cannot hide its backlog) to the end of its answer;
- with logins: the same turns, while ``--login-clients`` clients sign in
  (``POST /api/auth/login``, the users in turn) one after another without pause.

Reported: turn p50/p99 for each phase, logins a second sustained (200s over the phase), the
login latency p50/p95, and the ratio of turn p99 with logins to without; medians over the
runs. Any answer but a 200 stops the bench with what it was. Loopback only; every phase
is bounded by ``--seconds`` and every request by a timeout; every process is stopped by its
pid whatever happens.

    .venv/bin/python -m bench.login_burst [--runs 3] [--seconds 15] [--rate 20]
        [--login-clients 8] [--users 4]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.conversation_overhead import run_async
from bench.harness import operate, refill, run_bench, spawn_ready_rapport, start_fake_openai
from bench.http_overhead import Server, machine, package_versions
from bench.live_sessions import HIGH_RPM, LLM_KEY, MODEL, RATE_SETTINGS
from engine.firstrun import DEMO_ACCOUNT
from engine.users import HASHER, HASHING_AT_ONCE

TURN_PATH = "/api/v1/conversation"
PASSWORD = "a long enough passphrase"  # noqa: S105  (the bench users' password, made up here)
REQUEST_TIMEOUT_S = 30.0
LOGIN_THROTTLES = ("RAPPORT_DASHBOARD_LOGIN_IP_RPM", "RAPPORT_DASHBOARD_LOGIN_EMAIL_RPM")


@dataclass
class Phase:
    turns_ms: list[float] = field(default_factory=list)
    logins_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def logins_per_s(self) -> float:
        return len(self.logins_ms) / self.seconds


def percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=20.0, help="turns a second")
    parser.add_argument("--login-clients", type=int, default=8)
    parser.add_argument("--users", type=int, default=4)
    return parser.parse_args(argv)


def make_users(data_dir: Path, base: str, count: int) -> list[str]:
    """Dashboard owners of the demo account, each with PASSWORD set."""
    emails = [f"owner{n}@bench.example" for n in range(count)]
    with httpx.Client(base_url=base, trust_env=False, timeout=REQUEST_TIMEOUT_S) as client:
        for email in emails:
            printed = operate(
                data_dir, "users", "create", "--account", DEMO_ACCOUNT, "--email", email,
                "--role", "owner",
            )  # fmt: skip
            token = printed.splitlines()[-1].partition("#token=")[2]
            done = client.post(
                "/api/auth/set-password", json={"token": token, "password": PASSWORD}
            )
            done.raise_for_status()
    return emails


async def turns(client: httpx.AsyncClient, rate: float, seconds: float, phase: Phase) -> None:
    async def one(n: int, due: float) -> None:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        response = await client.post(
            TURN_PATH,
            json={"user_id": f"turn-{uuid.uuid4().hex[:12]}", "message": "Still there?"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        if response.status_code == 200:
            phase.turns_ms.append((time.perf_counter() - due) * 1000)
        else:
            phase.errors[f"turn {response.status_code}"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(n, start + n / rate) for n in range(int(rate * seconds))))


async def logins(
    client: httpx.AsyncClient, emails: list[str], clients: int, until: float, phase: Phase
) -> None:
    async def loop(first: int) -> None:
        n = first
        while time.perf_counter() < until:
            started = time.perf_counter()
            response = await client.post(
                "/api/auth/login", json={"email": emails[n % len(emails)], "password": PASSWORD}
            )
            if response.status_code == 200:
                phase.logins_ms.append((time.perf_counter() - started) * 1000)
            else:
                phase.errors[f"login {response.status_code}"] += 1
            n += 1

    await asyncio.gather(*(loop(n) for n in range(clients)))


async def phase(
    base: str, key: str, args: argparse.Namespace, emails: list[str], with_logins: bool
) -> Phase:
    measured = Phase()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with (
        httpx.AsyncClient(
            base_url=base, headers={"X-Api-Key": key}, limits=limits, trust_env=False,
            timeout=REQUEST_TIMEOUT_S,
        ) as turn_client,
        httpx.AsyncClient(base_url=base, trust_env=False, timeout=REQUEST_TIMEOUT_S) as signins,
    ):  # fmt: skip
        started = time.perf_counter()
        work = [turns(turn_client, args.rate, args.seconds, measured)]
        if with_logins:
            until = started + args.seconds
            work.append(logins(signins, emails, args.login_clients, until, measured))
        await asyncio.gather(*work)
        measured.seconds = time.perf_counter() - started
    return measured


def report(args: argparse.Namespace, alone: list[Phase], burst: list[Phase]) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    print()
    for line in machine():
        print(line)
    print(package_versions("argon2-cffi"))
    print(f"command: .venv/bin/python -m bench.login_burst {shlex.join(sys.argv[1:])}".rstrip())
    params = f"t={HASHER.time_cost} m={HASHER.memory_cost // 1024} MiB p={HASHER.parallelism}"
    print(
        f"Argon2id {params}, HASHING_AT_ONCE={HASHING_AT_ONCE}; turns at {args.rate}/s "
        f"open-loop for {args.seconds} s a phase; {args.login_clients} login clients over "
        f"{args.users} users; medians of {args.runs} runs"
    )
    for n, (a, b) in enumerate(zip(alone, burst, strict=True), 1):
        print(
            f"run {n}: alone p50 {percentile(a.turns_ms, 50):.1f} p99 "
            f"{percentile(a.turns_ms, 99):.1f} ms | with logins p50 "
            f"{percentile(b.turns_ms, 50):.1f} p99 {percentile(b.turns_ms, 99):.1f} ms, "
            f"{b.logins_per_s:.1f} logins/s"
        )
    alone_p50 = median([percentile(p.turns_ms, 50) for p in alone])
    alone_p99 = median([percentile(p.turns_ms, 99) for p in alone])
    burst_p50 = median([percentile(p.turns_ms, 50) for p in burst])
    burst_p99 = median([percentile(p.turns_ms, 99) for p in burst])
    print(f"turns alone:        p50 {alone_p50:7.1f} ms   p99 {alone_p99:7.1f} ms")
    print(f"turns with logins:  p50 {burst_p50:7.1f} ms   p99 {burst_p99:7.1f} ms")
    print(f"logins sustained:   {median([p.logins_per_s for p in burst]):.1f}/s")
    login_p50 = median([statistics.median(p.logins_ms) for p in burst])
    login_p95 = median([percentile(p.logins_ms, 95) for p in burst])
    print(f"login latency:      p50 {login_p50:7.1f} ms   p95 {login_p95:7.1f} ms")
    print(f"ratio: turn p99 with logins / alone = {burst_p99 / alone_p99:.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(workdir: Path, servers: list[Server]) -> None:
        _, control = start_fake_openai(workdir, servers)
        data_dir = workdir / "data"
        env = {
            "RAPPORT_LLM_BASE_URL": f"{control}/v1",
            "RAPPORT_LLM_MODEL": MODEL,
            "RAPPORT_LLM_API_KEY": LLM_KEY,
            **{name: str(HIGH_RPM) for name in (*RATE_SETTINGS, *LOGIN_THROTTLES)},
        }
        _, base, key = spawn_ready_rapport(data_dir, workdir / "rapport.log", servers, env)
        refill(data_dir, int(args.rate * args.seconds * 2 * args.runs) + 100)
        emails = make_users(data_dir, base, args.users)
        alone: list[Phase] = []
        burst: list[Phase] = []
        for n in range(1, args.runs + 1):
            alone.append(run_async(phase(base, key, args, emails, with_logins=False)))
            burst.append(run_async(phase(base, key, args, emails, with_logins=True)))
            errors = alone[-1].errors + burst[-1].errors
            if errors:  # a refused turn or login makes the figures meaningless
                raise RuntimeError(f"run {n}: answers other than 200: {dict(errors)}")
            print(f"run {n} done", flush=True)
        report(args, alone, burst)

    return run_bench(body, prefix="rapport-login-burst-")


if __name__ == "__main__":
    sys.exit(main())
