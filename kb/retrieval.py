"""Retrieval for the turn pipeline (the ``engine.replies.Retriever`` protocol).

The knowledge documents API and its Chroma index come next; until they do, no persona has
any active document, and this is the whole truth of what a retriever can return.
"""

from __future__ import annotations

from engine.replies import Snippet


class NoKnowledgeYet:
    async def retrieve(self, account_id: str, persona_id: str, query: str, k: int) -> list[Snippet]:
        return []
