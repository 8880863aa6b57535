"""The session core on its own: frames and facts in, actions out, no I/O. The socket tests
(tests/test_sessions.py) run the same rules end to end."""

from __future__ import annotations

import msgspec

from engine.errors import InvalidVoiceMime
from sessions.frames import PersonaRef, UserMessage
from sessions.protocol import (
    FLOOD_BURST,
    MALFORMED_IN_A_ROW,
    CancelTurn,
    Close,
    EndSession,
    Send,
    SessionProtocol,
    StartTurn,
)

NOW = 1_000.0
PING = '{"type": "ping"}'


def protocol(mode: str = "chat", left: int | None = None, ends_in: float = 600.0):
    return SessionProtocol(
        session_id="s1", mode=mode, persona=PersonaRef("p1", "Nora"), seq=0,  # type: ignore[arg-type]
        interactions_left=left, ends_at=NOW + ends_in, now=NOW,
    )  # fmt: skip


def sent(actions: list) -> list[dict]:
    return [msgspec.to_builtins(a.event) for a in actions if isinstance(a, Send)]


def say(core: SessionProtocol, text: str = "hi", **fields: object) -> list:
    frame = {"type": "user.message", "text": text, **fields}
    return core.receive(msgspec.json.encode(frame).decode(), None, NOW)


def test_ready_then_every_event_numbered_from_one() -> None:
    core = protocol(left=3)
    ready = sent(core.ready(NOW, resumed=False))
    assert ready == [{"type": "session.ready", "seq": 1, "session_id": "s1", "mode": "chat",
                      "persona": {"id": "p1", "name": "Nora"},
                      "budget": {"interactions_left": 3, "seconds_left": 600},
                      "resumed": False}]  # fmt: skip
    pong = sent(core.receive('{"type": "ping"}', None, NOW))
    assert pong == [{"type": "pong", "seq": 2}]


def test_a_turn_streams_then_reports_the_budget() -> None:
    core = protocol(left=3)
    core.ready(NOW, resumed=False)
    start = say(core, id="m1")
    assert start == [StartTurn(2, UserMessage(id="m1", text="hi"), 1)]
    core.charged(2)
    events = sent(core.delta(2, "Hel") + core.delta(2, "lo."))
    events += sent(core.finished(2, NOW + 5, status="completed", text="Hello.", latency_ms=7))
    assert [e["type"] for e in events] == ["reply.delta", "reply.delta", "reply.done", "budget"]
    assert [e["seq"] for e in events] == [2, 3, 4, 5]
    assert events[2] == {"type": "reply.done", "seq": 4, "turn": 2, "text": "Hello.",
                         "sources": [], "status": "completed", "latency_ms": 7}  # fmt: skip
    assert events[3] == {"type": "budget", "seq": 5, "interactions_left": 2, "seconds_left": 595}


def test_the_reply_that_spends_the_last_unit_completes_then_4005() -> None:
    core = protocol(left=1)
    [start] = say(core)
    core.charged(0)
    actions = core.finished(start.turn, NOW, status="completed", text="Done.")
    assert [type(a) for a in actions] == [Send, Send, Send, EndSession, Close]
    assert sent(actions)[-1]["type"] == "session.closing" and actions[-1].code == 4005
    assert say(core) == [], "nothing after the close is decided"


def test_a_full_mode_turn_needs_two_units() -> None:
    core = protocol(mode="full", left=1)
    actions = say(core)
    assert actions[-1] == Close(4005, "limits.session_interaction_limit")


def test_voice_notes_need_full_mode_and_a_message_needs_something() -> None:
    core = protocol(mode="chat")
    voice = {"data_b64": "AAAA", "mime": "audio/wav"}
    [refused] = sent(say(core, text="hi", audio=voice, id="v1"))
    assert refused["type"] == "error" and refused["code"] == "validation.failed"
    assert refused["fatal"] is False and refused["ref"] == "v1"
    [empty] = sent(core.receive('{"type": "user.message"}', None, NOW))
    assert empty["type"] == "error"
    assert isinstance(say(protocol(mode="full"), audio=voice)[0], StartTurn)


def test_cancel_barge_in_and_cancel_with_nothing_running() -> None:
    core = protocol()
    assert core.receive('{"type": "reply.cancel"}', None, NOW) == []
    [first] = say(core, text="one")
    assert core.receive('{"type": "reply.cancel"}', None, NOW) == [CancelTurn(first.turn)]
    cancel, second = say(core, text="two")
    assert cancel == CancelTurn(first.turn) and isinstance(second, StartTurn)
    core.delta(first.turn, "partial")
    done = sent(core.finished(first.turn, NOW, status="cancelled"))
    assert done[0]["status"] == "cancelled" and done[0]["text"] == "partial"
    assert core.turn == second.turn, "the new turn goes on"


def test_a_resent_message_id_runs_once() -> None:
    core = protocol()
    assert isinstance(say(core, id="same")[0], StartTurn)
    assert say(core, id="same") == []


def test_the_duration_limit_cancels_the_reply_then_closes_4006() -> None:
    core = protocol(left=5)
    [start] = say(core)
    assert core.expired() == [CancelTurn(start.turn)]
    actions = core.finished(start.turn, NOW, status="cancelled")
    types = [e["type"] for e in sent(actions)]
    assert types == ["reply.done", "session.closing"]
    assert actions[-2:] == [EndSession(4006), Close(4006, "limits.session_duration_limit")]
    assert protocol().expired()[-1].code == 4006


def test_session_end_closes_1000_and_ends_it() -> None:
    actions = protocol().receive('{"type": "session.end"}', None, NOW)
    assert actions[-2:] == [EndSession(1000), Close(1000, "session ended by the client")]


def test_malformed_binary_and_flooding_frames() -> None:
    core = protocol()
    for bad in ['{"type": "nope"}', "not json", '{"type": "ping", "extra": 1}', "[]"]:
        [error] = sent(core.receive(bad, None, NOW))
        assert error["type"] == "error" and error["fatal"] is False
    assert core.receive(None, b"\x00", NOW)[-1] == Close(1008, "too many malformed frames")
    assert MALFORMED_IN_A_ROW == 5
    flood = protocol()
    closes = [a for _ in range(FLOOD_BURST + 1) for a in
              flood.receive('{"type": "ping"}', None, NOW) if isinstance(a, Close)]  # fmt: skip
    assert closes == [Close(1008, "too many frames")]
    steady = protocol()
    for n in range(100):  # ten frames a second is fine for ever
        assert isinstance(steady.receive(PING, None, NOW + n / 10)[-1], Send)


def test_a_replaced_connection_closes_4009_and_says_nothing_more() -> None:
    core = protocol()
    [start] = say(core)
    assert core.replaced() == [
        CancelTurn(start.turn),
        Close(4009, "replaced by a newer connection"),
    ]
    assert core.finished(start.turn, NOW, status="cancelled") == []


def test_a_failed_turn_is_told_as_a_non_fatal_error() -> None:
    core = protocol()
    [start] = say(core, id="v")
    events = sent(core.finished(start.turn, NOW, status="failed", text="",
                                error=InvalidVoiceMime(), ref="v"))  # fmt: skip
    assert events[0] == {"type": "error", "seq": 1, "code": "voice.invalid_mime",
                         "message": InvalidVoiceMime.default_message, "fatal": False,
                         "ref": "v"}  # fmt: skip
    assert events[1]["status"] == "failed"
