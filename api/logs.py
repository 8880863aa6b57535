"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import msgspec

# Fields a record may carry through ``extra=``; they become top-level keys of the line.
FIELDS = ("request_id", "method", "route", "path", "status", "latency_ms", "client")

_encode = msgspec.json.Encoder().encode


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
    must not reach a log, and Telemetry already writes one line per socket without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
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
