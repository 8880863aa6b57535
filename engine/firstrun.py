"""First run: an empty state gets a ``demo`` account, its default persona and a key."""

from __future__ import annotations

import os
from pathlib import Path

from engine.accounts import AccountStore
from engine.apikeys import KeyStore
from engine.audit import CLI, KEY_ACTIONS, Actor, AuditLog
from engine.errors import Conflict
from engine.personas import PersonaStore
from engine.tenants import create_tenant

DEMO_ACCOUNT = "demo"


async def bootstrap_demo(
    accounts: AccountStore, personas: PersonaStore, keys: KeyStore, audit: AuditLog, key_path: Path
) -> str | None:
    """Create the demo tenant when no account exists; return its key, or None if not new.
    Audited as ``rapport accounts create`` and ``keys create`` are: by ``cli``, the host's
    operator, who started the server."""
    if await accounts.exists_any():
        return None
    try:
        account = await create_tenant(accounts, personas, DEMO_ACCOUNT)
    except Conflict:
        return None  # another process bootstrapped first
    key = await keys.create(account.id, "primary")
    by = Actor(account.id, CLI)
    await audit.record_many(
        by,
        [("account.created", account.name, None), (KEY_ACTIONS["create"], "primary", None)],
    )
    write_secret(key_path, key)
    return key


def write_secret(path: Path, secret: str) -> None:
    """Write a file only its owner can read, created with that mode (no window at 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed
