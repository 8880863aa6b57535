"""The processing worker: extract, chunk, embed, index, then flip the document to ready.

Runs inside each server process, next to the HTTP handlers; the CPU-heavy steps run in
threads (onnxruntime and pypdf release the interpreter for most of their work). The flip
to ``ready`` is a compare-and-set on the document's generation: if the content changed
while this job ran, the job's chunks are dropped and the newer job wins. Old chunks are
deleted only after the flip, and retrieval asks for current generations only, so a reader
sees the old content or the new, never a mix.

A failure of the document itself (a corrupt file, no text) marks it ``failed`` with a
message and refunds its knowledge units. A failure of Redis or Chroma leaves the job's
lease to run out, so the job comes back once they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import anyio.to_thread
import msgspec
import numpy as np

from engine.errors import RapportError, UnavailableError, ValidationFailed
from kb.chunking import chunk_text
from kb.documents import (
    Document,
    DocumentStore,
    LinkEntry,
    WriteConflict,
    knowledge_units,
    storage_units,
)
from kb.embedder import Embedder
from kb.extract import extract
from kb.index import VectorIndex
from kb.queue import Job, ProcessingQueue

log = logging.getLogger("rapport.kb")

EMBED_BATCH = 32
MAX_LINKS = 10  # seed 001: a library holds at most 10 entries
IDLE_POLL_SECONDS = 0.2


class Processor:
    def __init__(
        self,
        *,
        docs: DocumentStore,
        queue: ProcessingQueue,
        index: VectorIndex,
        embedder: Embedder,
        max_pages: int,
    ) -> None:
        self._docs = docs
        self._queue = queue
        self._index = index
        self._embedder = embedder
        self._max_pages = max_pages

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set; never dies of one job's failure."""
        while not stop.is_set():
            try:
                job = await self._queue.claim()
            except UnavailableError:
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), IDLE_POLL_SECONDS)
                continue
            try:
                await self.process(job)
            except UnavailableError:
                log.warning("kb job %s waits for Redis or Chroma", job.encode())
            except Exception:
                log.exception("kb job %s failed unexpectedly", job.encode())
                await self._queue.done(job)

    async def process(self, job: Job) -> None:
        doc = await self._docs.get(job.account_id, job.external_id)
        if doc is None or doc.generation != job.generation or doc.processing_status != "pending":
            await self._queue.done(job)  # deleted, replaced or already done
            return
        data = await self._docs.content(job.account_id, job.external_id)
        try:
            if data is None:
                raise ValidationFailed("The document's content is missing; upload it again.")
            ready = await self._index_content(job, doc, data)
        except UnavailableError:
            raise
        except RapportError as error:
            failed = msgspec.structs.replace(
                doc,
                processing_status="failed",
                error_message=error.message,
                processed_at=datetime.now(UTC),
                charged_units=0,
                live_generation=0,
            )
            if await self._settle(job, doc, failed, units_delta=-doc.charged_units):
                await self._index.delete(job.account_id, {"external_id": doc.external_id})
            return
        tag = doc.chunk_tag(doc.generation)
        if await self._settle(job, doc, ready, units_delta=ready.charged_units - doc.charged_units):
            # Flipped: older generations are no longer read by anyone.
            await self._index.delete(
                job.account_id,
                {"$and": [{"external_id": doc.external_id}, {"doc_gen": {"$ne": tag}}]},
            )
        else:
            await self._index.delete(job.account_id, {"doc_gen": tag})

    async def _index_content(self, job: Job, doc: Document, data: bytes) -> Document:
        extracted = await anyio.to_thread.run_sync(
            lambda: extract(doc.content_type, data, max_pages=self._max_pages)
        )
        chunks = chunk_text(extracted.text)
        if not chunks:
            raise ValidationFailed("The document has no text to index.")
        texts = [chunk.text for chunk in chunks]
        # Keywords ride along into the vectors only: they help a question find the chunk,
        # but the stored text, which replies quote, stays the document's own.
        suffix = f"\nKeywords: {', '.join(doc.keywords)}" if doc.keywords else ""
        embedded = [text + suffix for text in texts]
        vectors: list[np.ndarray] = []
        tokens = 0
        for start in range(0, len(embedded), EMBED_BATCH):
            batch = embedded[start : start + EMBED_BATCH]
            vectors.append(await anyio.to_thread.run_sync(self._embedder.embed, batch))
            tokens += sum(self._embedder.count_tokens(text) for text in batch)
        tag = doc.chunk_tag(doc.generation)
        await self._index.add(
            job.account_id,
            ids=[f"{tag}#{chunk.index}" for chunk in chunks],
            vectors=np.concatenate(vectors, axis=0),
            texts=texts,
            metadatas=[
                {"external_id": doc.external_id, "doc_gen": tag, "chunk": c.index} for c in chunks
            ],
        )
        units = knowledge_units(tokens)
        # Seed 001: links found in the document seed an empty library (source extractor);
        # a library the client curated is left alone.
        links = doc.link_library or [
            LinkEntry(url=url, source="extractor") for url in extracted.links[:MAX_LINKS]
        ]
        return msgspec.structs.replace(
            doc,
            link_library=links,
            processing_status="ready",
            processed_at=datetime.now(UTC),
            knowledge_units=units,
            storage_units=storage_units(doc.content_size_bytes),
            actual_pages=extracted.pages,
            has_extracted_text=extracted.has_extracted_text,
            charged_units=units,
            live_generation=doc.generation,
        )

    async def _settle(self, job: Job, doc: Document, result: Document, units_delta: float) -> bool:
        """Write the job's result if the document is still the one the job read."""
        # Redis failing here propagates before done(): the lease runs out, the job returns.
        try:
            await self._docs.write(
                job.account_id,
                result,
                expected_generation=doc.generation,
                units_delta=units_delta,
                drop_content=True,
            )
            written = True
        except WriteConflict:
            written = False
        await self._queue.done(job)
        return written
