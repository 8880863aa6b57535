"""The embedded grounded responder: grounded, honest, in the persona's voice, deterministic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.memory import Memory
from engine.personas import Persona, Temperament
from engine.replies import Image, Snippet, TurnContext
from engine.responder import EmbeddedResponder

REFUNDS = Snippet(
    "refunds",
    "Refunds are paid back to the original card within five business days. "
    "Store credit is issued at once when the customer prefers it.",
    0.62,
)
SHIPPING = Snippet("shipping", "Orders ship from Lisbon. Delivery takes three days.", 0.2)


def persona(**fields: object) -> Persona:
    return Persona(id="p", name="Nora", created_at=datetime.now(UTC), **fields)  # type: ignore[arg-type]


def context(message: str, snippets: list[Snippet], **extra: object) -> TurnContext:
    return TurnContext(
        persona=extra.pop("persona", persona()),  # type: ignore[arg-type]
        memory=extra.pop("memory", Memory(summary="", facts={}, recent=[])),  # type: ignore[arg-type]
        message=message,
        snippets=snippets,
        **extra,  # type: ignore[arg-type]
    )


async def test_it_quotes_the_document_that_answers() -> None:
    reply = await EmbeddedResponder().reply(
        context("How are refunds paid back?", [SHIPPING, REFUNDS])
    )
    assert "original card within five business days" in reply.text
    assert "Lisbon" not in reply.text
    assert reply.sources == ["refunds"]


async def test_it_says_so_when_nothing_answers() -> None:
    reply = await EmbeddedResponder().reply(context("Do you sell bicycles?", [SHIPPING]))
    assert "don't have information" in reply.text and reply.sources == []
    empty = await EmbeddedResponder().reply(context("Anything?", []))
    assert "don't have information" in empty.text


async def test_a_snippet_close_in_meaning_answers_without_shared_words() -> None:
    close = Snippet("pay", "Payment is processed after order confirmation. Then we ship.", 0.55)
    reply = await EmbeddedResponder().reply(context("How do I settle my bill?", [close]))
    assert reply.sources == ["pay"] and "Payment is processed" in reply.text
    assert "Then we ship" not in reply.text


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"sociality": "extrovert"}, "Great question"),
        ({"sociality": "ambivert"}, "Sure."),
        ({"sociality": "introvert", "temperament": Temperament(choleric=1, sanguine=0,
                                                                phlegmatic=0, melancholic=0)},
         "In short:"),
        ({"sociality": "introvert", "temperament": Temperament(melancholic=1, sanguine=0,
                                                                choleric=0, phlegmatic=0)},
         "As far as my notes go,"),
    ],
)  # fmt: skip
async def test_the_persona_picks_the_phrasing(fields: dict, expected: str) -> None:
    reply = await EmbeddedResponder().reply(
        context("How are refunds paid back?", [REFUNDS], persona=persona(**fields))
    )
    assert reply.text.startswith(expected) or expected in reply.text.split("Refunds")[0]


async def test_it_greets_by_name_and_cannot_see_images() -> None:
    memory = Memory(summary="", facts={"name": "Ada"}, recent=[])
    reply = await EmbeddedResponder().reply(
        context("How are refunds paid back?", [REFUNDS], memory=memory,
                image=Image(data=b"\x89PNG", mime="image/png"))
    )  # fmt: skip
    assert ", Ada" in reply.text and reply.text.startswith("I can't look at images")


async def test_it_is_deterministic_and_streams_word_by_word() -> None:
    pieces: list[str] = []

    async def collect(piece: str) -> None:
        pieces.append(piece)

    turn = context("How are refunds paid back?", [REFUNDS, SHIPPING])
    first = await EmbeddedResponder().reply(turn, collect)
    second = await EmbeddedResponder().reply(turn)
    assert first == second
    assert "".join(pieces) == first.text and len(pieces) == len(first.text.split(" "))


def test_word_forms_meet() -> None:
    from engine.responder import stem

    assert {stem("takes"), stem("take")} == {"take"}
    assert stem("payment") == stem("pays") == stem("pay") == "pay"
    assert stem("boxes") == "box" and stem("processed") == "process"
