"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import msgspec

# Fields a record may carry through ``extra=``; they become top-level keys of the line.
FIELDS = ("request_id", "method", "route", "path", "status", "latency_ms", "client")

_encode = msgspec.json.Encoder().encode

UPGRADE_REFUSED: ContextVar[bool] = ContextVar("upgrade_refused", default=False)
"""Set (by :class:`api.telemetry.Telemetry`) in the task of a socket whose upgrade was
answered with an HTTP refusal (403 origin, 429 rate limit): normal traffic, logged once, at
info, by Telemetry."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            # Traces go to the operator's log, never into a response.
            line["exc"] = self.formatException(record.exc_info)
        return _encode(line).decode()


class SocketLines(logging.Filter):
    """Drops uvicorn's own lines about each WebSocket ('"WebSocket /path?query" [accepted]',
    'connection open', 'connection closed'): the query carries the session's token, which
    must not reach a log, and Telemetry already writes one line per socket without it.

    Also uvicorn's error "ASGI callable returned without completing handshake." after a
    refused upgrade: its websockets-sansio protocol (0.54) never counts an ASGI
    ``websocket.http.response`` refusal as a finished handshake, so it logs that error for
    every refusal. The same line without a refusal (an app that answered nothing) is a bug,
    and stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if message.startswith("ASGI callable returned without") and UPGRADE_REFUSED.get():
            return False
        return not ('"WebSocket ' in message or message in ("connection open", "connection closed"))


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers propagate here; its access log is replaced by ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.error").addFilter(SocketLines())
    logging.getLogger("uvicorn.access").disabled = True
