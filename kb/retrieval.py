"""Retrieval for the turn pipeline (the ``engine.replies.Retriever`` protocol).

Only documents that are active for the persona and have a live (fully indexed) generation
are searched: staged, pending-for-the-first-time and failed documents are invisible, and
so is every other account's collection. The persona's active set is read by the turn's
opening script with the rest of its state (:mod:`engine.turn_store`) and handed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio.to_thread

from engine.replies import Snippet
from kb.documents import DocumentStore
from kb.embedder import Embedder
from kb.index import VectorIndex


class KnowledgeRetriever:
    def __init__(
        self,
        *,
        docs: DocumentStore,
        index: VectorIndex,
        embedder: Embedder,
    ) -> None:
        self._docs = docs
        self._index = index
        self._embedder = embedder

    async def retrieve(
        self, account_id: str, active: Sequence[str], query: str, k: int
    ) -> list[Snippet]:
        if not query.strip() or not active:
            return []
        docs = await self._docs.get_many(account_id, list(active))
        ids = [i for d in docs if d is not None for i in d.live_chunk_ids()]
        if not ids:
            return []
        vectors = await anyio.to_thread.run_sync(self._embedder.embed, [query])
        hits = await self._index.query(account_id, vectors[0], k, ids)
        return [Snippet(external_id=h.external_id, text=h.text, score=h.score) for h in hits]
