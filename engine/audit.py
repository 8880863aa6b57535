"""The account's append-only audit log: who changed what, when and from where.

DESIGN.md ("Operator dashboard and restricted routes"): every change to keys, users,
personas, documents and settings is written here, whoever made it: a dashboard user, a key
slot, or the CLI. This module holds the whole rule: what each action is named, who the
actor is, what goes in ``detail`` (small, and never a key or a password).

Storage: one Redis stream per account (:attr:`engine.keyspace.AccountKeys.audit`, in the
account's cluster slot), each entry one field ``e`` holding the JSON of an
:class:`AuditEntry` without its id. A stream because its ids are a ready cursor that
stays right while entries are added (an offset would shift under a reader paging back),
and ``XADD ... MAXLEN ~`` bounds it in the same command, so no reader or job has to trim.
Nothing updates or deletes an entry; the oldest fall off past :data:`MAX_ENTRIES`.

When: after the change succeeded, in the same request, in a command of its own. The changes
audited live in several stores (documents, personas, the key lookup records, which sit
outside the account's slot) and some span several round trips, so no one script could hold
a change and its entry everywhere. A failed audit write is logged and swallowed: the
change is done, and answering 500 would tell the caller it was not (a retry would then do
it twice).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

import msgspec

from engine import keyspace
from engine.apikeys import KEY_PATTERN, Principal
from engine.state import Client, redis_boundary

if TYPE_CHECKING:
    from engine.accounts import Plan

log = logging.getLogger("rapport.audit")

MAX_ENTRIES = 100_000
"""About how many entries an account keeps (``MAXLEN ~``: Redis trims whole radix-tree
nodes, so a few more may stay). At a few hundred bytes each, ~30 MB per account at most."""

MAX_PAGE = 200
DEFAULT_PAGE = 50

CLI = "cli"
"""The actor of every change made with the ``rapport`` command (whoever ran it on the host)."""

Action = Literal[
    "key.created",
    "key.regenerated",
    "key.disabled",
    "key.enabled",
    "key.deleted",
    "key.relabeled",
    "persona.created",
    "persona.updated",
    "persona.deleted",
    "persona.default_changed",
    "persona.knowledge_changed",
    "persona.media_added",
    "persona.media_deleted",
    "document.created",
    "document.updated",
    "document.deleted",
    "document.retried",
    "documents.processed",
    "settings.origins_changed",
    "settings.plan_changed",
    "account.created",
    "user.created",
    "user.disabled",
    "user.enabled",
    "user.role_changed",
    "user.password_reset",
    "login.succeeded",
    "login.failed",
]

Detail = dict[str, str | int | float | bool | list[str] | None]
"""Small facts about a change: names of fields changed, counts, a slot, a label. Never a
key, a token or a password (:func:`record` refuses a value that looks like a key)."""

KEY_ACTIONS: dict[str, Action] = {
    "create": "key.created",
    "regenerate": "key.regenerated",
    "disable": "key.disabled",
    "enable": "key.enabled",
    "delete": "key.deleted",
}
"""What each key command or route is audited as; the target is the slot."""


class Upserted(Protocol):
    """An upsert's outcome for one document (``kb.ingest.UpsertResult``, by its shape)."""

    @property
    def status(self) -> str: ...

    @property
    def external_id(self) -> str: ...


USER_ACTIONS: dict[str, Action] = {"disable": "user.disabled", "enable": "user.enabled"}
"""What ``rapport users disable|enable`` is audited as."""
UPSERTED: dict[str, Action] = {"created": "document.created", "updated": "document.updated"}
"""What an upsert's outcome is audited as; a no-op changed nothing and is not audited."""


class AuditEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One audited change, as ``GET /api/account/audit`` answers it."""

    id: str = ""
    """The stream entry's id: pass it as ``before`` to read the entries older than it."""
    at: str
    """When, ISO 8601 in UTC, to the millisecond."""
    actor: str
    """``user:<id>``, ``key:primary``, ``key:secondary`` or ``cli``."""
    action: Action
    target: str
    """What was changed: a persona id, a document's external_id, a slot, an email."""
    ip: str | None = None
    """The client's address as the server saw it (after any trusted proxy's
    ``X-Forwarded-For``); None from the CLI."""
    detail: Detail = {}


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditEntry]
    """Newest first."""
    next_before: str | None
    """The cursor for the next (older) page; None when this page holds the oldest entry."""


Cursor = Annotated[str, msgspec.Meta(pattern=r"\A[0-9]{1,20}-[0-9]{1,20}\Z")]
"""A stream entry id."""


class AuditQuery(msgspec.Struct, forbid_unknown_fields=True):
    """``GET /api/account/audit``'s query: ``limit`` 1..200 (50) and ``before``, a page's
    ``next_before``."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE
    before: Cursor | None = None


class Actor(msgspec.Struct, frozen=True):
    """Who changed an account, and from where."""

    account_id: str
    name: str
    ip: str | None = None


def actor_of(principal: Principal) -> str:
    """``user:<id>`` for a dashboard user's browser session, else ``key:<slot>``."""
    if principal.user_id is not None:
        return f"user:{principal.user_id}"
    return f"key:{principal.slot}"


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(AuditEntry).decode
_KEY = re.compile(KEY_PATTERN)


class AuditLog:
    def __init__(self, redis: Client) -> None:
        self._redis = redis

    async def record(
        self, by: Actor, action: Action, target: str, detail: Detail | None = None
    ) -> None:
        """Append one entry; a failure is logged, never raised (see the module's note)."""
        await self.record_many(by, [(action, target, detail)])

    async def record_many(
        self, by: Actor, changes: Iterable[tuple[Action, str, Detail | None]]
    ) -> None:
        """Append one entry per change, in one round trip."""
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        entries = []
        for action, target, detail in changes:
            entry = AuditEntry(
                at=at, actor=by.name, action=action, target=target, ip=by.ip, detail=detail or {}
            )
            # A key must never reach the log, whatever a caller passes as target or detail
            # (an external_id may be anything key-shaped).
            entries.append(_KEY.sub("[redacted]", _encode(entry).decode()))
        if not entries:
            return
        try:
            await self._append(keyspace.AccountKeys(by.account_id).audit, entries)
        except Exception:  # the change is done: see the module's note
            log.exception("audit entry not written", extra={"account": by.account_id})

    async def upserted(self, by: Actor, outcomes: Iterable[Upserted]) -> None:
        """``document.created`` / ``document.updated`` for each document an upsert changed."""
        await self.record_many(
            by,
            [(UPSERTED[o.status], o.external_id, None) for o in outcomes if o.status in UPSERTED],
        )

    async def plan_changed(self, by: Actor, before: Plan, after: Plan) -> None:
        """``settings.plan_changed`` with the new value of each limit that changed (none
        changed, no entry); the account is the target."""
        changed: Detail = {
            field: getattr(after, field)
            for field in msgspec.structs.asdict(after)
            if field != "allowed_origins" and getattr(after, field) != getattr(before, field)
        }
        if changed:
            await self.record(by, "settings.plan_changed", by.account_id, changed)

    async def origins_changed(self, by: Actor, before: Plan, after: Plan) -> None:
        """``settings.origins_changed`` with the origins ``added`` and ``removed`` (adding
        one already there changes nothing, and writes no entry)."""
        added = [o for o in after.allowed_origins if o not in before.allowed_origins]
        removed = [o for o in before.allowed_origins if o not in after.allowed_origins]
        if added or removed:
            detail: Detail = {"added": added, "removed": removed}
            await self.record(by, "settings.origins_changed", by.account_id, detail)

    @redis_boundary
    async def _append(self, stream: str, entries: list[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for payload in entries:
                pipe.xadd(stream, {"e": payload}, maxlen=MAX_ENTRIES, approximate=True)
            await pipe.execute()

    @redis_boundary
    async def page(self, account_id: str, query: AuditQuery) -> AuditPage:
        """The account's entries newest first: ``query.limit`` of them, older than
        ``query.before`` (a page's ``next_before``) when given."""
        limit, before = query.limit, query.before
        # "(" makes the bound exclusive (Redis >= 6.2); one more than asked tells whether
        # an older page exists.
        found = await self._redis.xrevrange(
            keyspace.AccountKeys(account_id).audit,
            max=f"({before}" if before else "+",
            min="-",
            count=limit + 1,
        )
        items = [
            msgspec.structs.replace(_decode(fields["e"]), id=entry_id)
            for entry_id, fields in found[:limit]
        ]
        return AuditPage(items=items, next_before=items[-1].id if len(found) > limit else None)


def given_fields(body: msgspec.Struct) -> list[str]:
    """A PATCH body's fields that were given (not UNSET): ``detail["fields"]`` of an update."""
    return [f for f, v in msgspec.structs.asdict(body).items() if v is not msgspec.UNSET]
