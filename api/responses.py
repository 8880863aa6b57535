"""Responses: JSON encoded by msgspec (Structs, dicts, lists) instead of ``json.dumps``, and
a body streamed beside a request body still being read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

_encode = msgspec.json.Encoder().encode


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


class ProblemJSON(JSON):
    """RFC 9457 §3: problem details travel as ``application/problem+json``."""

    media_type = "application/problem+json"


class Duplex(Response):
    """A body written piece by piece while the request's own body is still being read.

    Starlette's ``StreamingResponse`` listens for the client leaving by reading the request
    channel itself, which takes the request body's messages away from an endpoint that is
    still reading them (an NDJSON upload answered line by line). This response only sends:
    the endpoint's reading sees the client leave, as ``request.stream()`` ends.
    """

    def __init__(self, pieces: AsyncIterator[bytes], media_type: str) -> None:
        self.pieces = pieces
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for piece in self.pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
