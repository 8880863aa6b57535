"""JSON responses encoded by msgspec (Structs, dicts, lists) instead of ``json.dumps``."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

_encode = msgspec.json.Encoder().encode


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


class ProblemJSON(JSON):
    """RFC 9457 §3: problem details travel as ``application/problem+json``."""

    media_type = "application/problem+json"
