"""Seed 002's examples, read from its copy in ``tests/contracts/``: for each endpoint, the
request body and the response example exactly as the seed prints them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SEED = Path(__file__).parent / "contracts" / "seed_002_clone_api.txt"
_ENDPOINT = re.compile(r"^(GET|POST|PUT|DELETE) (/api/\S*)$", re.MULTILINE)
_EXAMPLE = re.compile(
    r"(Request Body|Response Example):\s*\n\s*jsonCopy code(\{.*?\n\})", re.DOTALL
)


def examples() -> dict[str, dict[str, Any]]:
    """``"POST /api/kb/store-pages"`` → ``{"request": {...}, "response": {...}}`` (either
    missing when the seed gives none). The seed repeats some endpoints; the first wins."""
    text = SEED.read_text()
    found: dict[str, dict[str, Any]] = {}
    marks = list(_ENDPOINT.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        section = text[mark.end() : following.start() if following else len(text)]
        key = f"{mark.group(1)} {mark.group(2)}"
        if key in found:
            continue
        parsed: dict[str, Any] = {}
        for kind, body in _EXAMPLE.findall(section):
            parsed["request" if kind == "Request Body" else "response"] = json.loads(body)
        found[key] = parsed
    return found
