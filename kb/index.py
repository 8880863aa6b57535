"""The Chroma vector index: embedded under the data dir, or a Chroma server.

chromadb's client is synchronous, so every call runs in a worker thread. A Chroma server
that is down when Rapport starts is not fatal: the client is (re)made on the next use, and
until then the index reports :class:`~engine.errors.IndexUnavailable`.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import anyio.to_thread
import chromadb
from chromadb.api import ClientAPI
from chromadb.config import Settings as ChromaSettings

from engine.config import Settings
from engine.errors import IndexUnavailable

# Telemetry would try to reach the internet, which neither we nor many users have.
_CHROMA_SETTINGS = ChromaSettings(anonymized_telemetry=False)


class VectorIndex:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: ClientAPI | None = None
        self._lock = threading.Lock()

    def _open(self) -> ClientAPI:
        with self._lock:
            if self._client is None:
                url = self._settings.chroma_url
                if url is None:
                    self._client = chromadb.PersistentClient(
                        path=str(self._settings.chroma_path), settings=_CHROMA_SETTINGS
                    )
                else:
                    parts = urlsplit(url)
                    self._client = chromadb.HttpClient(
                        host=parts.hostname or "127.0.0.1",
                        port=parts.port or (443 if parts.scheme == "https" else 80),
                        ssl=parts.scheme == "https",
                        settings=_CHROMA_SETTINGS,
                    )
            return self._client

    def _heartbeat(self) -> int:
        return self._open().heartbeat()

    async def ping(self) -> None:
        """Raise IndexUnavailable unless Chroma answers a heartbeat."""
        try:
            await anyio.to_thread.run_sync(self._heartbeat)
        except Exception as exc:  # any failure to reach Chroma means "not ready"
            if self._settings.chroma_url is not None:
                self._client = None  # dial again next time
            raise IndexUnavailable() from exc
