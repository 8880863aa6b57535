"""The live session's core, without I/O: frames and facts in, actions out.

Modelled on ``websockets``' ``protocol.py``: nothing here awaits, reads a clock or touches
Redis. The socket adapter (:mod:`sessions.socket`) feeds it what happened (a client frame,
a turn's event, the end of a turn, the duration running out, a newer connection) with the
time, and performs the actions it answers, in order: send an event, start or cancel a turn,
end the session in the store, close the socket. The contract it keeps is docs/architecture.md,
"Live sessions": frames, budgets (seed 000: 4005 after the reply that spends the last
billing unit, 4006 at the duration limit with the reply in progress cancelled), the idle
end (DESIGN.md, "Slots": 4007 after RAPPORT_SESSION_IDLE_SECONDS without a user message),
barge-in, and no 1011 for a client's mistake.
"""

from __future__ import annotations

import enum
import math

import msgspec

from engine.errors import Failure, RapportError, ValidationFailed
from engine.personas import Mode
from sessions.frames import (
    Budget,
    BudgetLeft,
    Error,
    Outgoing,
    PersonaRef,
    Ping,
    Pong,
    ReplyCancel,
    ReplyDelta,
    ReplyDone,
    ReplyStatus,
    SessionClosing,
    SessionEnd,
    SessionReady,
    Transcript,
    UserMessage,
    decode,
)

SEEN_IDS = 256
"""Message ids a connection remembers for dropping resent frames."""
COST: dict[Mode, int] = {"chat": 1, "full": 2}
"""Seed 000: a turn's billing units, charged when it starts."""
MALFORMED_IN_A_ROW = 5
"""Malformed frames tolerated in a row (each answered with an error event) before 1008."""
FLOOD_BURST = 30
FLOOD_PER_SECOND = 10.0
"""Frames a client may send at once, and refilled per second, before 1008: a chat widget
sends a handful a minute; a loop that sends thousands costs the server for nothing."""


class Send(msgspec.Struct, frozen=True):
    event: Outgoing


class StartTurn(msgspec.Struct, frozen=True):
    turn: int
    message: UserMessage
    cost: int


class CancelTurn(msgspec.Struct, frozen=True):
    turn: int


class EndSession(msgspec.Struct, frozen=True):
    """Mark the session ended in the store (no resume after it), with this close code."""

    code: int


class Close(msgspec.Struct, frozen=True):
    code: int
    reason: str


class CheckIdle(msgspec.Struct, frozen=True):
    """The idle deadline passed here: read the session's last activity in the store (a
    user message another process took counts too) and answer :meth:`SessionProtocol.checked`."""


Action = Send | StartTurn | CancelTurn | EndSession | Close | CheckIdle


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    """A close is decided, waiting for the turn in progress to end first."""
    CLOSED = "closed"


class SessionProtocol:
    def __init__(
        self,
        *,
        session_id: str,
        mode: Mode,
        persona: PersonaRef,
        seq: int,
        interactions_left: int | None,
        ends_at: float,
        now: float,
        idle_seconds: float = 0,
        active_at: float | None = None,
    ) -> None:
        """``seq``: the last seq this session sent (0 for a new one); ``ends_at``: when the
        duration budget runs out, seconds since the epoch like ``now``; ``idle_seconds``:
        how long the session may go without a user message (0: for ever), counted from
        ``active_at``, its last one (or first connect) as stored, else ``now``."""
        self.session_id = session_id
        self.mode = mode
        self.persona = persona
        self.seq = seq
        self.interactions_left = interactions_left
        self.ends_at = ends_at
        self.idle_seconds = idle_seconds
        self.active_at = now if active_at is None else active_at
        self.state = State.OPEN
        self.turn: int | None = None
        """The turn in progress, if any."""
        self._next_turn = 0
        self._said: dict[int, list[str]] = {}
        self._malformed = 0
        self._seen: dict[str, None] = {}
        """Ids of the user.messages this connection took, oldest first (bounded)."""
        self._tokens = float(FLOOD_BURST)
        self._refilled = now
        self._pending_close: tuple[int, str, bool] | None = None
        """A close waiting for the turn in progress: code, reason, whether it ends the
        session."""

    # --- what the client sends -------------------------------------------------------------

    def ready(self, now: float, *, resumed: bool) -> list[Action]:
        budget = Budget(self.interactions_left, self.seconds_left(now))
        return [
            self._send(
                SessionReady(
                    session_id=self.session_id,
                    mode=self.mode,
                    persona=self.persona,
                    budget=budget,
                    resumed=resumed,
                )
            )
        ]

    def receive(self, text: str | None, data: bytes | None, now: float) -> list[Action]:
        """One frame from the client: ``text`` for a text frame, ``data`` for a binary one."""
        if self.state is not State.OPEN:
            return []
        if not self._take_token(now):
            return self._close(1008, "too many frames", ends=False)
        if text is None:
            return self._malformed_frame(
                ValidationFailed("Binary frames are not accepted: send JSON text frames.")
            )
        try:
            frame = decode(text)
        except ValidationFailed as error:
            return self._malformed_frame(error)
        self._malformed = 0
        match frame:
            case Ping():
                return [self._send(Pong())]
            case ReplyCancel():
                # Nothing in progress: nothing to do (the contract makes it a no-op).
                return [CancelTurn(self.turn)] if self.turn is not None else []
            case SessionEnd():
                return self._close(1000, "session ended by the client", ends=True)
            case UserMessage():
                return self._message(frame, now)

    def _message(self, message: UserMessage, now: float) -> list[Action]:
        if message.id is not None:
            # A resent frame (a client retrying after a hiccup) runs nothing; one resent
            # after a reconnect is stopped by the turn's idempotency key instead.
            if message.id in self._seen:
                return []
            self._seen[message.id] = None
            if len(self._seen) > SEEN_IDS:
                del self._seen[next(iter(self._seen))]
        if message.audio is not None and self.mode != "full":
            return [
                self._error(ValidationFailed("Voice notes need a full-mode session."), message.id)
            ]
        if message.text is None and message.audio is None:
            return [
                self._error(ValidationFailed("A user.message needs text or audio."), message.id)
            ]
        cost = COST[self.mode]
        if self.interactions_left is not None:
            if self.interactions_left < cost:
                return self._close(4005, Failure.SESSION_INTERACTION_LIMIT.code, ends=True)
            # Spent as the turn opens (in the store, with the request balance); counted here
            # now, so the next message is checked against what will be left.
            self.interactions_left -= cost
        actions: list[Action] = []
        if self.turn is not None:
            actions.append(CancelTurn(self.turn))  # barge-in: the new message wins
        # A turn is named by the seq its events start from, or later when two turns start
        # with no event between (a barge-in): unique and rising in a session, across
        # reconnects too (a new connection starts from the session's last seq).
        turn = max(self._next_turn, self.seq + 1)
        self._next_turn = turn + 1
        self.turn = turn
        # A message that opens a turn is activity (pings, cancels and refused frames are
        # not): the store keeps the same time as the turn opens (sessions.store.CHARGE).
        self.active_at = now
        self._said[turn] = []
        actions.append(StartTurn(turn, message, cost))
        return actions

    # --- what the turn does ----------------------------------------------------------------

    def charged(self, interactions_left: int | None) -> None:
        """What the store says is left after a turn: the truth, whatever was counted here."""
        self.interactions_left = interactions_left

    def _given_back(self) -> None:
        """A turn that spent nothing after all (a failure gives its units back, a resent
        message never took any)."""
        if self.interactions_left is not None:
            self.interactions_left += COST[self.mode]

    def spent(self, turn: int) -> list[Action]:
        """The store refused ``turn``'s units: the budget is gone (another connection, or a
        full-mode turn with one unit left). The turn never starts."""
        self._said.pop(turn, None)
        if self.turn == turn:
            self.turn = None
        return self._close(4005, Failure.SESSION_INTERACTION_LIMIT.code, ends=True)

    def dropped(self, turn: int) -> list[Action]:
        """``turn`` was a resent message that had already run (or still runs): nothing is
        said about it."""
        if turn in self._said:
            self._given_back()
        self._said.pop(turn, None)
        if self.turn == turn:
            self.turn = None
        return []

    def refuse(self, error: RapportError, ref: str | None = None) -> list[Action]:
        """Tell the client what was wrong, without closing (a non-fatal error event)."""
        return [self._error(error, ref)] if self.state is not State.CLOSED else []

    def transcribed(self, turn: int, text: str) -> list[Action]:
        return [self._send(Transcript(turn=turn, text=text))] if self._live(turn) else []

    def delta(self, turn: int, text: str) -> list[Action]:
        if not self._live(turn):
            return []
        self._said.setdefault(turn, []).append(text)
        return [self._send(ReplyDelta(turn=turn, text=text))]

    def finished(
        self,
        turn: int,
        now: float,
        *,
        status: ReplyStatus,
        text: str | None = None,
        sources: list[str] | None = None,
        latency_ms: int = 0,
        error: RapportError | None = None,
        ref: str | None = None,
    ) -> list[Action]:
        """A turn ended: ``completed`` with its reply, ``cancelled`` with what was said of
        it, ``failed`` with the error (told to the client as a non-fatal error event)."""
        said = "".join(self._said.pop(turn, [])).strip()
        if self.turn == turn:
            self.turn = None
        if status == "failed":
            self._given_back()
        if self.state is State.CLOSED:
            return []
        actions: list[Action] = []
        if error is not None:
            actions.append(self._error(error, ref))
        actions.append(
            self._send(
                ReplyDone(
                    turn=turn,
                    text=said if text is None else text,
                    sources=sources or [],
                    status=status,
                    latency_ms=latency_ms,
                )
            )
        )
        if self.state is State.CLOSING and self.turn is None and self._pending_close:
            code, reason, ends = self._pending_close
            return actions + self._closing(code, reason, ends)
        actions.append(
            self._send(
                BudgetLeft(
                    interactions_left=self.interactions_left, seconds_left=self.seconds_left(now)
                )
            )
        )
        if status == "completed" and self.interactions_left == 0:
            # Seed 000: the reply that spends the last unit completes, then 4005.
            actions += self._close(4005, Failure.SESSION_INTERACTION_LIMIT.code, ends=True)
        return actions

    # --- what happens around it ------------------------------------------------------------

    def expired(self) -> list[Action]:
        """The duration budget ran out (seed 000: wall-clock, idle time included)."""
        return self._close(4006, Failure.SESSION_DURATION_LIMIT.code, ends=True)

    def wake_at(self) -> float:
        """When :meth:`woke` has something to do: the duration's end or the idle deadline."""
        if self.idle_at is None:
            return self.ends_at
        return min(self.ends_at, self.idle_at)

    @property
    def idle_at(self) -> float | None:
        """When the session ends for want of a user message; None when it never does."""
        return self.active_at + self.idle_seconds if self.idle_seconds > 0 else None

    def woke(self, now: float) -> list[Action]:
        """The timer set for :meth:`wake_at` fired (or one set before a user message put the
        deadline off: nothing then)."""
        if self.state is not State.OPEN:
            return []
        if now >= self.ends_at:
            return self.expired()
        if self.idle_at is not None and now >= self.idle_at:
            return [CheckIdle()]
        return []

    def checked(self, active_at: float | None, ended: int | None) -> list[Action]:
        """The store's answer to :class:`CheckIdle`: the session's last activity, and its
        close code if reading it ended it (the store ends a session whose idle deadline
        passed: 4007). Still live: another process saw a user message since, and the
        deadline moves to the store's."""
        if ended is not None:
            return self.ended_elsewhere(ended)
        if active_at is not None:
            self.active_at = max(self.active_at, active_at)
        return []

    def ended_elsewhere(self, code: int) -> list[Action]:
        """The session was ended from outside (the business's DELETE): close with ``code``.
        A live socket is only ever ended 4001 from outside when the API key slot that minted
        it was disabled or regenerated (:meth:`sessions.store.SessionStore.revoke`): the
        closing names that, so the client knows not to resume."""
        if code == Failure.SESSION_TOKEN_INVALID.close_code:
            return self._close(code, "API key revoked", ends=False)
        if code == Failure.SESSION_IDLE.close_code:
            return self._close(code, Failure.SESSION_IDLE.code, ends=False)
        return self._close(code, "session ended", ends=False)

    def replaced(self) -> list[Action]:
        """A newer connection took the session: close at once, send nothing more (the new
        connection numbers the events from here on)."""
        actions: list[Action] = [CancelTurn(self.turn)] if self.turn is not None else []
        self.state = State.CLOSED
        code = Failure.SESSION_REPLACED.close_code
        return [*actions, Close(code, "replaced by a newer connection")]

    def seconds_left(self, now: float) -> int:
        return max(0, math.ceil(self.ends_at - now))

    # --- inside ----------------------------------------------------------------------------

    def _close(self, code: int, reason: str, *, ends: bool) -> list[Action]:
        """Close with ``code``; a turn in progress is cancelled and its reply.done sent
        first."""
        if self.state is not State.OPEN:
            return []
        if self.turn is not None:
            self.state = State.CLOSING
            self._pending_close = (code, reason, ends)
            return [CancelTurn(self.turn)]
        return self._closing(code, reason, ends)

    def _closing(self, code: int, reason: str, ends: bool) -> list[Action]:
        self.state = State.CLOSED
        actions: list[Action] = [self._send(SessionClosing(code=code, reason=reason))]
        if ends:
            actions.append(EndSession(code))
        actions.append(Close(code, reason))
        return actions

    def _malformed_frame(self, error: ValidationFailed) -> list[Action]:
        self._malformed += 1
        if self._malformed >= MALFORMED_IN_A_ROW:
            return self._close(1008, "too many malformed frames", ends=False)
        return [self._error(error, None)]

    def _error(self, error: RapportError, ref: str | None) -> Send:
        return self._send(
            Error(code=error.failure.code, message=error.message, fatal=False, ref=ref)
        )

    def _send(self, event: Outgoing) -> Send:
        self.seq += 1
        return Send(msgspec.structs.replace(event, seq=self.seq))

    def _live(self, turn: int) -> bool:
        return self.state is not State.CLOSED and turn in self._said

    def _take_token(self, now: float) -> bool:
        self._tokens = min(FLOOD_BURST, self._tokens + (now - self._refilled) * FLOOD_PER_SECOND)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
