"""Questions a user could ask, picked from a persona's active knowledge: seed 002's
``auto-generate-prompts`` (picked when no model writes them) and the starter prompts a
session's mint carries (issue 24, item 5; DESIGN.md, "Live sessions").

Picked, never written: the questions the documents ask themselves (an FAQ's headings), then
their labels and headings asked about ("What can you tell me about …?"). Every word of a
prompt but that frame is the documents' own, so a prompt never states a fact they do not.

Starter prompts are on the mint's hot path, so they cost no model call, no embedding and no
search: they are picked from the first active documents' first chunks, read from the index
by id, once per version of the persona's knowledge, and kept in the process. The version is
the account's documents version (bumped by every document write, so a document processed,
changed or deleted counts) with the persona's activation version (bumped by every change of
its active set); both are read in the round trip that reads the persona
(:meth:`engine.personas.PersonaStore.get_with`), so an unchanged persona's prompts cost a
mint one dict lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine import keyspace
from engine.recent import Recent
from engine.replies import Snippet
from engine.sentences import sentences
from engine.state import Client, redis_boundary
from kb.activation import Activations
from kb.documents import DocumentStore
from kb.index import VectorIndex

STARTERS = 3
"""Starter prompts a mint carries (issue 24: "up to three")."""
SOURCE_DOCUMENTS = 8
"""Active documents read for starter prompts, in the persona's order: enough for three
prompts, few enough that working them out again after a change stays cheap."""
SOURCE_CHUNKS = 4
"""Of each, its first chunks: where an FAQ's first questions and a document's headings are."""
MAX_QUESTION = 200
PERSONAS_KEPT = 10_000
"""Personas whose starter prompts a process keeps (three short questions each); one not
kept is worked out again from its documents at the next mint."""
MARKS = "#>*- \t"
"""A Markdown heading's, quote's or bullet's marks before a question: not its words."""

Versions = tuple[str | None, ...]


def questions(snippets: Sequence[Snippet]) -> list[str]:
    """Questions from snippets: the questions the documents ask themselves, then their
    labels and headings asked about; each once, in order."""
    asked = [q for snippet in snippets for s in sentences(snippet.text)
             if (q := s.lstrip(MARKS)).endswith("?") and len(q) <= MAX_QUESTION]  # fmt: skip
    named = [line for snippet in snippets
             for line in (snippet.label, *snippet.context.splitlines()[1:2]) if line]  # fmt: skip
    about = [f"What can you tell me about {name.strip().rstrip('.?!')}?" for name in named]
    return list(dict.fromkeys([*asked, *about]))


def version_keys(account_id: str, persona_id: str) -> list[str]:
    """What starter prompts are cached by: the account's documents version and the
    persona's activation version."""
    keys = keyspace.AccountKeys(account_id)
    return [keys.docs_version, keys.persona_docs_version(persona_id)]


class StarterPrompts:
    """Each persona's starter prompts, kept per process at the versions they were picked
    at (as :meth:`kb.documents.DocumentStore.listing` keeps each account's listing)."""

    def __init__(
        self, redis: Client, docs: DocumentStore, activations: Activations, index: VectorIndex
    ) -> None:
        self._redis = redis
        self._docs = docs
        self._activations = activations
        self._index = index
        self._kept: Recent[tuple[str, str], tuple[Versions, list[str]]] = Recent(PERSONAS_KEPT)

    @redis_boundary
    async def of(self, account_id: str, persona_id: str) -> list[str]:
        """The persona's starter prompts, its versions read here (one round trip)."""
        versions = await self._redis.mget(version_keys(account_id, persona_id))
        return await self.at(account_id, persona_id, tuple(versions))

    async def at(self, account_id: str, persona_id: str, versions: Versions) -> list[str]:
        """The persona's starter prompts at ``versions``, read with :func:`version_keys`
        before this call: versions read first, knowledge after, so what is kept is never
        older than the versions it is kept at."""
        kept = self._kept.get((account_id, persona_id))
        if kept is not None and kept[0] == versions:
            return kept[1]
        prompts = await self._pick(account_id, persona_id)
        self._kept.put((account_id, persona_id), (versions, prompts))
        return prompts

    async def _pick(self, account_id: str, persona_id: str) -> list[str]:
        active = await self._activations.active(account_id, persona_id)
        # Only what retrieval reads (kb.retrieval): documents with an indexed generation.
        live = [d for d in await self._docs.get_many(account_id, active)
                if d is not None and d.live_generation][:SOURCE_DOCUMENTS]  # fmt: skip
        labels = {d.external_id: d.label or "" for d in live}
        ids = [i for d in live for i in d.live_chunk_ids()[:SOURCE_CHUNKS]]
        hits = {hit.chunk_id: hit for hit in await self._index.chunks(account_id, ids)}
        snippets = [
            Snippet(hit.external_id, hit.text, 0.0, labels[hit.external_id], hit.context)
            for hit in (hits[i] for i in ids if i in hits)
        ]
        return questions(snippets)[:STARTERS]
