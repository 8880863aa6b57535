"""The client a scenario gets: HTTP/1.1 with keep-alive over asyncio streams, and WebSockets.

A load generator must not be the bottleneck it measures, so HTTP is a few hundred lines of
asyncio streams (as ``bench/`` does it) rather than a general client: a pool of at most
``connections`` keep-alive connections, each carrying one request at a time; a request that
finds them all busy waits for one, and that wait is part of its latency. Bodies come back
whole (``Content-Length``, chunked, or up to the close). Every request is bounded by
``timeout_s``. Transport failures raise ``OSError``, ``EOFError`` (a connection closed
mid-answer) or ``TimeoutError``; a runner counts them as ``transport <class name>``.
WebSockets are the ``websockets`` package's client, with no proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
from typing import Any
from urllib.parse import urlsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect

READ_LIMIT = 1 << 20  # the longest header block or chunk-size line accepted
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class Response:
    """One HTTP answer: ``status``, ``headers`` (lower-case names) and ``body`` (bytes)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return _decode(self.body)

    @property
    def code(self) -> str | None:
        """The error's code: ``/api/v1`` answers ``{"detail": {"code"}}``, the other routes
        problem+json ``{"code"}``; None when the body has neither."""
        try:
            body = self.json()
        except msgspec.DecodeError:
            return None
        if not isinstance(body, dict):
            return None
        detail = body.get("detail")
        code = detail.get("code") if isinstance(detail, dict) else body.get("code")
        return code if isinstance(code, str) else None

    @property
    def outcome(self) -> str:
        """``200``, ``429 rate_limited``, ``503 queue_unavailable``…"""
        code = self.code if self.status >= 400 else None
        return f"{self.status} {code}" if code else str(self.status)


def transport_outcome(exc: BaseException) -> str:
    """``transport ConnectionRefusedError``; a bare OSError adds its errno's name
    (``transport OSError ENETUNREACH``)."""
    name = type(exc).__name__
    if type(exc) is OSError and exc.errno in errno.errorcode:
        name = f"{name} {errno.errorcode[exc.errno]}"
    return f"transport {name}"


class _Stale(Exception):
    """A reused connection that turned out closed before any of the answer came."""


class _Connection:
    __slots__ = ("reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class Client:
    """HTTP and WebSocket client of one base URL (``http://127.0.0.1:8000``).

    ``key`` goes out as ``X-Api-Key`` on every HTTP request (Rapport takes it on every
    route). ``path`` arguments are joined to the base URL's path.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        connections: int = 256,
        timeout_s: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.timeout_s = timeout_s
        self.key = key
        authority = parts.netloc.rpartition("@")[2]
        head = f"Host: {authority}\r\nUser-Agent: rapport-loadtest\r\n"
        if key is not None:
            head += f"X-Api-Key: {key}\r\n"
        self._head = head.encode()
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    # --- HTTP ------------------------------------------------------------------------------

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Response:
        """Send one request and read its whole answer. ``json`` is encoded with msgspec;
        ``body`` is sent as it is (give ``Content-Type`` in ``headers``)."""
        if json is not None:
            body = _encode(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
        lines = [f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode(), self._head]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}\r\n".encode())
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d\r\n" % len(body or b""))
        lines.append(b"\r\n")
        if body:
            lines.append(body)
        message = b"".join(lines)
        async with asyncio.timeout(self.timeout_s if timeout_s is None else timeout_s):
            async with self._slots:
                connection = await self._connection()
                try:
                    return await self._exchange(connection, message, method)
                except _Stale:
                    # A kept-alive connection the server closed while it sat idle: the
                    # request never reached it, so it goes once more on a fresh one.
                    self._discard(connection)
                except BaseException:
                    self._discard(connection)
                    raise
                connection = await self._connection(fresh=True)
                try:
                    return await self._exchange(connection, message, method)
                except BaseException:
                    self._discard(connection)
                    raise

    async def _connection(self, fresh: bool = False) -> _Connection:
        while self._idle and not fresh:
            connection = self._idle.pop()
            if not connection.reader.at_eof() and not connection.writer.is_closing():
                connection.reused = True
                return connection
            self._discard(connection)
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl, limit=READ_LIMIT
        )
        connection = _Connection(reader, writer)
        self._open.add(connection)
        return connection

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def _exchange(self, connection: _Connection, message: bytes, method: str) -> Response:
        reader, writer = connection.reader, connection.writer
        try:
            writer.write(message)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            if connection.reused and not getattr(exc, "partial", b""):
                raise _Stale from exc
            raise
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
            keep = False
        if keep:
            self._idle.append(connection)
        else:
            self._discard(connection)
        return Response(status, headers, body)

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    # --- WebSockets ------------------------------------------------------------------------

    async def websocket(self, url: str, **options: Any) -> ClientConnection:
        """Open a socket to an absolute ``ws://``/``wss://`` URL (such as a minted
        ``ws_url``), or to a path on this client's host. Options go to
        ``websockets.asyncio.client.connect``."""
        if not url.startswith(("ws://", "wss://")):
            url = "ws" + self.url[4:] + url
        options = {"proxy": None, "open_timeout": self.timeout_s, **options}
        return await connect(url, **options)

    async def aclose(self) -> None:
        for connection in list(self._open):
            self._discard(connection)
        self._idle.clear()
