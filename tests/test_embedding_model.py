"""A change of RAPPORT_EMBEDDING_MODEL re-embeds every document through the processing queue,
and retrieval never mixes two models' vectors: a real redis-server, the embedded Chroma, both
real models."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from engine.accounts import AccountStore
from engine.config import ConfigError, Settings, load_settings
from kb.documents import DocumentStore
from kb.embedder import shared_embedder
from kb.index import VectorIndex, collection_name
from kb.ingest import Incoming, Ingest
from kb.queue import ProcessingQueue
from kb.retrieval import KnowledgeRetriever
from kb.worker import Processor

DOCS = {
    "hours": "Our shop opens at nine every morning. It closes at six.",
    "returns": "Items can be returned within 30 days. Returned items must be unused.",
    "shipping": "Parcels leave the depot at noon. Delivery takes three days.",
}


class Node:
    """What one process with one model holds."""

    def __init__(self, redis: aioredis.Redis, data: Path, model: str) -> None:
        self.settings = Settings(data_dir=str(data), embedding_model=model)  # type: ignore[arg-type]
        self.accounts = AccountStore(redis)
        self.docs = DocumentStore(redis)
        self.queue = ProcessingQueue(redis)
        self.ingest = Ingest(self.docs, self.accounts, self.queue)
        self.index = VectorIndex(self.settings)
        embedder = shared_embedder(model=model)
        self.processor = Processor(
            docs=self.docs, queue=self.queue, index=self.index, embedder=embedder, max_pages=10
        )
        self.retriever = KnowledgeRetriever(docs=self.docs, index=self.index, embedder=embedder)

    async def drain(self) -> int:
        done = 0
        while (job := await self.queue.claim()) is not None:
            prepared = await self.processor.prepare(job)
            if prepared is not None:
                await self.processor.commit([prepared])
                done += 1
        return done


async def test_switching_the_model_re_embeds_everything_and_never_mixes(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    first = Node(redis, tmp_path, "minilm-l6")
    account = await first.accounts.create("shop")
    items = [
        Incoming(external_id=eid, data=body.encode(), content_type="txt", label=eid.title())
        for eid, body in DOCS.items()
    ]
    await first.ingest.upsert(account.id, items, enqueue=True)
    assert await first.drain() == 3
    found = await first.retriever.retrieve(account.id, list(DOCS), "When do you open?", 5)
    assert found.snippets[0].external_id == "hours"
    before = {d.external_id: d for d in await first.docs.get_many(account.id, list(DOCS)) if d}
    assert {d.embedding_model for d in before.values()} == {"minilm-l6"}

    # A process started with the other model: until the worker has embedded a document
    # again, retrieval does not search it (its vectors are the old model's).
    second = Node(redis, tmp_path, "minilm-l3")
    assert await second.ingest.reembed("minilm-l3") == 3
    assert await second.ingest.reembed("minilm-l3") == 0  # queued once, whoever asks
    pending = await second.retriever.retrieve(account.id, list(DOCS), "When do you open?", 5)
    assert pending.snippets == [] and pending.topics == ["Hours", "Returns", "Shipping"]

    assert await second.drain() == 3
    after = await second.docs.get_many(account.id, list(DOCS))
    for doc in after:
        assert doc is not None and doc.processing_status == "ready"
        assert doc.embedding_model == "minilm-l3"
        old = before[doc.external_id]
        assert doc.live_generation == old.generation + 1 and doc.live_chunks == old.live_chunks
        # Nothing charged twice: re-embedding is not a new upload.
        assert doc.charged_units == old.charged_units
    usage = await second.accounts.usage(account.id)
    assert usage.knowledge_units == sum(d.charged_units for d in before.values())

    found = await second.retriever.retrieve(account.id, list(DOCS), "Can I send shoes back?", 5)
    assert found.snippets[0].external_id == "returns"
    # The chunks and their sentence vectors were made by the new model.
    assert len(found.snippets[0].sentence_vectors) == 2
    # Each model's vectors live in a collection of their own, and the old one is emptied.
    client = second.index._open()
    new = client.get_collection(collection_name(account.id, "minilm-l3"))
    old = client.get_collection(collection_name(account.id, "minilm-l6"))
    assert new.count() == sum(d.live_chunks for d in after if d) and old.count() == 0

    # The first model's process, still running, searches nothing it cannot read.
    stale = await first.retriever.retrieve(account.id, list(DOCS), "When do you open?", 5)
    assert stale.snippets == []

    # Back to the first model: embedded again, from the chunks the second one holds.
    assert await first.ingest.reembed("minilm-l6") == 3
    assert await first.drain() == 3
    back = await first.retriever.retrieve(account.id, list(DOCS), "When do you open?", 5)
    assert back.snippets[0].external_id == "hours"
    assert new.count() == 0


async def test_a_document_uploaded_after_the_switch_is_embedded_once(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    node = Node(redis, tmp_path, "minilm-l3")
    account = await node.accounts.create("shop")
    item = Incoming(external_id="hours", data=DOCS["hours"].encode(), content_type="txt")
    await node.ingest.upsert(account.id, [item], enqueue=True)
    assert await node.drain() == 1
    doc = await node.docs.get(account.id, "hours")
    assert doc is not None and doc.embedding_model == "minilm-l3"
    assert await node.ingest.reembed("minilm-l3") == 0


def test_the_model_is_a_setting_that_names_itself() -> None:
    assert load_settings({}).embedding_model == "minilm-l6"
    assert load_settings({"RAPPORT_EMBEDDING_MODEL": "minilm-l3"}).embedding_model == "minilm-l3"
    with pytest.raises(ConfigError, match="RAPPORT_EMBEDDING_MODEL"):
        load_settings({"RAPPORT_EMBEDDING_MODEL": "bert-huge"})


def test_a_model_whose_package_is_missing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import config

    monkeypatch.setitem(config.EMBEDDING_PACKAGES, "minilm-l3", "no-such-package-rapport")
    with pytest.raises(msgspec.ValidationError, match="no-such-package-rapport"):
        Settings(embedding_model="minilm-l3")
