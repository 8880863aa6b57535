"""First run: an empty state gets a ``demo`` account, its default persona and a key."""

from __future__ import annotations

import os
from pathlib import Path

from engine.accounts import AccountStore
from engine.apikeys import KeyStore
from engine.errors import Conflict
from engine.personas import PersonaStore

DEMO_ACCOUNT = "demo"
DEMO_PERSONA = {
    "name": "Rapport",
    "description": "The demo persona created on first run.",
    "role": (
        "You are a friendly assistant. Answer from the knowledge base, say plainly when it "
        "does not cover a question, and keep replies short."
    ),
    "sociality": "ambivert",
    "archetypes": ["Sage", "Caregiver"],
}


async def bootstrap_demo(
    accounts: AccountStore, personas: PersonaStore, keys: KeyStore, key_path: Path
) -> str | None:
    """Create the demo tenant when no account exists; return its key, or None if not new."""
    if await accounts.exists_any():
        return None
    try:
        account = await accounts.create(DEMO_ACCOUNT)
    except Conflict:
        return None  # another process bootstrapped first
    persona = await personas.create(account.id, **DEMO_PERSONA)
    await accounts.set_default_persona(account.id, persona.id)
    key = await keys.create(account.id, "primary")
    write_secret(key_path, key)
    return key


def write_secret(path: Path, secret: str) -> None:
    """Write a file only its owner can read, created with that mode (no window at 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed
