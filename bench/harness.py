"""What every benchmark script does around its measurements: a temp dir, the processes it
starts, and stopping each of them by its pid however the run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.http_overhead import (
    LOOPBACK,
    ROOT,
    Server,
    free_port,
    rapport_command,
    rapport_env,
    redis_pid,
    spawn,
    stop,
    wait_ready,
)


def run_bench(
    body: Callable[[Path, list[Server]], None],
    *,
    prefix: str = "rapport-bench-",
    before_stop: Callable[[Server], None] | None = None,
) -> int:
    """Run ``body(workdir, servers)``; every server it appends is stopped afterwards, last
    started first. Returns the exit status (130 when interrupted)."""
    # SIGTERM to this script unwinds like Ctrl-C, so the finally below still runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as tmp:
        try:
            body(Path(tmp), servers)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            # A second Ctrl-C must not cut the shutdown short; every wait in stop() is bounded.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for server in reversed(servers):
                if before_stop is not None:
                    before_stop(server)
                stop(server)
    return 0


def spawn_ready_rapport(
    data_dir: Path,
    log: Path,
    servers: list[Server],
    env: dict[str, str],
    command: list[str] | None = None,
) -> tuple[Server, str, str]:
    """``rapport serve`` on a fresh data dir: loopback, a free port, one process, warnings
    only in the log, plus ``env``. Returns the server (its embedded redis-server's pid among
    its own), its base URL and the demo account's key."""
    port = free_port()
    settings = rapport_env(data_dir, port, **env)
    server = spawn(log.stem, command or rapport_command(), settings, log)
    servers.append(server)
    base = f"http://{LOOPBACK}:{port}"
    wait_ready(server, f"{base}/healthz")
    pid = redis_pid(data_dir)
    if pid is not None:
        server.extra_pids.append(pid)
    return server, base, (data_dir / "demo_api_key").read_text().strip()


def start_fake_openai(
    workdir: Path, servers: list[Server], *flags: str, name: str = "fake_openai"
) -> tuple[Server, str]:
    """The tests' fake OpenAI-compatible server (``loadtest.fake_llm``, paced by ``flags``,
    e.g. ``"--ttft-ms", "200"``) on a free loopback port, and its URL. Every request is kept:
    the benches check one upstream call per turn."""
    port = free_port()
    fake = spawn(
        name,
        [sys.executable, "-m", "loadtest.fake_llm", "--port", str(port), "--keep-calls", "0",
         *flags],
        dict(os.environ),
        workdir / f"{name}.log",
    )  # fmt: skip
    servers.append(fake)
    url = f"http://{LOOPBACK}:{port}"
    wait_ready(fake, f"{url}/_control/calls")
    return fake, url


def operate(data_dir: Path, *command: str, redis_url: str | None = None) -> str:
    """An operator's ``rapport`` command against the running server's data dir (its
    embedded Redis, or ``redis_url``'s); what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAPPORT_")}
    env["RAPPORT_DATA_DIR"] = str(data_dir)
    if redis_url is not None:
        env["RAPPORT_REDIS_URL"] = redis_url
    done = subprocess.run(
        [*rapport_command()[:-1], *command],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


def refill(data_dir: Path, turns: int, redis_url: str | None = None) -> None:
    """Every turn spends one of the account's requests: add enough for the whole run."""
    operate(data_dir, "balance", "add", "--account", "demo", str(turns), redis_url=redis_url)


PLAN_SESSIONS = 100_000
"""The demo account's max_concurrent_sessions in the benches: never the limit there."""


def raise_plan(data_dir: Path, redis_url: str | None = None) -> None:
    """Let the demo account hold :data:`PLAN_SESSIONS` sessions (its plan says 10)."""
    operate(
        data_dir, "accounts", "plan", "--account", "demo",
        "--max-concurrent-sessions", str(PLAN_SESSIONS), redis_url=redis_url,
    )  # fmt: skip
