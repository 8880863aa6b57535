"""Render a failure in the shape of the route family it happened on.

``/api/v1/...`` (seed 004) gets ``{"detail": {"code", "message", "request_id"}}``; everything
else gets an RFC 9457 problem document with the seed 000 ``code`` extension, ``traceId`` and,
for field validation, ``errors``. Both read the same row of :class:`engine.errors.Failure`.
No exception text or trace is ever rendered: only the message our own code wrote.

Middleware that refuses before the app has answered goes through :func:`refuse`, the one exit
for both scope types: a request gets the document above; a socket is accepted, then closed
with the row's WebSocket close code (docs/architecture.md, "Live sessions": after
accepting, so a browser can read the code, where a refused handshake shows it nothing but a
failed connection) and a reason of the family's code and our message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from api.responses import JSON, ProblemJSON
from engine.errors import (
    BodyTooLarge,
    InternalError,
    MethodNotAllowed,
    NotFound,
    RapportError,
    ValidationFailed,
)

V1_PREFIX = "/api/v1/"
# RFC 6455 §5.5: a control frame carries at most 125 bytes, 2 of which are the close code.
MAX_CLOSE_REASON = 123


class V1Detail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    request_id: str | None = None


class V1Error(msgspec.Struct):
    """Seed 004's error envelope."""

    detail: V1Detail


class Problem(msgspec.Struct, omit_defaults=True, rename={"trace_id": "traceId"}):
    """RFC 9457 problem details with seed 000's extensions."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    trace_id: str | None = None
    errors: dict[str, list[str]] | None = None
    scope: str | None = None


def is_v1(path: str) -> bool:
    return path.startswith(V1_PREFIX) or path == V1_PREFIX.rstrip("/")


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def render(scope: Scope, error: RapportError) -> Response:
    failure = error.failure
    request_id = request_id_of(scope)
    path: str = scope.get("path", "")
    if is_v1(path):
        message = error.message
        if error.errors:
            fields = "; ".join(f"{k}: {', '.join(v)}" for k, v in error.errors.items())
            message = f"{message} ({fields})"
        body: msgspec.Struct = V1Error(
            detail=V1Detail(code=failure.v1_code, message=message, request_id=request_id)
        )
        return JSON(body, status_code=failure.status, headers=error.headers)
    body = Problem(
        # A relative reference into our docs page, where every code is described.
        type=f"/docs#{failure.code}",
        title=failure.title,
        status=failure.status,
        detail=error.message,
        code=failure.code,
        instance=path or None,
        trace_id=request_id,
        errors=error.errors,
        scope=error.scope,
    )
    return ProblemJSON(body, status_code=failure.status, headers=error.headers)


def close_message(scope: Scope, error: RapportError) -> Message:
    """The ``websocket.close`` for a failure: the table's close code, and the family's code
    and our message as reason, cut on a UTF-8 boundary to what a close frame can carry."""
    failure = error.failure
    code = failure.v1_code if is_v1(scope.get("path", "")) else failure.code
    reason = f"{code}: {error.message}".encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
    return {"type": "websocket.close", "code": failure.close_code, "reason": reason}


async def refuse(scope: Scope, receive: Receive, send: Send, error: RapportError) -> None:
    """Answer ``error`` in place of the app, in the way of the scope's type."""
    if scope["type"] == "websocket":
        # The error's headers (a 429's Retry-After) ride on the 101, for clients that can
        # read it; a browser cannot, and has the close code and reason.
        headers = [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
        await send({"type": "websocket.accept", "headers": headers})
        await send(close_message(scope, error))
        return
    await render(scope, error)(scope, receive, send)


# msgspec names a missing or unknown field in the text only; the path is its object's.
_OBJECT_FIELD = re.compile(r"Object (?:missing required|contains unknown) field `([^`]+)`")


def invalid_input(exc: msgspec.MsgspecError, prefix: str = "") -> ValidationFailed:
    """msgspec's ``Expected ... - at `$.field``` as a validation failure naming the field."""
    text, located, where = str(exc).rpartition(" - at `$")
    if not located:
        text, where = str(exc), ""
    field = where.rstrip("`").lstrip(".")
    if named := _OBJECT_FIELD.fullmatch(text):
        field = f"{field}.{named[1]}" if field else named[1]
    field = prefix + (field or "body")
    return ValidationFailed(f"{field}: {text}", errors={field: [text]})


T = TypeVar("T")


def nested_too_deeply() -> ValidationFailed:
    """A body of arrays or objects some thousand deep: msgspec raises RecursionError."""
    return ValidationFailed("body: nested too deeply.", errors={"body": ["nested too deeply"]})


def decode_body(body: bytes, kind: type[T]) -> T:
    """A JSON body as ``kind``; anything else is 400 ``validation.failed`` naming the field."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:  # a ValidationError is one too
        raise invalid_input(exc) from None
    except RecursionError:
        raise nested_too_deeply() from None


def from_http_exception(exc: HTTPException) -> RapportError:
    """Map Starlette's own routing and body-limit exceptions onto the error table."""
    headers: Mapping[str, str] = exc.headers or {}
    if exc.status_code == 404:
        return NotFound()
    if exc.status_code == 405:
        return MethodNotAllowed(headers=headers)
    if exc.status_code == 413:
        return BodyTooLarge()
    if exc.status_code == 400:
        return ValidationFailed("The request could not be read.")
    return InternalError()


async def handle_rapport_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RapportError)
    return render(request.scope, exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return render(request.scope, from_http_exception(exc))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    return render(request.scope, InternalError())
