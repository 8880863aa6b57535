"""The embedded grounded responder: grounded, honest, in the persona's voice, deterministic."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import get_args

import numpy as np
import pytest

from engine.memory import Memory
from engine.personas import Persona, Sociality, Temperament, TemperamentName
from engine.replies import (
    RELATED,
    Image,
    ReplyDelta,
    ReplyDone,
    ReplyEvent,
    ReplySources,
    ReplyStarted,
    Snippet,
    TurnContext,
)
from engine.responder import (
    GREETED_LEAD,
    NO_ANSWER,
    NO_IMAGES,
    RELEVANT,
    SNIPPETS_READ,
    TEMPERAMENT_LEAD,
    EmbeddedResponder,
)
from kb.embedder import shared_embedder

RESPONDER = EmbeddedResponder(shared_embedder().embed)
NOTHING_ON_IT = NO_ANSWER["ambivert"].format(name="")
"""The default persona's no-answer, as the responder's table words it."""

REFUNDS = Snippet(
    "refunds",
    "Refunds are paid back to the original card within five business days. "
    "Store credit is issued at once when the customer prefers it.",
    0.62,
)
SHIPPING = Snippet("shipping", "Orders ship from Lisbon. Delivery takes three days.", 0.2)


def persona(**fields: object) -> Persona:
    return Persona(id="p", name="Nora", created_at=datetime.now(UTC), **fields)  # type: ignore[arg-type]


def lead_in(sociality: Sociality, leading: TemperamentName) -> str:
    """The whole sentences a persona puts before a quote, from the responder's tables."""
    plain, _ = GREETED_LEAD[sociality]  # (without, with the user's name)
    parts = (plain, TEMPERAMENT_LEAD[leading])
    return " ".join(part for part in parts if part)


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
    assert NOTHING_ON_IT in reply.text and reply.sources == []
    empty = await RESPONDER.reply(context("Anything?", []))
    assert NOTHING_ON_IT in empty.text


async def test_a_snippet_close_in_meaning_answers_without_shared_words() -> None:
    close = Snippet("pay", "Payment is processed after order confirmation. Then we ship.", 0.55)
    reply = await RESPONDER.reply(context("How do I settle my bill?", [close]))
    assert reply.sources == ["pay"] and "Payment is processed" in reply.text
    assert "Then we ship" not in reply.text


async def test_a_document_close_as_a_whole_is_about_the_question_when_its_chunk_is_not() -> None:
    # The same passage, its chunk only related (and sharing no word with the question): it
    # is declined, unless its whole document reaches the cut (the ranking's own vector).
    text = "Payment is processed after order confirmation. Then we ship."
    question = "How do I settle my bill?"
    part = Snippet("pay", text, (RELATED + RELEVANT) / 2)
    declined = await RESPONDER.reply(context(question, [part]))
    assert declined.sources == [] and NOTHING_ON_IT in declined.text
    whole = Snippet("pay", text, (RELATED + RELEVANT) / 2, document_score=RELEVANT)
    answered = await RESPONDER.reply(context(question, [whole]))
    assert answered.sources == ["pay"] and "Payment is processed" in answered.text


@pytest.mark.parametrize(
    ("sociality", "leading"),
    list(itertools.product(get_args(Sociality), get_args(TemperamentName))),
)
async def test_the_persona_picks_the_phrasing(
    sociality: Sociality, leading: TemperamentName
) -> None:
    # Sociality picks the greeting lead-in and the leading temperament the next one: whole
    # sentences before the quote, which stays as the document says it.
    weights = {name: 0.1 for name in get_args(TemperamentName)} | {leading: 0.7}
    reply = await RESPONDER.reply(
        context(
            "How are refunds paid back?",
            [REFUNDS],
            persona=persona(sociality=sociality, temperament=Temperament(**weights)),
        )
    )
    quote = "Refunds are paid back to the original card within five business days."
    lead = lead_in(sociality, leading)
    assert reply.text == (f"{lead} {quote}" if lead else quote)
    assert reply.sources == ["refunds"]


def test_the_lead_ins_differ_by_trait() -> None:
    leads = {lead_in(s, t) for s in get_args(Sociality) for t in get_args(TemperamentName)}
    assert len(leads) > len(get_args(TemperamentName))
    assert all(lead == "" or lead.endswith((".", "!", "?")) for lead in leads)


async def test_it_greets_by_name_and_cannot_see_images() -> None:
    memory = Memory(summary="", facts={"name": "Ada"}, recent=[])
    reply = await RESPONDER.reply(
        context("How are refunds paid back?", [REFUNDS], memory=memory,
                image=Image(data=b"\x89PNG", mime="image/png"))
    )  # fmt: skip
    assert reply.text.startswith(NO_IMAGES + " ")
    assert GREETED_LEAD["ambivert"][1].format(name="Ada") in reply.text


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
    # Units of the answer (the lead-in with the first quote, then each further sentence),
    # not a finished string cut at its spaces.
    default = persona()
    lead = lead_in(default.sociality, default.temperament.leading)
    assert (
        pieces[0] == f"{lead} Refunds are paid back to the original card within five business days."
    )
    assert all(piece.endswith((".", "!", "?")) for piece in pieces)


def test_word_forms_meet() -> None:
    from engine.words import stem

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
    assert NOTHING_ON_IT in reply.text and reply.sources == []


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

    def snippets(*texts: str) -> list[Snippet]:
        return [Snippet(text, text, 0.5) for text in texts]

    vectors = SentenceVectors(embed, capacity=3)
    first = await vectors.similarity(["colours?"], snippets("Red.", "Blue."))
    again = await vectors.similarity(["colours?"], snippets("Red.", "Blue."))
    assert embedded == [["colours?", "Red.", "Blue."]], "what is asked is remembered too"
    assert first.keys() == again.keys() == {"Red.", "Blue."}
    assert all(np.array_equal(first[text], again[text]) for text in first)
    await vectors.similarity(["colours?"], snippets("Green."))  # pushes out "Red.", the oldest
    await vectors.similarity(["colours?"], snippets("Red.", "Green."))
    assert embedded[-2:] == [["Green."], ["Red."]]


async def test_sentence_vectors_made_at_ingest_are_not_made_again() -> None:
    from engine.responder import SentenceVectors

    embedded: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        embedded.append(texts)
        return shared_embedder().embed(texts)

    text = "Orders ship from Lisbon. Delivery takes three days."
    made = tuple(
        shared_embedder().embed(["Orders ship from Lisbon.", "Delivery takes three days."])
    )
    vectors = SentenceVectors(embed)
    whole = await vectors.similarity(
        ["Where from?"], [Snippet("s", text, 0.5, sentence_vectors=made)]
    )
    assert embedded == [["Where from?"]]  # the question alone
    fresh = await SentenceVectors(shared_embedder().embed).similarity(
        ["Where from?"], [Snippet("s", text, 0.5)]
    )
    assert whole.keys() == fresh.keys()
    assert all(np.allclose(whole[text], fresh[text], atol=1e-5) for text in whole)
    # A sentence with no vector (past the model's truncation) is embedded with the question,
    # or alone when the question is remembered.
    await vectors.similarity(
        ["Where to?"], [Snippet("s", text, 0.5, sentence_vectors=(made[0], None))]
    )
    assert embedded[-1] == ["Where to?", "Delivery takes three days."]
    await vectors.similarity(
        ["Where from?"], [Snippet("s", "Delivery takes a week.", 0.5, sentence_vectors=())]
    )
    assert embedded[-1] == ["Delivery takes a week."]


async def test_only_the_three_most_relevant_snippets_are_read() -> None:
    from engine.responder import SentenceVectors, best_sentences

    embedded: list[str] = []

    def embed(texts: list[str]) -> np.ndarray:
        embedded.extend(texts)
        return shared_embedder().embed(texts)

    def read(texts: list[str]) -> list[str]:  # the sentences embedded, less the question
        return [text for text in texts if text.startswith("Fact number")]

    # The retriever's order (its fused ranking) says which are most relevant, not the
    # cosine each snippet carries: the last here has the highest and is not read.
    snippets = [Snippet(f"d{i}", f"Fact number {i} is here.", 0.5 + i / 100) for i in range(5)]
    await best_sentences("Which fact is here?", snippets, SentenceVectors(embed))
    assert SNIPPETS_READ == 3
    assert read(embedded) == [f"Fact number {i} is here." for i in (0, 1, 2)]
    # One below RELATED among the first three is not read, and no fourth takes its place.
    embedded.clear()
    snippets[1] = Snippet("d1", "Fact number 1 is here.", RELATED - 0.01)
    await best_sentences("Which fact is here?", snippets, SentenceVectors(embed))
    assert read(embedded) == [f"Fact number {i} is here." for i in (0, 2)]
    # Unless its whole document reaches RELATED.
    embedded.clear()
    snippets[1] = Snippet("d1", "Fact number 1 is here.", RELATED - 0.01, document_score=RELATED)
    await best_sentences("Which fact is here?", snippets, SentenceVectors(embed))
    assert read(embedded) == [f"Fact number {i} is here." for i in (0, 1, 2)]


async def test_the_first_snippet_that_answers_is_quoted_whatever_its_score() -> None:
    # The retriever ranks LOCKERS first (its words match); REFUNDS has the higher cosine but
    # comes second. The first that answers is quoted; the second is cited only if relevant.
    lockers = Snippet(
        "lockers",
        "Refunds for parcels left in a locker are paid back once the locker is emptied.",
        0.5,
    )
    reply = await RESPONDER.reply(context("How are refunds paid back?", [lockers, REFUNDS]))
    assert "once the locker is emptied" in reply.text
    assert "original card" not in reply.text
    assert reply.sources[0] == "lockers"


async def test_a_related_snippet_answers_through_the_words_it_shares() -> None:
    returns = Snippet(
        "returns",
        "Returns are free for 30 days. Refunds reach your card within five business days.",
        # Related, not relevant: what the retriever scored it for "Can I return my shoes?"
        # (0.37) when RELEVANT was 0.45.
        (RELATED + RELEVANT) / 2,
    )
    reply = await RESPONDER.reply(context("Can I return my shoes?", [returns]))
    assert "Returns are free for 30 days." in reply.text and reply.sources == ["returns"]
    # As related, but sharing no word: not enough to quote it.
    declined = await RESPONDER.reply(context("Do you sell bicycles?", [returns]))
    assert declined.sources == [] and NOTHING_ON_IT in declined.text
