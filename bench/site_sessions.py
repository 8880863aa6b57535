"""A site's page views against a deployment cap (issue 24): ``rapport loadtest ws
--page-views`` twice, each against a fresh ``rapport serve`` on loopback with the fake LLM,
once with the widget's default (a visitor mints on its first message) and once with
``autostart`` (every page view mints at once). Prints, for both, the slots held (peak and
mean, sampled every second from the first page view until the server held nothing), the
waiting room's peak, the chatting visitors' wait and refusals, the ratio of slots held
autostart / first-message, and the commands; writes both runs' result.json and report.html
and one page with both runs' curves (``site.html``) into --out.

Time is scaled down so the pair runs in minutes: page views at 20 a second, visitors on the
page 10-30 s, RAPPORT_SESSION_IDLE_SECONDS 15, the closed tab's resume window at its default
(30 s), RAPPORT_SESSION_MAX_SECONDS 120 as the bound of an open page.

    python -m bench.site_sessions                       # 2,000 page views, cap 100
    python -m bench.site_sessions --page-views 400 --cap 20
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import raise_plan, refill, run_bench, spawn_ready_rapport, start_fake_openai
from bench.http_overhead import ROOT, Server, stop
from bench.live_sessions import HIGH_RPM, LLM_KEY, MODEL, RATE_SETTINGS
from loadtest import Result, load
from loadtest.report import render_sites

STARTS = ("first-message", "autostart")
RUN_TIMEOUT_S = 900  # a run's own bounds (views, --drain, --settle) end it well before


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page-views", type=int, default=2000)
    parser.add_argument("--chat-share", type=float, default=0.1)
    parser.add_argument("--cap", type=int, default=100, help="RAPPORT_MAX_SESSIONS")
    parser.add_argument("--views-per-second", type=float, default=20.0)
    parser.add_argument("--dwell-seconds", default="10-30")
    parser.add_argument("--think-seconds", default="2-5")
    parser.add_argument("--messages", type=int, default=2)
    parser.add_argument("--idle-seconds", type=int, default=15)
    parser.add_argument("--max-seconds", type=int, default=120)
    parser.add_argument("--settle", type=int, default=120)
    parser.add_argument("--out", type=Path, default=Path("loadtest-results/site-sessions"))
    return parser.parse_args(argv)


def server_env(args: argparse.Namespace, upstream: str) -> dict[str, str]:
    return {
        "RAPPORT_LLM_BASE_URL": upstream,
        "RAPPORT_LLM_MODEL": MODEL,
        "RAPPORT_LLM_API_KEY": LLM_KEY,
        **{name: str(HIGH_RPM) for name in RATE_SETTINGS},
        "RAPPORT_MAX_SESSIONS": str(args.cap),
        "RAPPORT_SESSION_IDLE_SECONDS": str(args.idle_seconds),
        "RAPPORT_SESSION_MAX_SECONDS": str(args.max_seconds),
    }


def loadtest_command(args: argparse.Namespace, base: str, key_file: Path, start: str) -> list[str]:
    return [
        "rapport", "loadtest", "ws", "--url", base, "--key-file", str(key_file), "--quiet",
        "--page-views", str(args.page_views), "--views-per-second", str(args.views_per_second),
        "--chat-share", str(args.chat_share), "--start", start,
        "--dwell-seconds", args.dwell_seconds, "--think-seconds", args.think_seconds,
        "--messages", str(args.messages), "--settle", str(args.settle),
        # Every autostart page view may wait in line at once: none dropped by the generator.
        "--max-in-flight", str(args.page_views), "--drain", "60", "--seed", "1",
        "--out", str(args.out / start),
    ]  # fmt: skip


def one_run(
    args: argparse.Namespace, workdir: Path, servers: list[Server], upstream: str, start: str
) -> Result:
    data_dir = workdir / f"data-{start}"
    env = server_env(args, upstream)
    _, base, _ = spawn_ready_rapport(data_dir, workdir / f"{start}.log", servers, env)
    # The deployment's cap must bind, not the account's plan; every turn needs a request.
    raise_plan(data_dir)
    refill(data_dir, args.page_views * args.messages)
    command = loadtest_command(args, base, data_dir / "demo_api_key", start)
    print(f"$ {shlex.join(command)}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "api.cli", *command[1:]],
        cwd=ROOT,
        check=True,
        timeout=RUN_TIMEOUT_S,
    )
    return load(args.out / start / "result.json")


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def report(args: argparse.Namespace, results: list[Result], wall_s: float) -> None:
    print()
    print(f"command: python -m bench.site_sessions {shlex.join(sys.argv[1:])}")
    print(
        f"settings: RAPPORT_MAX_SESSIONS={args.cap}, RAPPORT_SESSION_IDLE_SECONDS="
        f"{args.idle_seconds}, RAPPORT_SESSION_MAX_SECONDS={args.max_seconds}, resume window "
        f"30 s (default), rate limits {HIGH_RPM}/min, account plan raised; fake LLM; "
        f"wall {wall_s:.0f} s"
    )
    print(
        "| start | page views | mints | sessions held, peak | held, mean | waiting, peak "
        "| slot-seconds | chatting | waited | wait p50 ms | wait p95 ms | refused | run s |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for result in results:
        site = result.site
        assert site is not None
        mean = "-" if site.mean_held is None else f"{site.mean_held:.1f}"
        print(
            f"| {site.start} | {site.page_views} | {site.mints} | {site.peak_held} | {mean} "
            f"| {site.peak_waiting} | {site.slot_seconds} | {site.chatting} | {site.waited} "
            f"| {ms(site.wait_p50_ms)} "
            f"| {ms(site.wait_p95_ms)} | {site.refused} | {result.duration_s:.0f} |"
        )
    first, auto = (r.site for r in results)
    assert first is not None and auto is not None
    if first.mean_held and auto.mean_held is not None:
        print(
            f"slots held, autostart / first-message: mean {auto.mean_held / first.mean_held:.1f}x"
        )
    if first.peak_held:
        print(
            f"slots held, autostart / first-message: peak {auto.peak_held / first.peak_held:.1f}x"
        )
    print(f"wrote {args.out / 'site.html'}, and each run's report.html under {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(workdir: Path, servers: list[Server]) -> None:
        began = time.monotonic()
        _, control = start_fake_openai(workdir, servers)
        upstream = f"{control}/v1"
        results = []
        for start in STARTS:
            results.append(one_run(args, workdir, servers, upstream, start))
            # The next run gets a server of its own, and this one's CPU back.
            stop(servers.pop())
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "site.html").write_text(render_sites(results), encoding="utf-8")
        report(args, results, time.monotonic() - began)

    return run_bench(body, prefix="rapport-site-")


if __name__ == "__main__":
    sys.exit(main())
