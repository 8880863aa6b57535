"""``rapport loadtest http`` and ``rapport loadtest ws``: the flags, and the built-in
scenarios run through :func:`loadtest.run` like any user's."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.loopback import RemoteTarget, check_target
from loadtest.result import Stage
from loadtest.schedule import parse_duration, parse_stages

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_DURATION_S = 10.0
DEFAULT_RATE = 10.0
TEARDOWN_MARGIN_S = 5.0
EXAMPLES = """
examples:
  rapport loadtest http --key-file rapport-data/demo_api_key --rate 20 --duration 30
  rapport loadtest http --key KEY --stages 10s:10,30s:100,10s:0 --voice-share 0.05
  rapport loadtest http --key KEY --concurrency 8 --duration 20 --retry-share 0.1
  rapport loadtest ws --key KEY --sessions 10 --talkers 4 --rate 2 --cancel-share 0.2
  rapport loadtest ws --key KEY --page-views 2000 --chat-share 0.1 --start autostart
"""


def add_commands(commands: Any) -> None:
    """Add ``loadtest`` to the ``rapport`` command's subcommands."""
    loadtest = commands.add_parser(
        "loadtest",
        help="load-test a running Rapport (loopback only unless --allow-remote)",
        description="Drive a running Rapport and measure it: HDR latency percentiles per "
        "phase, offered versus achieved rate, every outcome counted apart, the server's RSS "
        "and CPU from /metrics. Writes result.json and report.html into --out.",
    )
    kinds = loadtest.add_subparsers(title="scenarios", required=True)
    http = kinds.add_parser(
        "http",
        help="POST /api/v1/conversation with varied bodies",
        description="POST /api/v1/conversation at a fixed arrival rate (open loop: latency\n"
        "from each request's intended send time) or with a fixed number of clients\n"
        "(closed loop).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(http)
    body = http.add_argument_group("bodies")
    body.add_argument("--users", type=_positive_int, default=100, metavar="N",
                      help="distinct user_ids, lt-0 … lt-N-1, in turn (default 100)")  # fmt: skip
    body.add_argument("--voice-share", type=_share, default=0.0, metavar="F",
                      help="share of requests carrying a 4 s voice note (default 0)")  # fmt: skip
    body.add_argument("--retry-share", type=_share, default=0.0, metavar="F",
                      help="share sent again with the same Idempotency-Key once answered; "
                      "the copy must replay the answer byte for byte (default 0)")  # fmt: skip
    body.add_argument("--seed", type=int, help="random seed, to repeat a run's choices")
    http.set_defaults(run=_http)

    ws = kinds.add_parser(
        "ws",
        help="live sessions: mint, connect, talk, cancel, drop and resume",
        description="Mint --sessions live sessions through POST /api/sessions over --ramp\n"
        "seconds (waiting in the waiting room when queued), then have --talkers of them\n"
        "talk at --rate messages a second across them; measures mint, queue_wait,\n"
        "connect, first_delta, reply, cancel_to_done and resume, and counts close codes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(ws)
    live = ws.add_argument_group("sessions")
    live.add_argument("--sessions", type=_positive_int, default=10, metavar="N",
                      help="live sessions to ramp to (default 10; an account holds 10 "
                      "unless its plan says more)")  # fmt: skip
    live.add_argument("--talkers", type=int, metavar="M",
                      help="how many of them talk (default: all)")  # fmt: skip
    live.add_argument("--ramp", type=parse_duration, metavar="SECONDS",
                      help="time over which the sessions are opened (default: N/100 s, at "
                      "least 1 s)")  # fmt: skip
    live.add_argument("--mode", choices=("chat", "full"), default="chat",
                      help="the sessions' mode (default chat)")  # fmt: skip
    live.add_argument("--persona", metavar="ID", help="persona id (default: the account's)")
    live.add_argument("--cancel-share", type=_share, default=0.0, metavar="F",
                      help="share of turns cancelled at their first reply.delta "
                      "(default 0)")  # fmt: skip
    live.add_argument("--drop-share", type=_share, default=0.0, metavar="F",
                      help="share of turns after which the socket is dropped without a close "
                      "frame and resumed with last_seq (default 0)")  # fmt: skip
    live.add_argument("--seed", type=int, help="random seed, to repeat a run's choices")
    site = ws.add_argument_group(
        "a site's page views (--page-views replaces --sessions, --rate and --duration)"
    )
    site.add_argument("--page-views", type=_positive_int, metavar="N",
                      help="run as a site embedding the widget: N page views, each a "
                      "visitor who stays --dwell-seconds; samples the deployment's slots "
                      "held and waiting room every second (GET /api/sessions)")  # fmt: skip
    site.add_argument("--views-per-second", type=_rate, default=20.0, metavar="R",
                      help="page views a second (default 20)")  # fmt: skip
    site.add_argument("--chat-share", type=_share, default=0.1, metavar="F",
                      help="share of visitors who chat, spread evenly (default 0.1)")  # fmt: skip
    site.add_argument("--start", choices=("first-message", "autostart"),
                      default="first-message",
                      help="first-message (the widget's default): a visitor mints on its "
                      "first message; autostart: every page view mints at once")  # fmt: skip
    site.add_argument("--dwell-seconds", type=_span, default=(10.0, 30.0), metavar="LOW-HIGH",
                      help="time on the page, drawn between the two (default 10-30); then "
                      "the tab closes, its socket dropped without a close frame")  # fmt: skip
    site.add_argument("--messages", type=_positive_int, default=2, metavar="N",
                      help="messages a chatting visitor sends (default 2)")  # fmt: skip
    site.add_argument("--think-seconds", type=_span, default=(2.0, 5.0), metavar="LOW-HIGH",
                      help="before the first message and after each reply (default "
                      "2-5)")  # fmt: skip
    site.add_argument("--settle", type=parse_duration, default=120.0, metavar="SECONDS",
                      help="after the last visitor left, sample on until the server holds "
                      "no session, at most this long (default 120)")  # fmt: skip
    ws.set_defaults(run=_ws)


def _common(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument("--url", default=DEFAULT_URL, help=f"Rapport's base URL ({DEFAULT_URL})")
    keys = target.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", help="an API key of the account to load")
    keys.add_argument("--key-file", type=Path, metavar="PATH",
                      help="read the key from a file (rapport-data/demo_api_key)")  # fmt: skip
    target.add_argument("--allow-remote", action="store_true",
                        help="allow a target that is not loopback (127.0.0.0/8, ::1)")  # fmt: skip
    load = parser.add_argument_group("load")
    shape = load.add_mutually_exclusive_group()
    shape.add_argument("--rate", type=_rate, metavar="R",
                       help="open loop: arrivals a second, requests or messages (default "
                       f"{DEFAULT_RATE:g})")  # fmt: skip
    shape.add_argument("--concurrency", type=_positive_int, metavar="C",
                       help="closed loop: C clients, each sending when its last is "
                       "answered")  # fmt: skip
    load.add_argument("--duration", type=parse_duration, metavar="SECONDS",
                      help=f"how long (default {DEFAULT_DURATION_S:g} s; 30s, 2m)")  # fmt: skip
    load.add_argument("--stages", type=parse_stages, metavar="SPEC",
                      help="phases instead of --rate/--duration: 30s:50,60s:200,30s:0 (the "
                      "first holds its target, each next ramps linearly to its own); "
                      "targets are rates, or clients with --closed")  # fmt: skip
    load.add_argument("--closed", action="store_true",
                      help="--stages targets are clients (closed loop), not rates")  # fmt: skip
    limits = parser.add_argument_group("bounds")
    limits.add_argument("--max-in-flight", type=_positive_int, default=1000, metavar="N",
                        help="open loop: arrivals past N running operations are dropped and "
                        "counted (default 1000)")  # fmt: skip
    limits.add_argument("--max-operations", type=_positive_int, default=1_000_000,
                        metavar="N", help="never start more than N operations (default "
                        "1000000)")  # fmt: skip
    limits.add_argument("--connections", type=_positive_int, default=256, metavar="N",
                        help="HTTP keep-alive connections at most (default 256)")  # fmt: skip
    limits.add_argument("--timeout", type=parse_duration, default=30.0, metavar="SECONDS",
                        help="per request or socket handshake (default 30)")  # fmt: skip
    limits.add_argument("--drain", type=parse_duration, default=10.0, metavar="SECONDS",
                        help="after the last stage, wait this long for operations still "
                        "running, then cancel them (default 10)")  # fmt: skip
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, metavar="DIR",
                        help="where result.json and report.html go (default "
                        "loadtest-results/SCENARIO-TIME)")  # fmt: skip
    output.add_argument("--quiet", action="store_true", help="no live progress, no tables")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share between 0 and 1, not {text}")
    return value


def _span(text: str) -> tuple[float, float]:
    """``10-30`` (drawn between the two) or ``20`` (always 20), in seconds."""
    low, _, high = text.partition("-")
    try:
        span = (parse_duration(low), parse_duration(high or low))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if span[0] > span[1]:
        raise argparse.ArgumentTypeError(f"LOW-HIGH with LOW <= HIGH, not {text}")
    return span


class Usage(Exception):
    """A flag combination that makes no run."""


def _shape(args: argparse.Namespace) -> tuple[list[Stage], str]:
    if args.stages is not None:
        if args.rate is not None or args.duration is not None:
            raise Usage("--stages replaces --rate and --duration")
        if args.concurrency is not None:
            raise Usage("--stages with --closed, not --concurrency")
        return args.stages, "closed" if args.closed else "open"
    duration = args.duration if args.duration is not None else DEFAULT_DURATION_S
    if duration <= 0:
        raise Usage("--duration must be above 0")
    if args.concurrency is not None:
        return [Stage(duration, float(args.concurrency))], "closed"
    if args.closed:
        raise Usage("--closed goes with --stages; use --concurrency C")
    return [Stage(duration, args.rate or DEFAULT_RATE)], "open"


def _key(args: argparse.Namespace) -> str:
    if args.key is not None:
        return args.key
    try:
        return args.key_file.read_text().strip()
    except OSError as exc:
        raise Usage(f"--key-file: {exc}") from None


def _out(args: argparse.Namespace, scenario: str) -> Path:
    if args.out is not None:
        return args.out
    return Path("loadtest-results") / f"{scenario}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def _http(args: argparse.Namespace) -> int:
    from loadtest.conversation import Conversation

    def build() -> dict[str, Any]:
        scenario = Conversation(
            users=args.users,
            voice_share=args.voice_share,
            retry_share=args.retry_share,
            seed=args.seed,
        )
        return {"scenario": scenario, "name": "conversation", "measure": "request"}

    return _execute(args, "http", build)


def _ws(args: argparse.Namespace) -> int:
    from loadtest.live_sessions import LiveSessions

    if args.page_views is not None:
        return _execute(args, "ws", lambda: _site(args))

    def build() -> dict[str, Any]:
        talkers = args.sessions if args.talkers is None else args.talkers
        if not 0 <= talkers <= args.sessions:
            raise Usage("--talkers must be between 0 and --sessions")
        ramp = args.ramp if args.ramp is not None else max(1.0, args.sessions / 100)
        if ramp <= 0:
            raise Usage("--ramp must be above 0")
        scenario = LiveSessions(
            sessions=args.sessions,
            talkers=talkers,
            mode=args.mode,
            cancel_share=args.cancel_share,
            drop_share=args.drop_share,
            persona_id=args.persona,
            allow_remote=args.allow_remote,
            seed=args.seed,
        )
        return {
            "scenario": scenario.turn,
            "name": "live sessions",
            "measure": "reply",
            "setup": (scenario.open_session, [Stage(ramp, args.sessions / ramp)]),
            "teardown": scenario.close,
        }

    return _execute(args, "ws", build)


def _site(args: argparse.Namespace) -> dict[str, Any]:
    from loadtest.site import Site

    shaped = ("--rate", "--duration", "--stages", "--concurrency", "--closed")
    if any(getattr(args, flag[2:]) not in (None, False) for flag in shaped):
        raise Usage(f"--page-views sets the load itself: no {', '.join(shaped)}")
    scenario = Site(
        url=args.url,
        key=_key(args),
        page_views=args.page_views,
        chat_share=args.chat_share,
        start=args.start,
        dwell=args.dwell_seconds,
        think=args.think_seconds,
        messages=args.messages,
        settle_s=args.settle,
        persona_id=args.persona,
        allow_remote=args.allow_remote,
        seed=args.seed,
    )
    seconds = args.page_views / args.views_per_second
    return {
        "scenario": scenario.view,
        "name": f"site, {args.start}",
        "measure": "chat_wait",
        "stages": [Stage(seconds, args.views_per_second)],
        "teardown": scenario.close,
        # The teardown is where the run waits for the server to free its sessions.
        "teardown_s": args.settle + TEARDOWN_MARGIN_S,
        "site": scenario.figures,
    }


def _execute(args: argparse.Namespace, kind: str, build: Callable[[], dict[str, Any]]) -> int:
    from loadtest.runner import run, write
    from loadtest.summary import print_summary

    try:
        # Refused before anything else happens, let alone a connection.
        check_target(args.url, allow_remote=args.allow_remote)
        stages, mode = _shape(args)
        key = _key(args)
        chosen = build()
        stages = chosen.pop("stages", stages)
    except (RemoteTarget, Usage) as exc:
        print(f"rapport loadtest {kind}: {exc}", file=sys.stderr)
        return 2
    out = _out(args, kind)
    try:
        result = run(
            url=args.url,
            stages=stages,
            mode=mode,
            key=key,
            allow_remote=args.allow_remote,
            max_in_flight=args.max_in_flight,
            max_operations=args.max_operations,
            connections=args.connections,
            timeout_s=args.timeout,
            drain_s=args.drain,
            progress=not args.quiet,
            command=shlex.join(["rapport", *_redacted(sys.argv[1:])]),
            **chosen,
        )
    except (RemoteTarget, ValueError) as exc:
        print(f"rapport loadtest {kind}: {exc}", file=sys.stderr)
        return 2
    written = write(result, out)
    if not args.quiet:
        print_summary(result)
    print(f"wrote {', '.join(str(path) for path in written)}")
    return 130 if result.interrupted else 0


def _redacted(argv: list[str]) -> list[str]:
    """The command line as recorded in the result: never the key itself."""
    shown = []
    hide = False
    for arg in argv:
        if hide:
            shown.append("***")
            hide = False
        elif arg == "--key":
            shown.append(arg)
            hide = True
        elif arg.startswith("--key="):
            shown.append("--key=***")
        else:
            shown.append(arg)
    return shown
