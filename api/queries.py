"""Query strings as typed values: a route declares a msgspec Struct and gets one, or a 400."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, TypeVar

import msgspec

from api.problems import invalid_input

Query = TypeVar("Query", bound=msgspec.Struct)

Limit = Annotated[int, msgspec.Meta(ge=1, le=200)]
"""Seed 001's ``limit``: items to return, min 1, max 200; lists default it to 50."""
DEFAULT_LIMIT = 50


class Paging(msgspec.Struct):
    """A list's page and nothing else (``GET /api/personas``); other parameters are ignored."""

    limit: Limit = DEFAULT_LIMIT
    offset: Annotated[int, msgspec.Meta(ge=0, le=10**9)] = 0
    """Seed 001: items to skip, an int32; held well inside it."""


def parse_query(params: Mapping[str, str], kind: type[Query]) -> Query:
    """``params`` (a request's ``query_params``) as ``kind``. Values convert from their text
    to the field's type ("20" is 20); a bad value, or an unknown parameter where ``kind``
    forbids unknown fields, is a 400 ``validation.failed`` naming the parameter."""
    try:
        return msgspec.convert(dict(params), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise invalid_input(exc) from None
