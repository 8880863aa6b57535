"""The turn runner: one conversation turn as every transport runs it.

``POST /api/v1/conversation`` and the live session call :meth:`TurnRunner.run` the same way;
they differ only in how they read the input and render what comes out. Around the pipeline
of :mod:`engine.turns` the runner does, in this order, each step before anything costlier:

1. opens the turn in one Redis round trip (:mod:`engine.turn_store`): counts the API key's
   rate window when asked to, claims the idempotency key if one is given (a repeat gets
   the kept outcome back, :class:`Answer` with ``replayed``, and runs nothing), spends one
   request of the balance (seed 004: 402 ``no_requests`` at zero), reads the persona, the
   user's memory and the persona's active documents;
2. waits for a worker and runs the pipeline under the deadline (:mod:`engine.workers`);
3. closes the turn in one more round trip: remembers it, keeps the outcome for the key,
   and reports the latency breakdown.

A failure gives the request back and keeps the outcome only when retrying could not change
it (a 4xx other than 402 and 429, e.g. a voice note with no speech): a 5xx, a 429 or a 402
releases the key, so the retry the key exists for can succeed.

Cancelling the call (an asyncio cancel: a client's ``reply.cancel``, a socket gone) stops
the work at once, closing the model's stream; the request stays spent, since the model did
work for it; the part of the reply already said is remembered, marked cancelled; and the
key is released. A cancel that comes after the reply was finished changes nothing: the
turn is remembered whole. The deadline covers the work, not the consumer: events go out
through a function that never waits (see :mod:`engine.replies`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from engine.errors import Failure, RapportError, Replayed
from engine.idempotency import IdempotencyKey
from engine.memory import Turn, TurnStatus
from engine.ratelimit import Quota
from engine.replies import Reply, ReplyDelta, ReplyDone, ignore
from engine.turn_store import Budget, Opened, Replay, TurnStore
from engine.turns import EmitTurn, Transcribed, TurnEvent, TurnInput, TurnPipeline
from engine.workers import WorkerPool


class Latency(msgspec.Struct, frozen=True):
    """Seed 004's ``latency_breakdown``, whole milliseconds."""

    queue_ms: int
    worker_ms: int
    total_ms: int


class TurnResult(msgspec.Struct, frozen=True, tag="result"):
    """A turn that produced a reply."""

    request_id: str
    reply: str
    sources: list[str]
    latency: Latency
    transcript: str | None = None
    status: TurnStatus = "completed"


class TurnFailure(msgspec.Struct, frozen=True, tag="failure"):
    """A turn that failed in a way retrying cannot change, as kept for its key."""

    request_id: str
    failure: str
    """The name of the :class:`~engine.errors.Failure` row."""
    message: str
    errors: dict[str, list[str]] | None = None

    @classmethod
    def of(cls, request_id: str, error: RapportError) -> TurnFailure:
        return cls(request_id, error.failure.name, error.message, error.errors)

    def error(self) -> RapportError:
        """The failure as an exception of its row, to render like a live one."""
        return Replayed(Failure[self.failure], self.message, errors=self.errors)


TurnRecord = TurnResult | TurnFailure


class Answer(msgspec.Struct, frozen=True):
    record: TurnRecord
    replayed: bool = False
    """Whether the record was kept from an earlier request with the same key."""
    quota: Quota | None = None
    """The API key's rate window, when the runner counted the request against it."""
    budget_left: int | None = None
    """What the transport's budget has left after this turn (None: unlimited or none)."""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(TurnRecord).decode


def kept(failure: Failure) -> bool:
    """Whether a failed outcome is final: retrying the same request could not change it."""
    return failure.status < 500 and failure.status not in (402, 429)


class _Progress:
    """What a running turn has said so far, for the record of a cancelled one."""

    def __init__(self, message: str, emit: EmitTurn) -> None:
        self.message = message
        self.parts: list[str] = []
        self.reply: Reply | None = None
        self._emit = emit

    def emit(self, event: TurnEvent) -> None:
        match event:
            case Transcribed(text) if not self.message:
                self.message = text
            case ReplyDelta(text):
                self.parts.append(text)
            case ReplyDone(reply):
                self.reply = reply
        self._emit(event)

    def turn(self, turn: TurnInput) -> Turn | None:
        """The turn to remember when the run stops here: the whole reply once it was
        done, else what was said of it, marked cancelled; nothing before the user's words
        are known (a voice note still being transcribed)."""
        if not self.message:
            return None
        if self.reply is not None:
            return remembered(turn, self.message, self.reply, "completed")
        said = Reply(text="".join(self.parts).strip(), sources=[])
        return remembered(turn, self.message, said, "cancelled")


def remembered(turn: TurnInput, message: str, reply: Reply, status: TurnStatus) -> Turn:
    return Turn(
        at=datetime.now(UTC),
        user=message,
        reply=reply.text,
        request_id=turn.request_id,
        sources=reply.sources,
        status=status,
    )


class TurnRunner:
    def __init__(
        self,
        *,
        store: TurnStore,
        pipeline: TurnPipeline,
        pool: WorkerPool,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._pool = pool
        self._clock = clock
        self._finishing: set[asyncio.Future[bool]] = set()
        """Closing writes that outlive a cancelled caller, kept referenced until done."""

    async def run(
        self,
        turn: TurnInput,
        *,
        emit: EmitTurn = ignore,
        key: IdempotencyKey | None = None,
        key_slot: str | None = None,
        budget: Budget | None = None,
        started: float | None = None,
    ) -> Answer:
        """Run one turn. ``key_slot``: count the request against the rate window of the API
        key in that slot (the HTTP API counts per request; a live session does not);
        ``budget``: the transport's own budget (a live session's interactions), charged as
        the turn opens and given back with the request when the turn fails;
        ``started``: when the transport received it (``perf_counter``), from which
        ``total_ms`` counts. Raises the turn's failure as a RapportError."""
        started = self._clock() if started is None else started
        opened = await self._store.open(
            turn.account_id,
            turn.user_id,
            key_slot=key_slot,
            idempotency_key=key,
            budget=budget,
            persona_id=turn.persona_id,
        )
        if isinstance(opened, Replay):
            return Answer(_decode(opened.outcome), replayed=True, quota=opened.quota)
        progress = _Progress(turn.message, emit)
        try:
            done = await self._pool.run(lambda: self._pipeline.run(turn, opened, progress.emit))
        except RapportError as error:
            outcome = (
                _encode(TurnFailure.of(turn.request_id, error)) if kept(error.failure) else None
            )
            await self._close(turn, opened, None, outcome, refund=True)
            raise
        except asyncio.CancelledError:
            # Stopped by the caller: the request stays spent (the model worked for it), the
            # key is released.
            await self._close(turn, opened, progress.turn(turn), None, refund=False)
            raise
        outcome = done.result
        result = TurnResult(
            request_id=turn.request_id,
            reply=outcome.reply.text,
            sources=outcome.reply.sources,
            latency=Latency(
                queue_ms=round(done.timing.queue_ms),
                worker_ms=round(done.timing.worker_ms),
                total_ms=round((self._clock() - started) * 1000),
            ),
            transcript=outcome.transcript,
        )
        remember = remembered(turn, outcome.message, outcome.reply, "completed")
        await self._close(turn, opened, remember, _encode(result), refund=False)
        return Answer(result, quota=opened.quota, budget_left=opened.budget_left)

    async def _close(
        self,
        turn: TurnInput,
        opened: Opened,
        remember: Turn | None,
        outcome: bytes | None,
        *,
        refund: bool,
    ) -> None:
        """The closing write, run to its end even if the caller is cancelled meanwhile: once
        a reply exists the turn has happened, and memory, key and balance must say so."""
        task = asyncio.ensure_future(
            self._store.close(
                turn.account_id,
                turn.user_id,
                turn=remember,
                claim=opened.claim,
                outcome=outcome,
                refund=refund,
                budget=opened.budget,
            )
        )
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        if await asyncio.shield(task):
            self._pipeline.condense_later(turn.account_id, turn.user_id)
