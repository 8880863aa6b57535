"""Identifiers Rapport makes for its own records."""

from __future__ import annotations

import secrets


def new_id() -> str:
    """12 hex characters: short enough to type in the CLI, 48 random bits."""
    return secrets.token_hex(6)
