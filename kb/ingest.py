"""Accepting knowledge: upserts keyed by external_id, no-ops, quotas, queueing (seed 000).

The batch endpoint stages documents (``staged``: saved, not queued); the single endpoint
and ``process`` queue them (``pending``). Unchanged content is a ``no_op`` that costs
nothing: no write, no charge, no re-embedding. The quota is checked for the whole batch
before anything is written, so an over-quota batch changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from engine.accounts import BYTES_PER_STORAGE_UNIT, AccountStore
from engine.errors import Conflict, KnowledgeQuotaExceeded
from kb.documents import (
    Change,
    Document,
    DocumentStore,
    DocumentType,
    DocWrite,
    WriteConflict,
    content_hash,
    estimate_tokens,
    knowledge_units,
    new_document,
    storage_units,
)
from kb.queue import Job, ProcessingQueue

UpsertStatus = Literal["created", "updated", "no_op"]

TOKENS_PER_PAGE = 500
"""What a page of a pdf, docx or html document is estimated to hold (a page of prose runs to
~400-700 tokens): a file's size says little about its text once compressed, so a 23 KB
PDF of 100 pages is estimated as 100 pages, not as 23 KB (issue 21). Processing charges what
the pages really held."""


class Incoming(msgspec.Struct, frozen=True, kw_only=True):
    """One document as accepted, whatever route it came by."""

    external_id: str
    data: bytes
    content_type: DocumentType
    label: str | None = None
    original_file_name: str | None = None
    estimated_pages: int | None = None
    keywords: tuple[str, ...] = ()
    """Embedded with every chunk to help retrieval, never quoted (seed 004's ``tags``)."""
    metadata: dict[str, Any] | None = None
    """Seed 002's page metadata, kept and returned, never embedded; None leaves it as it is."""


class UpsertResult(msgspec.Struct, frozen=True):
    """What an upsert did to one document."""

    external_id: str
    status: UpsertStatus
    re_embedded: bool


class UpsertPlan(msgspec.Struct, frozen=True):
    """What an upsert of one document will write, decided against the record it read."""

    incoming: Incoming
    current: Document | None
    document: Document | None
    """What to write; None for a no-op."""
    units_delta: float
    bytes_delta: int
    content_changed: bool

    def write(self) -> DocWrite | None:
        """The write this plan makes; None for a no-op."""
        if self.document is None:
            return None
        return DocWrite(
            document=self.document,
            units_delta=self.units_delta,
            bytes_delta=self.bytes_delta,
            content=self.incoming.data if self.content_changed else None,
        )


class Ingest:
    def __init__(self, docs: DocumentStore, accounts: AccountStore, queue: ProcessingQueue) -> None:
        self._docs = docs
        self._accounts = accounts
        self._queue = queue

    async def upsert(
        self, account_id: str, items: list[Incoming], *, enqueue: bool
    ) -> list[UpsertResult]:
        currents = await self._docs.get_many(account_id, [i.external_id for i in items])
        now = datetime.now(UTC)
        plans = [
            plan(item, current, now, enqueue) for item, current in zip(items, currents, strict=True)
        ]
        await self._check_plans(account_id, plans)
        jobs = []
        results = []
        for p in plans:
            if p.document is None:
                results.append(UpsertResult(p.incoming.external_id, "no_op", False))
                continue
            p = await self._write(account_id, p, now, enqueue)
            if p.content_changed and enqueue:
                jobs.append(Job(account_id, p.document.external_id, p.document.generation))
            status: UpsertStatus = "created" if p.current is None else "updated"
            results.append(UpsertResult(p.incoming.external_id, status, p.content_changed))
        await self._queue.push(jobs)
        return results

    async def _write(
        self, account_id: str, first: UpsertPlan, now: datetime, enqueue: bool
    ) -> UpsertPlan:
        """Write a plan; returns the plan written. When the worker (or a PATCH) wrote the
        same content's record in between, the upsert is planned again on top of that; when
        someone else changed the content, it is a conflict for the client to retry."""
        written = first

        def replan(current: Document | None) -> DocWrite | None:
            nonlocal written
            if current is not written.current:  # another write came first: plan again
                if (
                    current is None
                    or first.current is None
                    or current.generation != first.current.generation
                ):
                    raise Conflict(
                        f"Document {first.incoming.external_id!r} changed while this request"
                        " ran; retry."
                    )
                written = plan(first.incoming, current, now, enqueue)
            return written.write()  # None: planned again, the record already says it all

        await self._docs.update(account_id, first.incoming.external_id, replan, read=first.current)
        return written

    async def process_staged(self, account_id: str) -> int:
        """Queue every staged document (seed 000's dashboard button); returns how many."""
        listing = await self._docs.listing(account_id)
        staged = [eid for eid, row in listing.rows.items() if row.status == "staged"]
        jobs = []
        for found in await self._docs.get_many(account_id, staged):
            if found is None:
                continue  # deleted meanwhile
            try:
                queued = await self._docs.update(
                    account_id, found.external_id, queue_staged, read=found
                )
            except WriteConflict:
                continue  # still staged: the next call queues it
            if queued is not None:
                jobs.append(Job(account_id, queued.external_id, queued.generation))
        await self._queue.push(jobs)
        return len(jobs)

    async def reembed(self, model: str) -> int:
        """Queue every ready document of every account that was embedded with another
        model than ``model`` (``RAPPORT_EMBEDDING_MODEL`` changed); returns how many. Each
        is pending until the worker has embedded it again (``kb.worker``); retrieval does
        not search it meanwhile. Safe to run from every process at once: each document is
        queued by one of them."""
        jobs = []
        for account in await self._accounts.list():
            listing = await self._docs.listing(account.id)
            ready = [eid for eid, row in listing.rows.items() if row.status == "ready"]
            for found in await self._docs.get_many(account.id, ready):
                if found is None or found.embedding_model == model:
                    continue
                try:
                    queued = await self._docs.update(
                        account.id, found.external_id, requeue_for(model), read=found
                    )
                except WriteConflict:
                    continue  # another writer came first: it queues or re-reads it
                if queued is not None:
                    jobs.append(Job(account.id, queued.external_id, queued.generation))
        await self._queue.push(jobs)
        return len(jobs)

    async def retry(self, account_id: str, current: Document) -> Document:
        """Queue a failed document again (the dashboard's retry): pending, a new generation,
        its error and last processing cleared as a new upload's are, and its estimate
        charged again (the failure refunded it), within the quota. Conflict unless it
        failed."""
        external_id = current.external_id
        retried = retry_failed(current)
        if retried is None:
            raise Conflict(
                f"Document {external_id!r} is {current.processing_status}; only a failed one"
                " is retried."
            )
        await self._check_quota(account_id, retried.units_delta, 0)
        try:
            queued = await self._docs.update(account_id, external_id, retry_failed, read=current)
        except WriteConflict:
            queued = None
        if queued is None:  # deleted, replaced or retried by another request meanwhile
            raise Conflict(f"Document {external_id!r} changed while this request ran; retry.")
        await self._queue.push([Job(account_id, external_id, queued.generation)])
        return queued

    async def _check_plans(self, account_id: str, plans: list[UpsertPlan]) -> None:
        units = sum(p.units_delta for p in plans if p.document is not None)
        size = sum(p.bytes_delta for p in plans if p.document is not None)
        await self._check_quota(account_id, units, size)

    async def _check_quota(self, account_id: str, units: float, size: int) -> None:
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


def queue_staged(current: Document | None) -> DocWrite | None:
    """A staged document, now pending; nothing when it is no longer staged (deleted, or
    queued or replaced by someone else meanwhile)."""
    if current is None or current.processing_status != "staged":
        return None
    return DocWrite(document=msgspec.structs.replace(current, processing_status="pending"))


def retry_failed(current: Document | None) -> DocWrite | None:
    """A failed document, now pending as a new generation with its estimate charged again;
    nothing when it is no longer failed. The worker kept its content (kb.worker)."""
    if current is None or current.processing_status != "failed":
        return None
    retried = msgspec.structs.replace(
        current,
        processing_status="pending",
        generation=current.generation + 1,
        processed_at=None,
        error_message=None,
        charged_units=current.estimated_knowledge_units,
    )
    return DocWrite(document=retried, units_delta=retried.charged_units - current.charged_units)


def requeue_for(model: str) -> Change:
    """A ready document embedded with another model, now pending as a new generation whose
    chunks the worker makes from the live ones; nothing when that no longer holds."""

    def change(current: Document | None) -> DocWrite | None:
        if (
            current is None
            or current.processing_status != "ready"
            or not current.live_generation
            or current.embedding_model == model
        ):
            return None
        requeued = msgspec.structs.replace(
            current, processing_status="pending", generation=current.generation + 1
        )
        return DocWrite(document=requeued)

    return change


def plan(item: Incoming, current: Document | None, now: datetime, enqueue: bool) -> UpsertPlan:
    digest = content_hash(item.content_type, item.data + "\x00".join(item.keywords).encode())
    if current is not None and current.content_hash == digest:
        label = current.label if item.label is None else item.label
        metadata = current.metadata if item.metadata is None else item.metadata
        if label == current.label and metadata == current.metadata:
            return UpsertPlan(item, current, None, 0, 0, False)
        changed = msgspec.structs.replace(current, label=label, metadata=metadata)
        return UpsertPlan(item, current, changed, 0, 0, False)
    estimated = knowledge_units(
        max(
            estimate_tokens(item.content_type, len(item.data)),
            (item.estimated_pages or 0) * TOKENS_PER_PAGE,
        )
    )
    base = current or new_document(item.external_id, now)
    document = msgspec.structs.replace(
        base,
        label=item.label if item.label is not None else base.label,
        metadata=item.metadata if item.metadata is not None else base.metadata,
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
    units_delta, bytes_delta = estimated - old_charge, len(item.data) - old_size
    return UpsertPlan(item, current, document, units_delta, bytes_delta, True)
