"""Retrieval for the turn pipeline (the ``engine.replies.Retriever`` protocol).

Only documents that are active for the persona and have a live (fully indexed) generation
are searched: staged, pending-for-the-first-time and failed documents are invisible, and
so is every other account's collection, and a document whose vectors are another
embedding model's. The persona's active set is read by the turn's
opening script with the rest of its state (:mod:`engine.turn_store`) and handed in.

Documents are ranked, not chunks; each comes back as its best chunks (up to
``CHUNKS_PER_DOCUMENT``), best first. A document's score fuses three things, weighed on five
evaluation sets of different shapes and reported on each set out of sample (BENCHMARKS.md,
"Replies on knowledge bases nobody tuned for"; ``bench/tuning.py``):

- its best chunk's cosine to the question (Chroma's search, among the active chunks);
- the cosine of the document's own vector (:func:`document_vector`), which every chunk
  carries: several chunks that each hold part of an answer count for their document;
- its best chunk's BM25 score (:mod:`kb.lexical`) as a share of the best any chunk got, so
  rare words the model blurs still count.

Dense and lexical candidates are both scored: a document found only by its words has its
chunks' vectors read so that it is scored like any other. A snippet's ``score`` stays the
chunk's cosine, the measure of "is this about the question" that the responder's cuts are
set in; the list's order is the fused ranking of the documents.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import anyio.to_thread
import msgspec
import numpy as np

from engine.recent import Recent
from engine.replies import Knowledge, Snippet
from engine.words import refers_back, words
from kb.documents import Document, DocumentStore, chunk_owner
from kb.embedder import Embedder
from kb.index import Hit, VectorIndex
from kb.lexical import LexicalIndex

DENSE_CANDIDATES = 4
"""Chunks asked of Chroma for each document wanted."""
LEXICAL_CANDIDATES = 3
"""Best lexical chunks whose documents are scored even when the dense search missed them."""
CHUNKS_PER_DOCUMENT = 3
"""A document's chunks handed on, best first: the one closest to the question as a whole is
not always the one that holds what is asked ("Which colours does the Umber rain jacket
come in?" is closest to a chunk about the jacket's redesign)."""
DOCUMENT_WEIGHT = 2.0
"""How much the document's own vector counts beside its best chunk's: twice. Chosen on the
evaluation sets with each held out in turn (``bench/tuning.py``, from 0.5, 1 and 2): the
document stands for the whole answer, a chunk for a part of it."""
LEXICAL_WEIGHT = 0.15
"""How much BM25 (as a share of the best score) counts beside the cosines (chosen as
``DOCUMENT_WEIGHT``, from 0.1, 0.15 and 0.2): more lets shared common words outrank
meaning."""
TOPICS_KEPT = 65_536
"""Documents' topics and their words remembered per process (a few hundred bytes each): a
follow-up checks every live document's topic (:func:`follow_up`), which at 10,000 documents
took 100 ms worked out each time and takes a few ms remembered."""
QUESTIONS_KEPT = 4096
"""Question vectors remembered per process (1.5 KB each), least recently used out first:
the same words come back, a widget's starter prompts above all, and embedding a question
is 5 to 7 ms of a turn (BENCHMARKS.md, "Speed after issue 25")."""


def document_vector(chunk_vectors: np.ndarray, whole: np.ndarray | None) -> np.ndarray:
    """The vector a document is known by beside its chunks': ``whole``, the document's bare
    text embedded on its own, when it is one chunk (it fits the model's window with room to
    spare); otherwise the normalised mean of its chunks' vectors, which stands for the whole
    of a document too long to embed at once. Chosen on the evaluation sets, each figure out of
    sample (BENCHMARKS.md, "Replies on knowledge bases nobody tuned for"): a chunk is embedded
    after its context (label, heading, first sentence), which helps a chunk of a long
    document and blurs a short one whose label says nothing of what it answers."""
    chosen = whole if whole is not None else chunk_vectors.mean(axis=0)
    return chosen / max(float(np.linalg.norm(chosen)), 1e-12)


class KnowledgeRetriever:
    def __init__(
        self,
        *,
        docs: DocumentStore,
        index: VectorIndex,
        embedder: Embedder,
        lexical: LexicalIndex | None = None,
    ) -> None:
        self._docs = docs
        self._index = index
        self._embedder = embedder
        self._lexical = lexical or LexicalIndex()
        self._questions: Recent[str, np.ndarray] = Recent(QUESTIONS_KEPT)

    async def retrieve(
        self,
        account_id: str,
        active: Sequence[str],
        query: str,
        k: int,
        earlier: Sequence[str] = (),
    ) -> Knowledge:
        if not active:
            return Knowledge(snippets=[], topics=[])
        found_docs = await self._docs.get_many(account_id, list(active))
        live = [d for d in found_docs if d is not None and d.live_generation]
        knowledge = Knowledge(snippets=[], topics=topics(live))
        # A document still to be embedded again after a change of model is not searched
        # until it is: its vectors are another model's (kb.index).
        docs = [d for d in live if d.embedding_model == self._embedder.model.name]
        if not query.strip() or not docs:
            return knowledge
        if earlier and refers_back(query):
            named = {d.external_id: topic(d.label, d.original_file_name) for d in docs}
            query = follow_up(query, earlier, named)
        asked = self._questions.get(query)
        if asked is None:
            asked = (await anyio.to_thread.run_sync(self._embedder.embed, [query]))[0]
            self._questions.put(query, asked)
        snippets = await self._search(account_id, docs, query, asked, k)
        return msgspec.structs.replace(knowledge, snippets=snippets, embedded={query: asked})

    async def _search(
        self, account_id: str, docs: list[Document], query: str, asked: np.ndarray, k: int
    ) -> list[Snippet]:
        ids = [i for d in docs for i in d.live_chunk_ids()]
        hits = await self._index.query(account_id, asked, k * DENSE_CANDIDATES, ids)
        lexical = await self._lexical_scores(account_id, ids, query)
        found = {h.external_id for h in hits}
        wanted = sorted(lexical, key=lambda i: -lexical[i])[:LEXICAL_CANDIDATES]
        # The whole of a lexical candidate's document is read, so that its best chunk by
        # meaning is known, as for a document the dense search found.
        owners = {chunk_owner(i) for i in wanted} - found
        more = [i for d in docs if d.external_id in owners for i in d.live_chunk_ids()]
        hits += await self._index.chunks(account_id, more, asked)
        labels = {d.external_id: d.label or "" for d in docs}
        return [chunk for found in fuse(hits, lexical, asked, labels)[:k] for chunk in found]

    async def _lexical_scores(
        self, account_id: str, ids: list[str], query: str
    ) -> dict[str, float]:
        missing = self._lexical.missing(account_id, ids)
        if missing:
            for hit in await self._index.chunks(account_id, missing):
                self._lexical.add(account_id, hit.chunk_id, f"{hit.context}\n{hit.text}")
        return self._lexical.search(account_id, ids, query)


_NUMBERING = re.compile(r"\s*(?:#\s*\d+|\(\s*\d+\s*\)|\[\s*\d+\s*\])$")
"""A running number ("Shipping #2", "Shipping (2)"), not a number that names ("Windows 11")."""
_FILE_WORDS = re.compile(r"[-_.\s]+")


@functools.lru_cache(maxsize=TOPICS_KEPT)
def topic(label: str | None, file_name: str | None) -> str:
    """What a document is about, by its label (a running number dropped: "Shipping #2" is
    "Shipping"), or its file name when it has no label or the label is only a running
    number; "" when neither says."""
    name = _NUMBERING.sub("", (label or "").strip()).strip()
    if not name:
        stem = (file_name or "").rsplit(".", 1)[0]
        name = _FILE_WORDS.sub(" ", stem).strip()
    return name


def topics(docs: Sequence[Document]) -> list[str]:
    """What documents are about (:func:`topic`), each once, in the persona's order."""
    found: dict[str, str] = {}
    for doc in docs:
        name = topic(doc.label, doc.original_file_name)
        if name:
            found.setdefault(name.casefold(), name)
    return list(found.values())


def follow_up(query: str, earlier: Sequence[str], named: dict[str, str]) -> str:
    """What a follow-up is searched for: ``query`` with the topic of the document the
    conversation's last grounded reply drew on first (``earlier``, its sources), when the
    query points back ("How heavy is it?", :func:`engine.words.refers_back`), names none of
    the topics itself, and that topic is that document's alone (``named``: the live
    documents' topics by external_id). Asked alone, "How heavy is it?" is closest to
    whichever document says most about weight; after "Tell me about the Lumen tent" it is
    asked as "How heavy is it? Lumen tent". A topic shared by many documents ("Python FAQ")
    names a collection, not a subject, and is not added. Measured by ``bench/followups.py``
    (BENCHMARKS.md, "Follow-up questions")."""
    first = next((named[e] for e in earlier if e in named), "")
    if not first or not refers_back(query):
        return query
    asked = words(query)
    if any(said and said <= asked for said in map(_topic_words, named.values())):
        return query
    if sum(name.casefold() == first.casefold() for name in named.values()) > 1:
        return query
    return f"{query} {first}"


@functools.lru_cache(maxsize=TOPICS_KEPT)
def _topic_words(name: str) -> frozenset[str]:
    return frozenset(words(name))


def fuse(
    hits: Sequence[Hit],
    lexical: dict[str, float],
    asked: np.ndarray,
    labels: dict[str, str],
    *,
    document_weight: float = DOCUMENT_WEIGHT,
    lexical_weight: float = LEXICAL_WEIGHT,
) -> list[list[Snippet]]:
    """The documents, best first, each as its chunks among ``hits``, best first, at most
    ``CHUNKS_PER_DOCUMENT``. (The weights are parameters so that the grounding bench can
    score each part alone.)"""
    chunks: dict[str, dict[str, Hit]] = {}
    for hit in hits:
        chunks.setdefault(hit.external_id, {})[hit.chunk_id] = hit
    top_lexical = max(lexical.values(), default=0.0) or 1.0
    lexical_best: dict[str, float] = {}
    for chunk_id, score in lexical.items():
        owner = chunk_owner(chunk_id)
        lexical_best[owner] = max(lexical_best.get(owner, 0.0), score)

    documents = [
        sorted(held.values(), key=lambda h: (-h.score, h.chunk_id))[:CHUNKS_PER_DOCUMENT]
        for held in chunks.values()
    ]
    # The document's own vector against the question, which every chunk of it carries.
    wholes = {
        best.external_id: None if best.document is None else float(best.document @ asked)
        for best, *_ in documents
    }

    def fused(best: Hit) -> float:
        own = wholes[best.external_id]
        whole = best.score if own is None else own
        dense = (best.score + document_weight * whole) / (1 + document_weight)
        return dense + lexical_weight * lexical_best.get(best.external_id, 0.0) / top_lexical

    documents.sort(key=lambda found: (-fused(found[0]), found[0].external_id))
    return [
        [
            Snippet(
                external_id=h.external_id,
                text=h.text,
                score=h.score,
                label=labels.get(h.external_id, ""),
                context=h.context,
                sentence_vectors=tuple(h.sentences),
                document_score=wholes[h.external_id],
            )
            for h in found
        ]
        for found in documents
    ]
