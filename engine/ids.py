"""Identifiers Rapport makes for its own records, and the rules for ids and user_ids that
requests name."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from typing import Annotated

import msgspec

from engine.errors import NotFound


def new_id() -> str:
    """12 hex characters: short enough to type in the CLI, 48 random bits."""
    return secrets.token_hex(6)


def uuid7() -> str:
    """A UUIDv7 (RFC 9562 §5.7): 48 bits of Unix milliseconds, then random bits, so ids
    sort by creation time. Seed 001 gives one to an upload that names no external_id."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 10
    return str(uuid.UUID(int=value))


# --- ids and user text a request names --------------------------------------------------------
#
# Python's ``$`` (and msgspec's ``pattern``, which searches with it) also matches before a
# final newline, so every whole-string pattern here ends in ``\Z``.

OWN_ID = r"\A[A-Za-z0-9_-]{1,64}\Z"
"""What every id Rapport makes is drawn from (:func:`new_id`'s hex, :func:`uuid7`'s hex and
'-'), with room to spare. An id that does not fit names no record, and its ':' or '{' would
otherwise reach into another of the account's Redis keys (persona ids are key segments as
they are: ``persona:<id>``, ``persona:<id>:docs``)."""
OwnId = Annotated[str, msgspec.Meta(pattern=OWN_ID)]
"""One of Rapport's own ids (a persona, a session, a media file) as a request body names it."""
_OWN_ID = re.compile(OWN_ID)


def own_id(value: str, what: str) -> str:
    """``value``, a path's id of one of Rapport's records; one that cannot be an id is the same
    404 (``resource.not_found``) as one that does not exist."""
    if not _OWN_ID.match(value):
        raise NotFound(f"No {what} {value[:64]!r}.")
    return value


UNSEEN = (
    "\\x00-\\x1f\\x7f-\\x9f"  # Unicode category Cc: C0, DEL, C1 (NUL, CR, LF, ESC, ...)
    "\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069"  # Bidi_Control: marks, embeddings,
    # overrides, isolates
)
"""Characters no user_id or persona name may hold, as a regex class body: controls, which
break logs, terminals and headers, and the bidirectional controls, which make text read
other than it is (U+202E shows "Nora\u202eevil" as "Noralive")."""
ZERO_WIDTH = "\\u200b-\\u200d\\u2060\\ufeff"
"""Zero-width space, non-joiner, joiner, word joiner and BOM: invisible, so two user_ids
differing only by one would look the same in every listing."""
MAX_USER_ID = 128
USER_ID = rf"\A[^{UNSEEN}{ZERO_WIDTH}]{{1,{MAX_USER_ID}}}\Z"
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_USER_ID, pattern=USER_ID)]
"""Seed 004's user_id, 1..128, wherever one enters (the conversation API, session mints,
the clone chat): no control, bidirectional-control or zero-width character."""
_USER_ID = re.compile(USER_ID)


def is_user_id(value: str) -> bool:
    """Whether ``value`` is a user_id :data:`UserId` accepts (for one named by a path)."""
    return _USER_ID.match(value) is not None
