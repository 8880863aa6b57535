"""Accepting knowledge: upserts keyed by external_id, no-ops, quotas, queueing (seed 000).

The batch endpoint stages documents (``staged``: saved, not queued); the single endpoint
and ``process`` queue them (``pending``). Unchanged content is a ``no_op`` that costs
nothing: no write, no charge, no re-embedding. The quota is checked for the whole batch
before anything is written, so an over-quota batch changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

from engine.accounts import BYTES_PER_STORAGE_UNIT, AccountStore
from engine.errors import Conflict, KnowledgeQuotaExceeded
from kb.documents import (
    ContentType,
    Document,
    DocumentStore,
    WriteConflict,
    content_hash,
    estimate_tokens,
    knowledge_units,
    new_document,
    storage_units,
)
from kb.queue import Job, ProcessingQueue

UpsertStatus = Literal["created", "updated", "no_op"]
WRITE_TRIES = 3
"""Times an upsert or a queueing is tried again when another write moved the record."""


class Incoming(msgspec.Struct, frozen=True, kw_only=True):
    """One document as accepted, whatever route it came by."""

    external_id: str
    data: bytes
    content_type: ContentType
    label: str | None = None
    original_file_name: str | None = None
    estimated_pages: int | None = None
    keywords: tuple[str, ...] = ()
    """Embedded with every chunk to help retrieval, never quoted (seed 004's ``tags``)."""


class Outcome(msgspec.Struct, frozen=True):
    external_id: str
    status: UpsertStatus
    re_embedded: bool


class Plan(msgspec.Struct, frozen=True):
    incoming: Incoming
    current: Document | None
    document: Document | None
    """What to write; None for a no-op."""
    units_delta: float
    bytes_delta: int
    content_changed: bool


class Ingest:
    def __init__(self, docs: DocumentStore, accounts: AccountStore, queue: ProcessingQueue) -> None:
        self._docs = docs
        self._accounts = accounts
        self._queue = queue

    async def upsert(
        self, account_id: str, items: list[Incoming], *, enqueue: bool
    ) -> list[Outcome]:
        currents = await self._docs.get_many(account_id, [i.external_id for i in items])
        now = datetime.now(UTC)
        plans = [
            plan(item, current, now, enqueue) for item, current in zip(items, currents, strict=True)
        ]
        await self._check_quota(account_id, plans)
        jobs = []
        outcomes = []
        for p in plans:
            if p.document is None:
                outcomes.append(Outcome(p.incoming.external_id, "no_op", False))
                continue
            p = await self._write(account_id, p, now, enqueue)
            if p.content_changed and enqueue:
                jobs.append(Job(account_id, p.document.external_id, p.document.generation))
            status: UpsertStatus = "created" if p.current is None else "updated"
            outcomes.append(Outcome(p.incoming.external_id, status, p.content_changed))
        await self._queue.push(jobs)
        return outcomes

    async def _write(self, account_id: str, p: Plan, now: datetime, enqueue: bool) -> Plan:
        """Write a plan; returns the plan written. When the worker (or a PATCH) wrote the
        same content's record in between, the upsert is planned again on top of that; when
        someone else changed the content, it is a conflict for the client to retry."""
        for _ in range(WRITE_TRIES):
            if p.document is None:  # planned again: the record already says it all
                return p
            try:
                await self._docs.write(
                    account_id,
                    p.document,
                    replacing=p.current,
                    units_delta=p.units_delta,
                    bytes_delta=p.bytes_delta,
                    content=p.incoming.data if p.content_changed else None,
                )
                return p
            except WriteConflict:
                fresh = await self._docs.get(account_id, p.incoming.external_id)
                if fresh is None or p.current is None or fresh.generation != p.current.generation:
                    break
                p = plan(p.incoming, fresh, now, enqueue)
        raise Conflict(
            f"Document {p.incoming.external_id!r} changed while this request ran; retry."
        )

    async def process_staged(self, account_id: str) -> int:
        """Queue every staged document (seed 000's dashboard button); returns how many."""
        listing = await self._docs.listing(account_id)
        staged = [eid for eid, row in listing.rows.items() if row.status == "staged"]
        jobs = []
        for found in await self._docs.get_many(account_id, staged):
            doc = found
            for _ in range(WRITE_TRIES):
                if doc is None or doc.processing_status != "staged":
                    break  # deleted, or queued or replaced by someone else meanwhile
                queued = msgspec.structs.replace(doc, processing_status="pending")
                try:
                    await self._docs.write(account_id, queued, replacing=doc)
                except WriteConflict:  # a PATCH came in between: still staged, try again
                    doc = await self._docs.get(account_id, doc.external_id)
                    continue
                jobs.append(Job(account_id, doc.external_id, doc.generation))
                break
        await self._queue.push(jobs)
        return len(jobs)

    async def _check_quota(self, account_id: str, plans: list[Plan]) -> None:
        units = sum(p.units_delta for p in plans if p.document is not None)
        size = sum(p.bytes_delta for p in plans if p.document is not None)
        if units <= 0 and size <= 0:
            return
        account = await self._accounts.get(account_id)
        used = await self._accounts.usage(account_id)
        over_units = used.knowledge_units + units > account.plan.knowledge_units
        over_storage = (
            used.storage_bytes + size > account.plan.storage_units * BYTES_PER_STORAGE_UNIT
        )
        if over_units or over_storage:
            which = "knowledge units" if over_units else "storage units"
            raise KnowledgeQuotaExceeded(
                f"This would exceed the account's {which}; nothing was written."
            )


def plan(item: Incoming, current: Document | None, now: datetime, enqueue: bool) -> Plan:
    digest = content_hash(item.content_type, item.data + "\x00".join(item.keywords).encode())
    if current is not None and current.content_hash == digest:
        if item.label is None or item.label == current.label:
            return Plan(item, current, None, 0, 0, False)
        relabelled = msgspec.structs.replace(current, label=item.label)
        return Plan(item, current, relabelled, 0, 0, False)
    estimated = knowledge_units(estimate_tokens(item.content_type, len(item.data)))
    base = current or new_document(item.external_id, now)
    document = msgspec.structs.replace(
        base,
        label=item.label if item.label is not None else base.label,
        original_file_name=item.original_file_name,
        content_type=item.content_type,
        content_size_bytes=len(item.data),
        estimated_knowledge_units=estimated,
        estimated_storage_units=storage_units(len(item.data)),
        knowledge_units=None,
        storage_units=None,
        processing_status="pending" if enqueue else "staged",
        processed_at=None,
        error_message=None,
        estimated_pages=item.estimated_pages,
        actual_pages=None,
        content_hash=digest,
        keywords=list(item.keywords),
        generation=base.generation + 1,
        charged_units=estimated,
    )
    old_charge = current.charged_units if current is not None else 0.0
    old_size = current.content_size_bytes if current is not None else 0
    return Plan(item, current, document, estimated - old_charge, len(item.data) - old_size, True)
