"""One conversation turn: persona, memory and knowledge in; a reply, remembered, out.

Transport-free: the HTTP route and the WebSocket session both call :meth:`TurnPipeline.run`
and differ only in whether they pass ``on_delta`` to stream the reply.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import msgspec

from engine.accounts import AccountStore
from engine.errors import InternalError, RapportError
from engine.memory import MemoryStore, Turn
from engine.personas import Persona, PersonaStore
from engine.replies import (
    Image,
    OnDelta,
    Reply,
    ReplyBackend,
    Retriever,
    Summariser,
    TurnContext,
)
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
    persona_changes: dict[str, object] | None = None
    """Seed 004's ``persona`` object: merged into the account's default persona first."""


class TurnOutcome(msgspec.Struct, frozen=True):
    reply: Reply
    transcript: str | None = None


class TurnPipeline:
    def __init__(
        self,
        *,
        accounts: AccountStore,
        personas: PersonaStore,
        memory: MemoryStore,
        retriever: Retriever,
        backend: ReplyBackend,
        transcriber: Transcriber,
        summariser: Summariser | None = None,
    ) -> None:
        self._transcriber = transcriber
        self._accounts = accounts
        self._personas = personas
        self._memory = memory
        self._retriever = retriever
        self._backend = backend
        self._summariser = summariser
        self._condensing: set[asyncio.Task[None]] = set()

    async def default_persona(self, account_id: str) -> Persona:
        account = await self._accounts.get(account_id)
        if account.default_persona_id is None:
            raise InternalError(f"Account {account_id} has no default persona.")
        return await self._personas.get(account_id, account.default_persona_id)

    async def run(self, turn: TurnInput, on_delta: OnDelta | None = None) -> TurnOutcome:
        transcript = None
        message = turn.message
        if turn.voice is not None:
            transcript = (await self._transcriber.transcribe(turn.voice.data, turn.voice.mime)).text
        # Seed 004: text wins; voice alone is the question, voice beside text is context.
        voice_context = transcript if message else None
        message = message or transcript or ""
        persona = await self.default_persona(turn.account_id)
        if turn.persona_changes:
            persona = await self._personas.merge(turn.account_id, persona.id, turn.persona_changes)
        memory = await self._memory.recall(turn.account_id, turn.user_id)
        snippets = await self._retriever.retrieve(turn.account_id, persona.id, message, KNOWLEDGE_K)
        context = TurnContext(
            persona=persona,
            memory=memory,
            message=message,
            snippets=snippets,
            image=turn.image,
            voice_context=voice_context,
        )
        reply = await self._backend.reply(context, on_delta)
        folded = await self._memory.remember(
            turn.account_id,
            turn.user_id,
            Turn(
                at=datetime.now(UTC),
                user=message,
                reply=reply.text,
                request_id=turn.request_id,
                sources=reply.sources,
            ),
        )
        if folded and self._summariser is not None:
            # Condensing the summary never delays the reply; a failure keeps the plain one.
            task = asyncio.create_task(self._condense(turn.account_id, turn.user_id))
            self._condensing.add(task)
            task.add_done_callback(self._condensing.discard)
        return TurnOutcome(reply, transcript)

    async def _condense(self, account_id: str, user_id: str) -> None:
        assert self._summariser is not None
        try:
            memory = await self._memory.recall(account_id, user_id)
            if memory.summary:
                summary = await self._summariser.summarise(memory.summary)
                await self._memory.rewrite_summary(account_id, user_id, summary)
        except RapportError as error:
            log.warning("memory summary kept as it was: %s", error.message)
