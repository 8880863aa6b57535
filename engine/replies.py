"""What a reply backend gets and gives, and what the turn pipeline needs from knowledge.

The pipeline in :mod:`engine.turns` does not import the knowledge base: it is handed a
:class:`Retriever` by the wiring in ``api``, and a :class:`ReplyBackend` (an OpenAI-compatible
model, or the embedded responder when none is configured).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
import numpy as np

from engine.memory import Memory
from engine.personas import Persona


class Snippet(msgspec.Struct, frozen=True):
    """A piece of the persona's active knowledge, with the document it came from."""

    external_id: str
    text: str
    score: float


class Image(msgspec.Struct, frozen=True):
    data: bytes
    mime: str


class TurnContext(msgspec.Struct, frozen=True, kw_only=True):
    persona: Persona
    memory: Memory
    message: str
    snippets: list[Snippet]
    image: Image | None = None
    voice_context: str | None = None
    """A voice note's transcript sent along with a text message (seed 004: extra context)."""


class Reply(msgspec.Struct, frozen=True):
    text: str
    sources: list[str]
    """external_ids of the documents the reply drew on."""


OnDelta = Callable[[str], Awaitable[None]]
Embed = Callable[[list[str]], np.ndarray]
"""Texts to unit vectors, one row each (the knowledge base's embedder, handed in by api)."""


class ReplyBackend(Protocol):
    async def reply(self, context: TurnContext, on_delta: OnDelta | None = None) -> Reply:
        """Produce the reply, passing each piece of text to ``on_delta`` as it is made."""
        ...


class Summariser(Protocol):
    async def summarise(self, summary: str) -> str:
        """A condensed version of a user's memory summary."""
        ...


class Retriever(Protocol):
    async def retrieve(self, account_id: str, persona_id: str, query: str, k: int) -> list[Snippet]:
        """The ``k`` best snippets among the persona's active, ready documents."""
        ...
