"""Lexical retrieval: Okapi BM25 over a persona's active chunks, held in process memory.

Dense vectors find a chunk that says the same thing in other words; they miss a chunk that
shares the question's rare words ("GIL", "lambda", a product name) but little of its meaning
as the model sees it. BM25 finds those, and the retriever fuses both (``kb.retrieval``).

Chroma 1.5's own BM25 ranking (sparse vectors and ``Collection.search``) runs only on its
distributed and hosted servers, not on the embedded store or a single-node server, and
rank-bm25 or bm25s index a fixed corpus. Here the corpus is whatever a persona has active
at the moment of the question, so the statistics (document count, lengths, document
frequencies) are taken over exactly the chunks asked about, from per-chunk term counts.

Those counts are made once per chunk, from the chunk's stored text and context, the first
time a question touches it; chunk ids name a document generation, so a count never goes
stale. They are kept per process, least recently used first out, up to ``capacity`` chunks.
Words are those of :mod:`engine.words`, the rule the responder quotes by.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence

from engine.words import terms

K1 = 1.2
B = 0.75
"""Okapi BM25's usual constants (Robertson and Zaragoza, "The Probabilistic Relevance
Framework: BM25 and Beyond", 2009, section 3.5)."""
CAPACITY = 200_000
"""Chunks whose counts are kept: ~1 KB each for 120-word chunks, so ~200 MB at most."""

Key = tuple[str, str]
"""(account_id, chunk_id)."""


class LexicalIndex:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._counts: OrderedDict[Key, Counter[str]] = OrderedDict()
        self._lengths: dict[Key, int] = {}
        self._postings: dict[str, dict[str, dict[str, int]]] = {}
        """account_id -> term -> chunk_id -> count."""

    def missing(self, account_id: str, chunk_ids: Iterable[str]) -> list[str]:
        return [i for i in chunk_ids if (account_id, i) not in self._counts]

    def add(self, account_id: str, chunk_id: str, text: str) -> None:
        key = (account_id, chunk_id)
        if key in self._counts:
            return
        counts = Counter(terms(text))
        self._counts[key] = counts
        self._lengths[key] = sum(counts.values())
        postings = self._postings.setdefault(account_id, {})
        for term, count in counts.items():
            postings.setdefault(term, {})[chunk_id] = count
        while len(self._counts) > self._capacity:
            self._evict()

    def _evict(self) -> None:
        (account_id, chunk_id), counts = self._counts.popitem(last=False)
        del self._lengths[(account_id, chunk_id)]
        postings = self._postings[account_id]
        for term in counts:
            held = postings[term]
            del held[chunk_id]
            if not held:
                del postings[term]
        if not postings:
            del self._postings[account_id]

    def search(self, account_id: str, chunk_ids: Sequence[str], query: str) -> dict[str, float]:
        """BM25 score of every chunk among ``chunk_ids`` that holds a word of ``query``;
        chunks not counted yet (see :meth:`missing`) are left out."""
        held = [i for i in chunk_ids if (account_id, i) in self._counts]
        for chunk_id in held:
            self._counts.move_to_end((account_id, chunk_id))
        if not held:
            return {}
        asked = set(held)
        average = sum(self._lengths[(account_id, i)] for i in held) / len(held)
        postings = self._postings.get(account_id, {})
        scores: dict[str, float] = {}
        for term in set(terms(query)):
            found = {i: n for i, n in postings.get(term, {}).items() if i in asked}
            if not found:
                continue
            idf = math.log(1 + (len(held) - len(found) + 0.5) / (len(found) + 0.5))
            for chunk_id, count in found.items():
                norm = K1 * (1 - B + B * self._lengths[(account_id, chunk_id)] / average)
                scores[chunk_id] = scores.get(chunk_id, 0.0) + idf * count * (K1 + 1) / (
                    count + norm
                )
        return scores
