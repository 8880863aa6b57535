"""The frames of a live session: JSON text frames tagged by ``type`` (docs/architecture.md,
"Live sessions").

Client frames are one tagged union, decoded once (msgspec checks every field and its
limits while it decodes; :func:`decode` turns a failure into a ValidationFailed that names
the field). Server events carry ``seq``, 1, 2, 3, ... per session and never reused, so a
client that reconnects says which it saw last and gets exactly the ones after.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from engine.errors import ValidationFailed
from engine.media import MAX_VOICE_B64, VoiceMime
from engine.personas import Mode

MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# Seed 004's message bound: a live message says what a conversation request may say.
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]


class Audio(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A voice note (full mode only): seed 004's mimes and size, checked on the base64."""

    data_b64: Annotated[str, msgspec.Meta(max_length=MAX_VOICE_B64)]
    mime: VoiceMime


class ClientFrame(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class UserMessage(ClientFrame, tag="user.message"):
    id: MessageId | None = None
    """The client's own id: a resent frame with an id already seen runs nothing."""
    text: Text | None = None
    audio: Audio | None = None


class ReplyCancel(ClientFrame, tag="reply.cancel"):
    pass


class Ping(ClientFrame, tag="ping"):
    pass


class SessionEnd(ClientFrame, tag="session.end"):
    pass


Incoming = UserMessage | ReplyCancel | Ping | SessionEnd

_decode_frame = msgspec.json.Decoder(Incoming).decode


def decode(text: str) -> Incoming:
    """One client frame, or ValidationFailed saying what is wrong with it."""
    try:
        return _decode_frame(text)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `$")
        field = where.rstrip("`").lstrip(".") or "frame"
        raise ValidationFailed(f"{field}: {message or exc}", errors={field: [message]}) from None
    except msgspec.DecodeError:
        raise ValidationFailed("A frame must be one JSON object with a `type`.") from None


class Budget(msgspec.Struct, frozen=True):
    """What a session has left: in its ready event, and in the HTTP views of it."""

    interactions_left: int | None
    """Billing units left (seed 000: chat 1 a turn, full 2); null when unlimited."""
    seconds_left: int
    """Wall-clock seconds left, counted from the first connect, idle time included."""


class PersonaRef(msgspec.Struct, frozen=True):
    id: str
    name: str


class ServerEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    seq: int = 0
    """Set when the event is sent (:meth:`sessions.protocol.SessionProtocol`)."""


class SessionReady(ServerEvent, tag="session.ready"):
    session_id: str
    mode: Mode
    persona: PersonaRef
    budget: Budget
    resumed: bool


class Transcript(ServerEvent, tag="transcript"):
    turn: int
    text: str


class ReplyDelta(ServerEvent, tag="reply.delta"):
    turn: int
    text: str


ReplyStatus = Literal["completed", "cancelled", "failed"]


class ReplyDone(ServerEvent, tag="reply.done"):
    turn: int
    text: str
    sources: list[str]
    status: ReplyStatus
    latency_ms: int


class BudgetLeft(ServerEvent, tag="budget"):
    interactions_left: int | None
    seconds_left: int


class Error(ServerEvent, tag="error", omit_defaults=True):
    code: str
    """The error table's code of the /api/ family (seed 000's), e.g. voice.invalid_mime."""
    message: str
    fatal: bool
    ref: str | None = None
    """What it is about: the id of the user.message it refuses, when it had one."""


class Pong(ServerEvent, tag="pong"):
    pass


class SessionClosing(ServerEvent, tag="session.closing"):
    code: int
    reason: str


Outgoing = (
    SessionReady | Transcript | ReplyDelta | ReplyDone | BudgetLeft | Error | Pong | SessionClosing
)

encode = msgspec.json.Encoder().encode


class QueueEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """What a queued client is told, on its queue socket and by its ``poll_url`` alike."""


class QueuePosition(QueueEvent, tag="queue.position"):
    position: int
    """1 is next in line."""
    estimated_wait_s: int | None
    """From the recent admission rate; null until there is enough history."""


class QueueAdmitted(QueueEvent, tag="queue.admitted"):
    session_id: str
    token: str
    ws_url: str
    """The session's socket, token included: open it by ``expires_at`` or the slot passes on."""
    expires_at: datetime


QueueUpdate = QueuePosition | QueueAdmitted
