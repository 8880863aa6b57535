"""The processing worker's group commit, against a real redis-server, the real embedded
Chroma and the real embedder: one group mixes two accounts, a ready document, a failed one
and one whose content changed between embedding and writing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from engine.accounts import AccountStore
from engine.config import Settings
from engine.state import Client
from kb.documents import Document, DocumentStore, LinkEntry, WriteConflict
from kb.embedder import shared_embedder
from kb.index import VectorIndex
from kb.ingest import Incoming, Ingest
from kb.queue import ProcessingQueue
from kb.worker import JobResult, Processor
from tests.conftest import ON_BOTH


@pytest.fixture
def redis(state: Client) -> Client:
    """The documents' optimistic writes (WATCH/MULTI) and the queue's scripts run on one Redis
    and on the cluster (ON_BOTH)."""
    return state


def text(external_id: str, body: str) -> Incoming:
    return Incoming(external_id=external_id, data=body.encode(), content_type="txt")


async def hits(index: VectorIndex, account_id: str, query: str, chunk_id: str) -> list[str]:
    vector = shared_embedder().embed([query])[0]
    return [h.text for h in await index.query(account_id, vector, 5, [chunk_id])]


@ON_BOTH
async def test_a_mixed_group_settles_each_document_on_its_own(
    redis: Client, tmp_path: Path
) -> None:
    accounts = AccountStore(redis)
    first, second = await accounts.create("first"), await accounts.create("second")
    docs, queue = DocumentStore(redis), ProcessingQueue(redis)
    ingest = Ingest(docs, accounts, queue)
    index = VectorIndex(Settings(data_dir=str(tmp_path)))
    processor = Processor(
        docs=docs, queue=queue, index=index, embedder=shared_embedder(), max_pages=10
    )
    await ingest.upsert(
        first.id,
        [
            text("kept", "Our shop opens at nine every morning."),
            text("blank", "   \n  "),
            text("moved", "The old office was on Harbour Street."),
        ],
        enqueue=True,
    )
    await ingest.upsert(second.id, [text("kept", "Parcels leave the depot at noon.")], enqueue=True)

    group: list[JobResult] = []
    while (job := await queue.claim()) is not None:
        prepared = await processor.prepare(job)
        assert prepared is not None
        group.append(prepared)
    assert len(group) == 4
    # "moved" changes after it was embedded: its group's write must lose to the new one.
    await ingest.upsert(first.id, [text("moved", "The office is on Quay Road now.")], enqueue=True)
    await processor.commit(group)

    kept, blank, moved = await docs.get_many(first.id, ["kept", "blank", "moved"])
    assert kept is not None and kept.processing_status == "ready"
    assert blank is not None and blank.processing_status == "failed" and blank.error_message
    assert moved is not None and moved.processing_status == "pending"
    # Both accounts have a "kept@1"; each collection holds only its own account's chunks.
    assert await hits(index, first.id, "opening time", kept.chunk_id(1, 0)) == [
        "Our shop opens at nine every morning."
    ]
    # The losing generation's chunks were dropped in the group's delete.
    assert await hits(index, first.id, "office", moved.chunk_id(1, 0)) == []
    other = await docs.get(second.id, "kept")
    assert other is not None and other.processing_status == "ready"
    assert await hits(index, second.id, "depot", other.chunk_id(1, 0)) == [
        "Parcels leave the depot at noon."
    ]

    # The worker loop picks up the newer job and writes it on its own.
    stop = asyncio.Event()
    running = asyncio.create_task(processor.run(stop))
    for _ in range(200):
        moved = await docs.get(first.id, "moved")
        if moved is not None and moved.processing_status == "ready":
            break
        await asyncio.sleep(0.05)
    stop.set()
    await running
    assert moved is not None and moved.processing_status == "ready"
    assert await hits(index, first.id, "office", moved.chunk_id(2, 0)) == [
        "The office is on Quay Road now."
    ]
    assert await queue.waiting() == 0


async def test_an_upsert_larger_than_chromas_batch_limit_is_split(tmp_path: Path) -> None:
    index = VectorIndex(Settings(data_dir=str(tmp_path)))
    count = index._open().get_max_batch_size() + 10
    vectors = np.random.default_rng(1).normal(size=(count, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await index.add(
        "big",
        ids=[f"doc@1#{i}" for i in range(count)],
        vectors=vectors,
        texts=[f"chunk {i}" for i in range(count)],
        metadatas=[{"external_id": "doc", "doc_gen": "doc@1", "chunk": i} for i in range(count)],
    )
    last = await index.query("big", vectors[-1], 1, [f"doc@1#{count - 1}"])
    assert [h.text for h in last] == [f"chunk {count - 1}"]


@ON_BOTH
async def test_a_patch_while_processing_is_kept_and_a_stale_write_conflicts(
    redis: Client, tmp_path: Path
) -> None:
    accounts = AccountStore(redis)
    account = await accounts.create("patching")
    docs, queue = DocumentStore(redis), ProcessingQueue(redis)
    ingest = Ingest(docs, accounts, queue)
    processor = Processor(
        docs=docs,
        queue=queue,
        index=VectorIndex(Settings(data_dir=str(tmp_path))),
        embedder=shared_embedder(),
        max_pages=10,
    )
    await ingest.upsert(
        account.id, [text("faq", "See https://example.com/help for more.")], enqueue=True
    )
    job = await queue.claim()
    assert job is not None
    prepared = await processor.prepare(job)
    assert prepared is not None
    # A PATCH lands after the job read the record and before it writes the result.
    read = await docs.get(account.id, "faq")
    assert read is not None
    curated = [LinkEntry(url="https://example.com/curated")]
    await docs.write(
        account.id,
        msgspec.structs.replace(read, label="Help", link_library=curated),
        replacing=read,
    )
    with pytest.raises(WriteConflict):  # the record the PATCH replaced is stale now
        await docs.write(account.id, msgspec.structs.replace(read, label="Lost"), replacing=read)
    await processor.commit([prepared])
    done = await docs.get(account.id, "faq")
    assert done is not None and done.processing_status == "ready"
    assert done.label == "Help" and done.link_library == curated  # not the extractor's link

    # An upsert that read the record before the worker flipped it is planned again on top.
    stale = await docs.get(account.id, "faq")
    assert stale is not None
    await ingest.upsert(account.id, [text("faq", "Ask us anything.")], enqueue=True)
    newest = await docs.get(account.id, "faq")
    assert newest is not None and newest.generation == stale.generation + 1
    assert newest.label == "Help" and newest.processing_status == "pending"


async def test_a_query_naming_chunks_that_are_gone_searches_the_rest(tmp_path: Path) -> None:
    index = VectorIndex(Settings(data_dir=str(tmp_path)))
    vectors = shared_embedder().embed(["Opening hours are nine to five.", "We ship daily."])
    await index.add(
        "gone",
        ids=["hours@2#0", "ship@1#0"],
        vectors=vectors,
        texts=["Opening hours are nine to five.", "We ship daily."],
        metadatas=[
            {"external_id": "hours", "doc_gen": "hours@2", "chunk": 0},
            {"external_id": "ship", "doc_gen": "ship@1", "chunk": 0},
        ],
    )
    # "hours@1#0" was the old generation's chunk, deleted after a reader saw the document.
    found = await index.query("gone", vectors[0], 5, ["hours@1#0", "hours@2#0", "ship@1#0"])
    assert [h.external_id for h in found] == ["hours", "ship"]
    assert await index.query("gone", vectors[0], 5, ["hours@1#0"]) == []


@ON_BOTH
async def test_queueing_staged_documents_survives_a_patch_in_between(
    redis: Client,
) -> None:
    accounts = AccountStore(redis)
    account = await accounts.create("staging")
    docs, queue = DocumentStore(redis), ProcessingQueue(redis)
    ingest = Ingest(docs, accounts, queue)
    await ingest.upsert(account.id, [text("menu", "Soup of the day: tomato.")], enqueue=False)
    write = docs.write
    patched: list[str] = []

    async def write_after_a_patch(account_id: str, doc: Document, **options: Any) -> Document:
        if not patched:  # a PATCH lands between the read and the first write
            current = await docs.get(account_id, doc.external_id)
            assert current is not None
            relabelled = msgspec.structs.replace(current, label="Menu")
            await write(account_id, relabelled, replacing=current)
            patched.append(doc.external_id)
        return await write(account_id, doc, **options)

    docs.write = write_after_a_patch  # type: ignore[method-assign]
    assert await ingest.process_staged(account.id) == 1
    queued = await docs.get(account.id, "menu")
    assert queued is not None and queued.processing_status == "pending" and queued.label == "Menu"
    assert await queue.waiting() == 1
