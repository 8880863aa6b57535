"""Each process's one timer for capacity: renew, sweep, keep queued clients' places.

Every third of ``RAPPORT_SESSION_LEASE_SECONDS`` it renews the slot leases of the sessions
whose sockets this process holds (two thirds of the setting ahead), marks the queued clients
connected here as heard from (pushing their new places), and sweeps the deployment's slots,
so that the slots of a process that stopped (SIGKILL, a hang) are free within the setting
and the line moves on even when nothing else happens. A failed round (Redis down) is logged
and the next one tries again: a lease is never renewed late by more than one round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from engine.errors import RapportError
from sessions.capacity import Capacity
from sessions.store import SessionStore

log = logging.getLogger("rapport.sessions")


async def keep_leases(
    store: SessionStore,
    capacity: Capacity,
    held: Callable[[], list[tuple[str, str]]],
    waiting: Callable[[], Awaitable[None]],
    period: float,
) -> None:
    """Until cancelled: renew ``held()``'s leases, refresh ``waiting()``, sweep."""
    while True:
        try:
            await store.renew(held())
            await waiting()
            await capacity.advance()
        except RapportError as error:
            log.warning("could not renew the session leases: %s", error.message)
        await asyncio.sleep(period)
