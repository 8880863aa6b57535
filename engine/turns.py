"""One conversation turn: persona, memory and knowledge in; a reply, remembered, out.

Transport-free. :class:`TurnPipeline` makes the reply; the runner in
:mod:`engine.turn_runner` wraps it with what every transport needs (balance, idempotency,
deadline, timing), and the HTTP route and the live session both call the runner.
Events go out through a plain function as they happen (see :mod:`engine.replies`): a
voice note's ``transcript``, then the backend's started, deltas, sources and done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import msgspec

from engine.errors import RapportError
from engine.memory import Memory, MemoryStore
from engine.personas import Persona, PersonaStore
from engine.replies import (
    Image,
    Reply,
    ReplyBackend,
    ReplyEvent,
    Retriever,
    Summariser,
    TurnContext,
    ignore,
    on_topic,
)
from engine.smalltalk import social
from engine.speech import Transcriber

log = logging.getLogger("rapport.turns")

KNOWLEDGE_K = 5


class Voice(msgspec.Struct, frozen=True):
    data: bytes
    mime: str | None


class TurnInput(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    user_id: str
    message: str
    """The text; empty when the voice note is the question."""
    request_id: str
    image: Image | None = None
    voice: Voice | None = None
    persona_id: str | None = None
    """The persona the turn runs as (a live session's); None: the account's default."""
    persona_changes: dict[str, object] | None = None
    """Seed 004's ``persona`` object: merged into the account's default persona first."""
    context: str | None = None
    """Extra context for this turn from the caller (seed 002's chat ``context``)."""


class Transcribed(msgspec.Struct, frozen=True, tag="transcript"):
    """What the voice note said; sent before the reply starts."""

    text: str


TurnEvent = Transcribed | ReplyEvent
EmitTurn = Callable[[TurnEvent], None]


class TurnState(Protocol):
    """What the turn's opening read found (:class:`engine.turn_store.Opened`)."""

    @property
    def persona(self) -> Persona: ...

    @property
    def memory(self) -> Memory: ...

    @property
    def active(self) -> list[str]: ...


class TurnOutcome(msgspec.Struct, frozen=True):
    message: str
    """What the user said: the text, or the voice note's transcript when it is the question."""
    reply: Reply
    transcript: str | None = None


class TurnPipeline:
    def __init__(
        self,
        *,
        personas: PersonaStore,
        memory: MemoryStore,
        retriever: Retriever,
        backend: ReplyBackend,
        transcriber: Transcriber,
        summariser: Summariser | None = None,
    ) -> None:
        self._transcriber = transcriber
        self._personas = personas
        self._memory = memory
        self._retriever = retriever
        self._backend = backend
        self._summariser = summariser
        self._condensing: set[asyncio.Task[None]] = set()

    async def run(self, turn: TurnInput, state: TurnState, emit: EmitTurn = ignore) -> TurnOutcome:
        transcript = None
        message = turn.message
        if turn.voice is not None:
            transcript = (
                await self._transcriber.transcribe(
                    turn.voice.data, turn.voice.mime, account=turn.account_id
                )
            ).text
            emit(Transcribed(transcript))
        # Seed 004: text wins; voice alone is the question, voice beside text is context.
        voice_context = transcript if message else None
        message = message or transcript or ""
        persona = state.persona
        if turn.persona_changes:
            persona = await self._personas.merge(turn.account_id, persona.id, turn.persona_changes)
        # Greetings, thanks and the like are nobody's knowledge: only the rest of the message
        # is searched for ("Hi, I'm Ana. Can I return shoes?" looks for returns).
        question = social(message, persona, state.memory).rest
        knowledge = await self._retriever.retrieve(
            turn.account_id, state.active, question, KNOWLEDGE_K, state.memory.grounded_on()
        )
        context = TurnContext(
            persona=persona,
            memory=state.memory,
            message=message,
            snippets=on_topic(knowledge.snippets),
            topics=knowledge.topics,
            embedded=knowledge.embedded,
            image=turn.image,
            voice_context=voice_context,
            context=turn.context or None,
        )
        reply = await self._backend.reply(context, emit)
        return TurnOutcome(message, reply, transcript)

    def condense_later(self, account_id: str, user_id: str) -> None:
        """Condense a summary that just grew, with the model, without delaying anything."""
        if self._summariser is None:
            return
        task = asyncio.create_task(self._condense(account_id, user_id))
        self._condensing.add(task)
        task.add_done_callback(self._condensing.discard)

    async def _condense(self, account_id: str, user_id: str) -> None:
        assert self._summariser is not None
        try:
            memory = await self._memory.recall(account_id, user_id)
            if memory.summary:
                summary = await self._summariser.summarise(memory.summary)
                await self._memory.rewrite_summary(account_id, user_id, summary)
        except RapportError as error:
            log.warning("memory summary kept as it was: %s", error.message)
