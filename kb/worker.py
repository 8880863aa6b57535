"""The processing worker: extract, chunk, embed, index, then flip the document to ready.

Runs inside each server process, next to the HTTP handlers; the CPU-heavy steps run in
threads (onnxruntime and pypdf release the interpreter for most of their work). The flip
to ``ready`` applies the job's result to the record as it is then, if it still holds the
content the job processed (same generation): a label or library PATCHed meanwhile stays,
and if the content changed, the job's chunks are dropped and the newer job wins. Old
chunks are deleted only after the flip, and retrieval asks for the live generation's
chunks only, so a reader sees the old content or the new, never a mix.

A failure of the document itself (a corrupt file, no text, or processing that outlasts its
time budget, ``RAPPORT_KB_DOCUMENT_SECONDS``) marks it ``failed`` with a message and refunds
its knowledge units; its content stays, for a retry (``kb.ingest.Ingest.retry``). The
budget is checked between steps (after extraction, before each batch of chunks is
embedded), so a document stops at the next step once it is spent. While
the worker holds jobs it renews their leases every third of the lease, so a long document is
never claimed by a second worker (issue 21). A failure of Redis or Chroma leaves the job's
lease to run out, so the job comes back once they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio.to_thread
import msgspec
import numpy as np

from engine.errors import RapportError, UnavailableError, ValidationFailed
from engine.sentences import sentences
from kb.chunking import chunk_contexts, chunk_text, passage
from kb.curation import extracted_links
from kb.documents import (
    Document,
    DocumentStore,
    DocWrite,
    LinkEntry,
    WriteConflict,
    knowledge_units,
    storage_units,
)
from kb.embedder import Embedder
from kb.extract import extract
from kb.index import VectorIndex, pack
from kb.queue import Job, ProcessingQueue
from kb.retrieval import document_vector

log = logging.getLogger("rapport.kb")
T = TypeVar("T")

EMBED_BATCH = 32
IDLE_POLL_SECONDS = 0.2
GROUP_CHUNKS = 48
"""Chunks that fill a group; at ~0.7 ms a chunk plus ~20 ms a call, the call is then a
third of an upsert's cost, not four fifths as for a document of five chunks."""
GROUP_SECONDS = 1.0
"""The longest a prepared document waits for its group to fill while more jobs arrive."""


class Chunks(msgspec.Struct, frozen=True):
    """One document generation's chunks, embedded and ready for the index."""

    ids: list[str]
    vectors: np.ndarray
    texts: list[str]
    metadatas: list[dict[str, Any]]


class JobResult(msgspec.Struct, frozen=True):
    """What a job's first stage decided: the fields that make the document ready (or
    failed), to set if it still holds the content the job ``read``, and for a ready one
    its chunks."""

    job: Job
    read: Document
    changes: dict[str, Any]
    links: list[LinkEntry]
    """Links found in the document: they fill an empty link library (seed 001)."""
    chunks: Chunks | None

    def apply(self, current: Document) -> Document:
        """The stored record with this job's result; a label or library set meanwhile stays,
        and so does a link library the client curated."""
        links = current.link_library or self.links
        return msgspec.structs.replace(current, link_library=links, **self.changes)

    @property
    def size(self) -> int:
        return 0 if self.chunks is None else len(self.chunks.ids)


class OverBudget(ValidationFailed):
    """A document's processing ran past its time budget: it fails, the worker moves on."""


class Processor:
    def __init__(
        self,
        *,
        docs: DocumentStore,
        queue: ProcessingQueue,
        index: VectorIndex,
        embedder: Embedder,
        max_pages: int,
        document_seconds: float = 300.0,
    ) -> None:
        self._docs = docs
        self._queue = queue
        self._index = index
        self._embedder = embedder
        self._max_pages = max_pages
        self._document_seconds = document_seconds
        self._held: set[Job] = set()
        """Jobs claimed and not yet done: their leases are renewed while they are here."""

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set; never dies of one job's failure.

        Jobs are embedded one by one and written to Chroma in groups. A Chroma upsert
        costs ~20 ms of CPU a call whatever its size, plus ~0.7 ms a chunk, so one upsert
        per document would spend on calls about a fifth of what embedding takes
        (BENCHMARKS.md, "Ingest throughput"). A group is written as soon as the queue runs
        dry, holds ``GROUP_CHUNKS`` chunks or is ``GROUP_SECONDS`` old, so a lone upload
        is not kept waiting; it is written while the next group is embedded.
        """
        group: list[JobResult] = []
        started = 0.0
        writing: asyncio.Task[None] | None = None
        renewing = asyncio.create_task(self._renew_leases())
        try:
            while not stop.is_set():
                try:
                    job = await self._queue.claim()
                except UnavailableError:
                    job = None
                if job is not None:
                    self._held.add(job)
                    outcome = await self._guarded([job], self.prepare(job))
                    if outcome is None:
                        self._held.discard(job)
                    else:
                        started = started if group else time.monotonic()
                        group.append(outcome)
                if group and (
                    job is None
                    or sum(o.size for o in group) >= GROUP_CHUNKS
                    or time.monotonic() - started >= GROUP_SECONDS
                ):
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._write(group))
                    group = []
                if job is None:
                    await self._queue.idle(IDLE_POLL_SECONDS)
        finally:
            if writing is not None:
                await writing
            if group:
                await self._write(group)
            renewing.cancel()

    async def _write(self, group: list[JobResult]) -> None:
        jobs = [o.job for o in group]
        try:
            await self._guarded(jobs, self.commit(group))
        finally:
            self._held.difference_update(jobs)

    async def _renew_leases(self) -> None:
        """Keep the leases of the jobs this worker holds from running out, however long a
        document takes, so no other worker claims one while this one works on it."""
        while True:
            await asyncio.sleep(self._queue.lease_seconds / 3)
            with contextlib.suppress(UnavailableError):  # the lease may run out: harmless
                await self._queue.renew(list(self._held))

    async def _guarded(self, jobs: list[Job], step: Awaitable[T]) -> T | None:
        """Run one stage of ``jobs``; a failure ends the jobs, never the worker."""
        try:
            return await step
        except UnavailableError:
            log.warning("kb jobs %s wait for Redis or Chroma", [j.encode() for j in jobs])
        except WriteConflict:
            log.warning("kb jobs %s met constant writes; retried later", [j.encode() for j in jobs])
        except Exception:
            log.exception("kb jobs %s failed unexpectedly", [j.encode() for j in jobs])
            # Not retried: a job that fails the same way each time would come back forever.
            # If Redis is down too, its lease running out brings it back once more.
            with contextlib.suppress(UnavailableError):
                for job in jobs:
                    await self._queue.done(job)
        return None

    async def prepare(self, job: Job) -> JobResult | None:
        """Extract, chunk and embed; None when the job has nothing left to do."""
        doc = await self._docs.get(job.account_id, job.external_id)
        if doc is None or doc.generation != job.generation or doc.processing_status != "pending":
            await self._queue.done(job)  # deleted, replaced or already done
            return None
        data = await self._docs.content(job.account_id, job.external_id)
        deadline = time.monotonic() + self._document_seconds
        try:
            if data is not None:
                return await self._embed_content(job, doc, data, deadline)
            if doc.live_generation:  # queued to be embedded again (kb.ingest.requeue_for)
                return await self._reembed(job, doc, deadline)
            raise ValidationFailed("The document's content is missing; upload it again.")
        except UnavailableError:
            raise
        except RapportError as error:
            failed = {
                "processing_status": "failed",
                "error_message": error.message,
                "processed_at": datetime.now(UTC),
                "charged_units": 0,
                "live_generation": 0,
                "live_chunks": 0,
            }
            return JobResult(job=job, read=doc, changes=failed, links=[], chunks=None)

    async def commit(self, group: list[JobResult]) -> None:
        """Index the group's chunks, one upsert per account (one collection each), flip
        each document, then drop in one delete the chunks nobody reads any more."""
        accounts: dict[str, list[JobResult]] = {}
        for outcome in group:
            accounts.setdefault(outcome.job.account_id, []).append(outcome)
        for account_id, outcomes in accounts.items():
            await self._commit_account(account_id, outcomes)

    async def _commit_account(self, account_id: str, group: list[JobResult]) -> None:
        chunks = [o.chunks for o in group if o.chunks is not None]
        if chunks:
            await self._index.add(
                account_id,
                ids=[i for c in chunks for i in c.ids],
                vectors=np.concatenate([c.vectors for c in chunks], axis=0),
                texts=[t for c in chunks for t in c.texts],
                metadatas=[m for c in chunks for m in c.metadatas],
            )
        unread: list[dict[str, Any]] = []
        for outcome in group:
            doc = outcome.read
            tag = doc.chunk_tag(doc.generation)
            settled = await self._settle(outcome)
            if settled and doc.live_generation and doc.embedding_model != self._embedder.model.name:
                # Its chunks in the collection of the model it was embedded with before are
                # read by nobody now (kb.index: one collection per model).
                await self._index.delete(
                    account_id, {"external_id": doc.external_id}, model=doc.embedding_model
                )
            if outcome.chunks is None:  # failed: none of its chunks is read any more
                if settled:
                    unread.append({"external_id": doc.external_id})
            elif settled:  # flipped: older generations are no longer read by anyone
                unread.append(
                    {"$and": [{"external_id": doc.external_id}, {"doc_gen": {"$ne": tag}}]}
                )
            else:  # a newer write came first: this job's chunks are never read
                unread.append({"doc_gen": tag})
        if unread:
            # Chroma's $or takes two clauses or more.
            await self._index.delete(account_id, unread[0] if len(unread) == 1 else {"$or": unread})

    def _within_budget(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise OverBudget(
                f"Processing took longer than {self._document_seconds:g} seconds"
                " (RAPPORT_KB_DOCUMENT_SECONDS) and was stopped; split the document into"
                " smaller ones and upload them again."
            )

    async def _embed_content(
        self, job: Job, doc: Document, data: bytes, deadline: float
    ) -> JobResult:
        extracted = await anyio.to_thread.run_sync(
            lambda: extract(doc.content_type, data, max_pages=self._max_pages)
        )
        self._within_budget(deadline)
        chunks = chunk_text(extracted.text)
        if not chunks:
            raise ValidationFailed("The document has no text to index.")
        texts = [chunk.text for chunk in chunks]
        contexts = chunk_contexts(extracted.text, chunks, doc.label)
        prepared, tokens = await self._embed(doc, texts, contexts, deadline)
        units = knowledge_units(tokens)
        ready = {
            "processing_status": "ready",
            "processed_at": datetime.now(UTC),
            "knowledge_units": units,
            "storage_units": storage_units(doc.content_size_bytes),
            "actual_pages": extracted.pages,
            "has_extracted_text": extracted.has_extracted_text,
            "charged_units": units,
            "live_generation": doc.generation,
            "live_chunks": len(chunks),
            "embedding_model": self._embedder.model.name,
        }
        links = extracted_links(extracted.links)
        return JobResult(job=job, read=doc, changes=ready, links=links, chunks=prepared)

    async def _reembed(self, job: Job, doc: Document, deadline: float) -> JobResult:
        """The live generation's chunks (text and context, as the collection of the model
        that embedded them holds them), embedded again with this process's model: the
        content itself was dropped once it was first processed. Nothing is charged again."""
        held = await self._index.chunks(
            job.account_id, doc.live_chunk_ids(), model=doc.embedding_model
        )
        if len(held) != doc.live_chunks:
            raise ValidationFailed(
                "The document's chunks are missing from the index; upload it again."
            )
        held.sort(key=lambda hit: int(hit.chunk_id.rsplit("#", 1)[1]))
        prepared, _ = await self._embed(
            doc, [h.text for h in held], [h.context for h in held], deadline
        )
        ready = {
            "processing_status": "ready",
            "processed_at": datetime.now(UTC),
            "live_generation": doc.generation,
            "live_chunks": len(held),
            "embedding_model": self._embedder.model.name,
        }
        return JobResult(job=job, read=doc, changes=ready, links=[], chunks=prepared)

    async def _embed(
        self, doc: Document, texts: list[str], contexts: list[str], deadline: float
    ) -> tuple[Chunks, int]:
        """One generation's chunks embedded, with their sentences' and their document's
        vectors, ready for the index; and the tokens the model saw for the chunks.

        Each sentence is embedded on its own, once a document (chunks overlap), shortest
        first so that a batch pads little: the responder picks the sentence to quote by
        these vectors, and vectors pooled from the chunk's own pass instead, which cost
        nothing more, carry so much of the chunk that they pick the right sentence far
        less often (BENCHMARKS.md, "Grounding")."""
        embedded = [passage(c, t, doc.keywords)[0] for c, t in zip(contexts, texts, strict=True)]
        vectors, tokens = await self._embed_batches(embedded, deadline)
        said = [sentences(text) for text in texts]
        # A document of one chunk is embedded once more without its context (with its
        # keywords, as its chunk), in the sentences' batches (it is often one of them): its
        # own vector (kb.retrieval.document_vector).
        whole = [passage("", texts[0], doc.keywords)[0]] if len(texts) == 1 else []
        unique = sorted({*(s for found in said for s in found), *whole}, key=len)
        embedded_units = dict(
            zip(unique, (await self._embed_batches(unique, deadline))[0], strict=True)
        )
        dimensions = self._embedder.model.dimensions
        own = embedded_units[whole[0]] if whole else None
        document = pack([document_vector(vectors, own)], dimensions)
        tag = doc.chunk_tag(doc.generation)
        prepared = Chunks(
            ids=[doc.chunk_id(doc.generation, index) for index in range(len(texts))],
            vectors=vectors,
            texts=texts,
            metadatas=[
                {
                    "external_id": doc.external_id,
                    "doc_gen": tag,
                    "chunk": index,
                    "context": context,
                    "document": document,
                    "sentences": pack([embedded_units[s] for s in found], dimensions),
                }
                for index, (context, found) in enumerate(zip(contexts, said, strict=True))
            ],
        )
        return prepared, tokens

    async def _embed_batches(self, texts: list[str], deadline: float) -> tuple[np.ndarray, int]:
        """``texts`` embedded ``EMBED_BATCH`` at a time, off the event loop, within the
        document's time budget."""
        vectors: list[np.ndarray] = []
        tokens = 0
        for start in range(0, len(texts), EMBED_BATCH):
            self._within_budget(deadline)
            batch = texts[start : start + EMBED_BATCH]
            embedded, seen = await anyio.to_thread.run_sync(self._embedder.embed_counting, batch)
            vectors.append(embedded)
            tokens += seen
        if not vectors:
            return np.zeros((0, self._embedder.model.dimensions), dtype=np.float32), 0
        return np.concatenate(vectors, axis=0), tokens

    async def _settle(self, outcome: JobResult) -> bool:
        """Apply the job's result to the stored record if that still holds the content the
        job processed; False when newer content came first. A PATCH that lands in between
        makes the write conflict: the result is applied again on top of it."""
        job, read = outcome.job, outcome.read

        def settled(current: Document | None) -> DocWrite | None:
            if current is None or current.generation != read.generation:
                return None  # deleted or replaced: newer content came first
            result = outcome.apply(current)
            return DocWrite(
                document=result,
                units_delta=result.charged_units - current.charged_units,
                # A failed document keeps its content, so that it can be retried
                # (kb.ingest.retry_failed) without uploading it again.
                drop_content=outcome.chunks is not None,
            )

        # Redis failing here, or the record still changing after every try (WriteConflict),
        # propagates before done(): the lease runs out and the job comes back.
        current = await self._docs.get(job.account_id, job.external_id)
        written = await self._docs.update(job.account_id, job.external_id, settled, read=current)
        await self._queue.done(job)
        return written is not None
