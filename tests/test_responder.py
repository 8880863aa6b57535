"""The embedded grounded responder: grounded, honest, in the persona's voice, deterministic."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from engine.memory import Memory
from engine.personas import Persona, Temperament
from engine.replies import (
    Image,
    ReplyDelta,
    ReplyDone,
    ReplyEvent,
    ReplySources,
    ReplyStarted,
    Snippet,
    TurnContext,
)
from engine.responder import EmbeddedResponder
from kb.embedder import shared_embedder

RESPONDER = EmbeddedResponder(shared_embedder().embed)

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
    reply = await RESPONDER.reply(context("How are refunds paid back?", [SHIPPING, REFUNDS]))
    assert "original card within five business days" in reply.text
    assert "Lisbon" not in reply.text
    assert reply.sources == ["refunds"]


async def test_it_says_so_when_nothing_answers() -> None:
    reply = await RESPONDER.reply(context("Do you sell bicycles?", [SHIPPING]))
    assert "don't have information" in reply.text and reply.sources == []
    empty = await RESPONDER.reply(context("Anything?", []))
    assert "don't have information" in empty.text


async def test_a_snippet_close_in_meaning_answers_without_shared_words() -> None:
    close = Snippet("pay", "Payment is processed after order confirmation. Then we ship.", 0.55)
    reply = await RESPONDER.reply(context("How do I settle my bill?", [close]))
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
    reply = await RESPONDER.reply(
        context("How are refunds paid back?", [REFUNDS], persona=persona(**fields))
    )
    assert reply.text.startswith(expected) or expected in reply.text.split("Refunds")[0]


async def test_it_greets_by_name_and_cannot_see_images() -> None:
    memory = Memory(summary="", facts={"name": "Ada"}, recent=[])
    reply = await RESPONDER.reply(
        context("How are refunds paid back?", [REFUNDS], memory=memory,
                image=Image(data=b"\x89PNG", mime="image/png"))
    )  # fmt: skip
    assert ", Ada" in reply.text and reply.text.startswith("I can't look at images")


async def test_it_is_deterministic_and_streams_its_own_units() -> None:
    events: list[ReplyEvent] = []
    turn = context("How are refunds paid back?", [REFUNDS, SHIPPING])
    first = await RESPONDER.reply(turn, events.append)
    second = await RESPONDER.reply(turn)
    assert first == second
    assert isinstance(events[0], ReplyStarted)
    assert events[-2:] == [ReplySources(first.sources), ReplyDone(first)]
    pieces = [e.text for e in events if isinstance(e, ReplyDelta)]
    assert "".join(pieces) == first.text
    # Units of the answer (opener with the first quote, then each further sentence), not
    # a finished string cut at its spaces.
    assert pieces[0].startswith("Sure. Happily: Refunds")
    assert all(piece.endswith((".", "!", "?")) for piece in pieces)


def test_word_forms_meet() -> None:
    from engine.responder import stem

    assert {stem("takes"), stem("take")} == {"take"}
    assert stem("payment") == stem("pays") == stem("pay") == "pay"
    assert stem("boxes") == "box" and stem("processed") == "process"


LUMEN = Snippet(
    "lumen",
    "The Lumen backpack is our choice for multi-day hikes. The Lumen backpack costs 120 "
    "dollars. It is available in rust red, ochre and plum. Clean the Lumen backpack with a "
    "damp cloth.",
    0.6,
)


@pytest.mark.parametrize(
    ("message", "answer"),
    [
        # The sentence that answers, though it does not repeat the product's name.
        ("Which colours does the Lumen backpack come in?", "It is available in rust red"),
        # No word in common with what is asked ("wash" / "Clean").
        ("How do I wash my Lumen backpack?", "Clean the Lumen backpack with a damp cloth."),
        ("How much is the Lumen backpack?", "The Lumen backpack costs 120 dollars."),
    ],
)
async def test_the_sentence_that_answers_wins_over_the_one_that_names_the_subject(
    message: str, answer: str
) -> None:
    reply = await RESPONDER.reply(context(message, [LUMEN]))
    assert answer in reply.text and "multi-day hikes" not in reply.text
    assert reply.sources == ["lumen"]


async def test_a_relevant_snippet_that_does_not_answer_gets_the_honest_no_answer() -> None:
    reply = await RESPONDER.reply(context("Is the Lumen backpack vegan?", [LUMEN]))
    assert "don't have information" in reply.text and reply.sources == []


def test_the_words_a_passage_repeats_are_its_topic() -> None:
    from engine.responder import asked_about, topic_words

    assert topic_words(LUMEN.text) == {"lumen", "backpack"}
    assert asked_about("Which colours does the Lumen backpack come in?", LUMEN) == (
        "Which colours does the come in"
    )
    # Nothing but the topic left: the whole message is what is asked.
    assert asked_about("The Lumen backpack?", LUMEN) == "The Lumen backpack?"


async def test_sentence_vectors_are_remembered_up_to_a_bound() -> None:
    from engine.responder import SentenceVectors

    embedded: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        embedded.append(texts)
        return shared_embedder().embed(texts)

    vectors = SentenceVectors(embed, capacity=2)
    first = await vectors.similarity("colours?", ["Red.", "Blue."])
    again = await vectors.similarity("colours?", ["Red.", "Blue."])
    assert embedded == [["colours?", "Red.", "Blue."], ["colours?"]] and first == again
    await vectors.similarity("colours?", ["Green."])  # pushes out "Red.", the oldest
    await vectors.similarity("colours?", ["Red.", "Green."])
    assert embedded[-1] == ["colours?", "Red."]


async def test_only_the_three_most_relevant_snippets_are_read() -> None:
    from engine.responder import SentenceVectors, best_sentences

    embedded: list[str] = []

    def embed(texts: list[str]) -> np.ndarray:
        embedded.extend(texts)
        return shared_embedder().embed(texts)

    snippets = [Snippet(f"d{i}", f"Fact number {i} is here.", 0.5 + i / 100) for i in range(5)]
    await best_sentences("Which fact is here?", snippets, SentenceVectors(embed))
    assert sorted(embedded[1:]) == [f"Fact number {i} is here." for i in (2, 3, 4)]


async def test_a_related_snippet_answers_through_the_words_it_shares() -> None:
    returns = Snippet(
        "returns",
        "Returns are free for 30 days. Refunds reach your card within five business days.",
        0.37,  # what the retriever scores it for "Can I return my shoes?"
    )
    reply = await RESPONDER.reply(context("Can I return my shoes?", [returns]))
    assert "Returns are free for 30 days." in reply.text and reply.sources == ["returns"]
    # As related, but sharing no word: not enough to quote it.
    declined = await RESPONDER.reply(context("Do you sell bicycles?", [returns]))
    assert declined.sources == [] and "don't have information" in declined.text
