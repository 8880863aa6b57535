"""What a reply backend gets and gives, and what the turn pipeline needs from knowledge.

The pipeline in :mod:`engine.turns` does not import the knowledge base: it is handed a
:class:`Retriever` by the wiring in ``api``, and a :class:`ReplyBackend` (an OpenAI-compatible
model, or the embedded responder when none is configured).

A backend tells its consumer what happens as it happens, as typed events: ``started`` when
the model has begun, a ``delta`` for each piece of text, ``sources``, then ``done`` with the
whole reply. ``Emit`` is a plain function, not a coroutine: a backend never waits for its
consumer, so a slow reader (a socket on a poor network) can neither stretch the model's
deadline nor hold a worker once the model has finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec
import numpy as np

from engine.memory import Memory
from engine.personas import Persona

RELATED = 0.3
"""The cosine under which a snippet is not about the message at all, nor its document
(:attr:`Snippet.closeness`): the embedded responder reads no document whose best chunk and
whole both score less, and a message none of whose snippets reaches it is handed no
knowledge (:func:`on_topic`)."""


class Snippet(msgspec.Struct, frozen=True):
    """A piece of the persona's active knowledge, with the document it came from."""

    external_id: str
    text: str
    score: float
    """Cosine similarity to the question: how much the piece is about it."""
    label: str = ""
    """The document's label ("" when it has none)."""
    context: str = ""
    """What the piece is read with: its document's label, heading and first sentence."""
    sentence_vectors: tuple[np.ndarray | None, ...] = ()
    """A vector for each sentence of ``text`` (:func:`engine.sentences.sentences`), made at
    ingest; empty, or None for one sentence, where none was made."""
    document_score: float | None = None
    """Cosine similarity of the piece's whole document to the question (the document's own
    vector, :func:`kb.retrieval.document_vector`); None where retrieval had none."""

    @property
    def closeness(self) -> float:
        """How much the piece, or the document it belongs to, is about the question."""
        return self.score if self.document_score is None else max(self.score, self.document_score)


class Knowledge(msgspec.Struct, frozen=True):
    """What retrieval found for one message."""

    snippets: list[Snippet]
    """The best documents' best chunks: documents best first, each document's chunks
    together, best first."""
    topics: list[str]
    """What the persona's active documents are about, by their labels: what it can help
    with, whatever the message."""
    embedded: dict[str, np.ndarray] = msgspec.field(default_factory=dict)
    """The texts retrieval embedded (the question), by text: the responder compares the
    question with sentences too, and need not embed it again."""


def on_topic(snippets: list[Snippet]) -> list[Snippet]:
    """``snippets`` when one of them, or its whole document, is about the message
    (``RELATED`` or more), else none. Retrieval always finds the least unrelated documents;
    handed to an LLM for a question the knowledge base does not cover, they would be the
    reply's sources, and an off-topic question must be answered with none (issue 25). With
    none, the model is told that no entry matches.

    The whole document counts as it does in the ranking (:func:`kb.retrieval.fuse`): an
    answer spread over a document can be closer to the question than any one of its chunks
    (the Perl FAQ's "I grabbed the sources and tried to compile but ... failed": best chunk
    0.2996, the document 0.38).
    On the evaluation sets this costs the LLM prompt's recall@5 only the answerable questions
    whose every document scores under ``RELATED`` both ways (BENCHMARKS.md, "Replies on
    knowledge bases nobody tuned for")."""
    return snippets if any(s.closeness >= RELATED for s in snippets) else []


class Image(msgspec.Struct, frozen=True):
    data: bytes
    mime: str


class TurnContext(msgspec.Struct, frozen=True, kw_only=True):
    persona: Persona
    memory: Memory
    message: str
    snippets: list[Snippet]
    topics: list[str] = msgspec.field(default_factory=list)
    """What the persona's knowledge covers (:attr:`Knowledge.topics`)."""
    embedded: dict[str, np.ndarray] = msgspec.field(default_factory=dict)
    """Texts already embedded this turn (:attr:`Knowledge.embedded`)."""
    image: Image | None = None
    voice_context: str | None = None
    """A voice note's transcript sent along with a text message (seed 004: extra context)."""
    context: str | None = None
    """Extra context the caller sent with this turn (seed 002's chat ``context``). The LLM
    reads it with the message; the embedded responder answers from knowledge only."""


class Reply(msgspec.Struct, frozen=True):
    text: str
    sources: list[str]
    """external_ids of the documents the reply drew on."""


class ReplyStarted(msgspec.Struct, frozen=True, tag="started"):
    """The model has begun answering (for a remote model: its response has started)."""


class ReplyDelta(msgspec.Struct, frozen=True, tag="delta"):
    text: str


class ReplySources(msgspec.Struct, frozen=True, tag="sources"):
    sources: list[str]


class ReplyDone(msgspec.Struct, frozen=True, tag="done"):
    reply: Reply


ReplyEvent = ReplyStarted | ReplyDelta | ReplySources | ReplyDone
Emit = Callable[[ReplyEvent], None]
"""Receives a backend's events; must not block (queue the event, never await I/O)."""


def ignore(event: object) -> None:
    """The consumer of a caller that only wants the finished reply."""


Embed = Callable[[list[str]], np.ndarray]
"""Texts to unit vectors, one row each (the knowledge base's embedder, handed in by api)."""


class ReplyBackend(Protocol):
    async def reply(self, context: TurnContext, emit: Emit = ignore) -> Reply:
        """Produce the reply, emitting started, each delta, sources and done as they happen.

        Cancelling the call stops the work at once (a remote stream is closed)."""
        ...


class Summariser(Protocol):
    async def summarise(self, summary: str) -> str:
        """A condensed version of a user's memory summary."""
        ...


class Retriever(Protocol):
    async def retrieve(
        self,
        account_id: str,
        active: Sequence[str],
        query: str,
        k: int,
        earlier: Sequence[str] = (),
    ) -> Knowledge:
        """The best chunks of the ``k`` best documents among the ``active`` ones
        (external_ids, read with the turn's other state) that are ready (see
        :attr:`Knowledge.snippets`; none for an empty ``query``), and the topics those
        documents cover. ``earlier``: the documents the conversation's last grounded reply
        drew on (:meth:`engine.memory.Memory.grounded_on`), what a follow-up that points
        back is about."""
        ...
