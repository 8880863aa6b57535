"""The HTTP and WebSocket protocols ``rapport serve`` gives uvicorn: uvicorn's own, with the
limits a port that browsers reach directly needs (README, "Exposed ports").

uvicorn's httptools protocol sets no limit on a request's head and no deadline for it (issue
21: 16 MB of headers answered 200, 60 unfinished heads held 640 MiB, slow partial requests
stayed open for ever). :class:`HttpProtocol` keeps httptools (BENCHMARKS.md, "HTTP parser
limits", has what it costs) and adds, before any of the app runs:

- a request head (request line and header fields) over ``RAPPORT_MAX_HEADER_BYTES`` is
  answered 431 Request Header Fields Too Large (RFC 6585 §5) and its connection closed. The
  unfinished head is counted as it arrives, so a client never makes the parser hold more
  than the limit and one read (256 KiB);
- a connection that has not sent a whole head ``RAPPORT_HEADER_TIMEOUT`` seconds after it
  opened, or after the first byte of its next request, is closed;
- past ``RAPPORT_MAX_CONNECTIONS`` open connections (HTTP and WebSocket, in this process) a
  new one is answered 503 with Retry-After and closed.

These answers are plain text written on the transport, like uvicorn's own 400: no route is
known yet, so neither problem-details family applies. The limits apply to a WebSocket's
upgrade request too: uvicorn hands the connection to the WebSocket protocol only once the
head is complete and accepted.

:class:`WebSocketProtocol` (websockets-sansio's) lets the app choose a connection's frame
limit once it knows what the socket is for (a live session: its mode, issue 21), through the
scope extension :data:`sessions.socket.FRAME_LIMIT_EXTENSION`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request
from websockets.protocol import State

from engine.config import Settings, WsImpl, load_settings
from sessions.socket import FRAME_LIMIT_EXTENSION

REFUSAL_RETRY_SECONDS = 1
"""Retry-After of the 503 past RAPPORT_MAX_CONNECTIONS: connections come and go quickly."""


@functools.cache
def _settings() -> Settings:
    # Each worker process reads the environment once (``rapport serve`` puts its flags there).
    return load_settings()


def protocols(ws_impl: WsImpl) -> dict[str, str]:
    """uvicorn's ``http`` and ``ws`` arguments: import paths, so that ``--workers N``
    processes load the same classes."""
    ws = f"{__name__}:WebSocketProtocol" if ws_impl == "websockets-sansio" else ws_impl
    return {"http": f"{__name__}:HttpProtocol", "ws": ws}


def _plain_response(status: int, text: str, *headers: bytes) -> bytes:
    body = text.encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            *headers,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _HeadRefused(Exception):
    """Raised in a parser callback to stop httptools at once; the answer is already sent."""


class HttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = _settings()
        self.max_head = settings.max_header_bytes
        self.head_timeout = settings.header_timeout
        self.max_connections = settings.max_connections
        self.head_timer: asyncio.TimerHandle | None = None
        """Armed while a request's head is unfinished."""
        self.heads = 0
        self.head_received = 0
        """Bytes received while this head was unfinished: what httptools may be holding."""
        self.head_size = 0
        """The head as parsed so far, in the bytes it takes on the wire."""
        self.refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(
                503,
                "Too many open connections; try again shortly.",
                b"retry-after: %d\r\n" % REFUSAL_RETRY_SECONDS,
            )
            return
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, and the count of an unfinished head.
        if self.refused:
            return
        self._unset_keepalive_if_required()
        counting, heads = self.head_timer is not None, self.heads
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if not self.refused:  # else refused from a callback
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
            return
        # A read that began this head (on a kept-alive connection) is left out: it may hold
        # the end of the previous request. The parsed size below still counts all of it.
        if counting and self.heads == heads and self.head_timer is not None:
            self.head_received += len(data)
            if self.head_received > self.max_head:
                self._too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is None:  # a new connection's first head is timed from its opening
            self._start_head()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._stop_head()
        # The request line's method, spaces, version and CRLF, and the blank line.
        self.head_size += len(self.parser.get_method()) + 14
        if self.head_size > self.max_head:
            self._too_large()
            raise _HeadRefused
        super().on_headers_complete()

    def _start_head(self) -> None:
        self.heads += 1
        self.head_received = self.head_size = 0
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _too_large(self) -> None:
        self._refuse(431, f"The request's headers may be at most {self.max_head} bytes.")

    def _refuse(self, status: int, text: str, *headers: bytes) -> None:
        self._stop_head()
        self.refused = True
        self.transport.write(_plain_response(status, text, *headers))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing with the client's bytes unread would reset the connection, and the client
        # could lose the answer (RFC 9112 §9.6): half-close, drop what still comes, and close
        # at the client's end of stream (uvicorn's eof_received) or after the head timeout.
        self.transport.write_eof()
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets-sansio's protocol, whose frame limit the app may lower per connection.

    websockets reads its ``max_size`` when it starts on a frame, and it starts on the first as
    soon as the handshake is parsed, before the app has seen anything. So reading is held from
    the handshake until the app either sets the limit (the scope extension, after accepting),
    reads a message, or closes; setting the limit restarts the frame parser, which has been
    given nothing since the handshake, so the very first frame is held to it.
    """

    held = False

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            self.scope["extensions"][FRAME_LIMIT_EXTENSION] = self.limit_frames
            self.held = True
            self.transport.pause_reading()

    def limit_frames(self, max_bytes: int) -> None:
        """Frames over ``max_bytes`` close the socket 1009 (RFC 6455 §7.4.1) from their
        header, before their payload is read. Call it after accepting."""
        if self.conn.state is not State.OPEN:
            raise RuntimeError("a socket's frame limit is set once it is accepted")
        self.conn.max_message_size = max_bytes
        if self.held:
            self.conn.parser = self.conn.parse()
            next(self.conn.parser)
            self._release()

    def _release(self) -> None:
        if self.held:
            self.held = False
            self.transport.resume_reading()

    async def receive(self) -> Any:
        if self.handshake_complete:  # reading a message: the configured limit applies
            self._release()
        return await super().receive()

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.close":
            self._release()  # so that the client's close frame is read
        await super().send(message)
