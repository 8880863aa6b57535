"""Identifiers Rapport makes for its own records."""

from __future__ import annotations

import secrets
import time
import uuid


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
