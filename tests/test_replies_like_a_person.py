"""Issue 15: the embedded responder replies like a person. It answers small talk and
questions about itself in the persona's voice, recalls what the user told it, greets and
answers in one reply, says what it can help with when its knowledge has nothing, points to
related documents, lets the persona's traits change the wording and never the meaning, and
says no number, URL, date or name that nobody gave it.

Unit level: the responder in process with the real embedder, no server; every wording is
read from the tables of ``engine.responder`` and ``engine.smalltalk``.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence
from typing import get_args

import pytest

from engine.memory import Memory
from engine.personas import Persona, Sociality, TemperamentName
from engine.replies import Reply, Snippet, TurnContext
from engine.responder import (
    CITED,
    MAX_SOURCES,
    MORE_IN,
    NO_ANSWER,
    RELATED,
    RELATED_WITHIN,
    RELEVANT,
    UNLABELLED,
    EmbeddedResponder,
)
from engine.sentences import sentences
from engine.smalltalk import BOT, GREETING, MET, SALUTATION, THANKS, UNKNOWN, social
from kb.embedder import shared_embedder
from tests.test_smalltalk import persona as smalltalk_persona

EMBED = shared_embedder().embed
RESPONDER = EmbeddedResponder(EMBED)
VOICES = list(itertools.product(get_args(Sociality), get_args(TemperamentName)))
SOCIALITIES = list(get_args(Sociality))
NOBODY = Memory(summary="", facts={}, recent=[])
ANA = Memory(summary="", facts={"name": "Ana", "location": "Lisbon"}, recent=[])
TOPICS = ["Returns", "Shipping"]
ROLE = "A guide for Acme's outdoor store."

ABOUT = RELEVANT + 0.1
"""A score that makes a snippet about the question, whatever the cuts are set to."""

RETURNS = Snippet(
    "returns",
    "Items can be returned within 30 days of delivery. Returned items must be unused and in "
    "their original packaging. Refunds reach your card within five business days.",
    ABOUT,
    label="Returns policy",
)
UNUSED = "Returned items must be unused and in their original packaging."
SHIPPING = Snippet(
    "shipping",
    "Orders ship from our warehouse in Porto. Standard delivery takes three to five business "
    "days. Express delivery arrives the next day.",
    ABOUT,
    label="Shipping",
)
COURIERS = Snippet(
    "couriers",
    "Our couriers deliver on weekdays between 8 and 18. A parcel nobody signs for waits at "
    "the nearest pick-up point for a week.",
    ABOUT,
    label="Couriers and pick-up points",
)


persona = functools.partial(smalltalk_persona, name="Nora")


async def reply(
    message: str,
    snippets: Sequence[Snippet] = (),
    *,
    who: Persona | None = None,
    memory: Memory = NOBODY,
    topics: Sequence[str] = TOPICS,
) -> Reply:
    return await RESPONDER.reply(
        TurnContext(
            persona=who or persona(),
            memory=memory,
            message=message,
            snippets=list(snippets),
            topics=list(topics),
        )
    )


def says_no_answer(text: str) -> bool:
    """Whether ``text`` holds any voice's no-answer line (up to where a name would go)."""
    return any(line.split("{name}")[0] in text for line in NO_ANSWER.values())


def whole_sentences(text: str, quoted: Sequence[str] = ()) -> list[str]:
    """The sentences of ``text`` that are not whole: neither ending in a stop nor quoted."""
    return [
        s
        for s in sentences(text)
        if s not in quoted and not s.rstrip("\"')]\u2019\u201d").endswith((".", "!", "?"))
    ]


def document_sentences(snippets: Sequence[Snippet]) -> set[str]:
    return {s for snippet in snippets for s in sentences(snippet.text)}


# --- small talk and questions about the persona -----------------------------------------------


@pytest.mark.parametrize("sociality", SOCIALITIES)
async def test_hi_there_is_greeted_not_answered_from_knowledge(sociality: Sociality) -> None:
    answer = await reply("Hi there", [RETURNS, SHIPPING], who=persona(sociality))
    greeting = GREETING[sociality].format(hello=SALUTATION[sociality], name="")
    assert answer.text.startswith(greeting)
    assert answer.sources == [] and not says_no_answer(answer.text)
    assert not document_sentences([RETURNS, SHIPPING]) & set(sentences(answer.text))


@pytest.mark.parametrize("sociality", SOCIALITIES)
async def test_thanks_are_welcomed(sociality: Sociality) -> None:
    answer = await reply("Thanks!", [RETURNS], who=persona(sociality))
    assert answer.text.startswith(THANKS[sociality].format(name=""))
    assert answer.sources == [] and not says_no_answer(answer.text)


async def test_who_are_you_names_the_persona_and_its_role() -> None:
    described = await reply("Who are you?", who=persona(role=ROLE))
    assert "Nora" in described.text and ROLE[0].lower() + ROLE[1:] in described.text
    assert described.sources == [] and not says_no_answer(described.text)
    # A role that is instructions, not a description, is not read out.
    instructed = await reply("Who are you?", who=persona(role="Answer briefly and politely."))
    assert "Nora" in instructed.text and "briefly" not in instructed.text
    assert not says_no_answer(instructed.text)


@pytest.mark.parametrize("sociality", SOCIALITIES)
async def test_are_you_a_bot_is_answered_honestly(sociality: Sociality) -> None:
    answer = await reply("Are you a bot?", [RETURNS], who=persona(sociality))
    assert BOT[sociality].format(persona="Nora") in answer.text
    assert answer.sources == [] and not says_no_answer(answer.text)


@pytest.mark.parametrize("topics", [["Returns", "Shipping"], ["Sizing guide", "Warranty"]])
async def test_what_can_you_help_with_names_the_topics_it_was_given(topics: list[str]) -> None:
    answer = await reply("What can you help with?", [RETURNS], topics=topics)
    assert all(topic in answer.text for topic in topics)
    assert answer.sources == [] and not says_no_answer(answer.text)


# --- facts from memory ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "fact"), [("What's my name?", "Ana"), ("Where do I live?", "Lisbon")]
)
async def test_facts_are_recalled_from_memory(question: str, fact: str) -> None:
    answer = await reply(question, [RETURNS], memory=ANA)
    assert fact in answer.text
    assert answer.sources == [] and not says_no_answer(answer.text)


@pytest.mark.parametrize(
    ("question", "unknown"), [("What's my name?", "name"), ("Where do I live?", "location")]
)
async def test_an_unknown_fact_is_said_to_be_unknown_and_nothing_is_made_up(
    question: str, unknown: str
) -> None:
    for sociality in SOCIALITIES:
        answer = await reply(question, [RETURNS], who=persona(sociality))
        assert UNKNOWN[unknown] in answer.text
        assert "Ana" not in answer.text and "Lisbon" not in answer.text
        assert invented(answer.text, [question, "Nora"]) == []
        assert answer.sources == [] and not says_no_answer(answer.text)


# --- social and question in one message -------------------------------------------------------


@pytest.mark.parametrize("sociality", SOCIALITIES)
async def test_a_name_and_a_question_are_met_and_answered(sociality: Sociality) -> None:
    message = "My name is Ana. Can I return shoes I wore once?"
    answer = await reply(message, [RETURNS], who=persona(sociality))
    met = MET[sociality].format(user="Ana")
    assert met in answer.text and UNUSED in answer.text
    assert answer.text.index(met) < answer.text.index(UNUSED)
    assert answer.sources == ["returns"] and not says_no_answer(answer.text)


async def test_a_remark_after_a_greeting_gets_no_no_answer() -> None:
    answer = await reply("Hi, I'm Ana", [RETURNS])
    assert answer.text.startswith(
        GREETING["ambivert"].format(hello=SALUTATION["ambivert"], name="")
    )
    assert answer.sources == [] and not says_no_answer(answer.text)


# --- no answer --------------------------------------------------------------------------------


@pytest.mark.parametrize(("sociality", "leading"), VOICES)
async def test_no_answer_names_the_topics_covered(
    sociality: Sociality, leading: TemperamentName
) -> None:
    unrelated = Snippet("returns", RETURNS.text, RELATED - 0.2, label=RETURNS.label)
    for snippets in ([], [unrelated]):
        answer = await reply("Do you sell bicycles?", snippets, who=persona(sociality, leading))
        assert says_no_answer(answer.text) and answer.sources == []
        assert "Returns" in answer.text and "Shipping" in answer.text
        assert not document_sentences([RETURNS]) & set(sentences(answer.text))
        assert whole_sentences(answer.text) == []


# --- traits change the wording, not the meaning -----------------------------------------------


@pytest.mark.parametrize("memory", [NOBODY, ANA], ids=["stranger", "known"])
async def test_persona_traits_change_wording_not_meaning(memory: Memory) -> None:
    near = Snippet("couriers", COURIERS.text, ABOUT - RELATED_WITHIN / 2, label=COURIERS.label)
    snippets = [SHIPPING, near]
    documents = document_sentences(snippets)
    texts = set()
    meanings = set()
    for sociality, leading in VOICES:
        answer = await reply(
            "How long does delivery take?", snippets, who=persona(sociality, leading), memory=memory
        )
        quoted = [s for s in sentences(answer.text) if s in documents]
        assert quoted, answer.text
        assert whole_sentences(answer.text, quoted) == [], answer.text
        meanings.add((tuple(answer.sources), tuple(quoted)))
        texts.add(answer.text)
    assert len(meanings) == 1, meanings
    ((sources, quoted),) = meanings
    assert sources == ("shipping", "couriers")
    assert "Standard delivery takes three to five business days." in quoted
    assert len(texts) >= 3


# --- related documents ------------------------------------------------------------------------


async def test_a_related_document_is_cited_and_named() -> None:
    second = Snippet("couriers", COURIERS.text, ABOUT - RELATED_WITHIN / 2, label=COURIERS.label)
    for sociality in SOCIALITIES:
        answer = await reply(
            "How long does delivery take?", [SHIPPING, second], who=persona(sociality)
        )
        assert answer.sources == ["shipping", "couriers"]
        assert "Standard delivery takes three to five business days." in answer.text
        more = MORE_IN[sociality].format(documents=f"\u201c{COURIERS.label}\u201d")
        assert answer.text.endswith(more), answer.text
        assert not document_sentences([COURIERS]) & set(sentences(answer.text))


@pytest.mark.parametrize(
    "score",
    [RELATED - 0.1, CITED - 0.01, ABOUT - RELATED_WITHIN - 0.01],
    ids=["unrelated", "not-close-enough", "far-behind"],
)
async def test_a_less_relevant_document_is_not_cited(score: float) -> None:
    second = Snippet("couriers", COURIERS.text, score, label=COURIERS.label)
    answer = await reply("How long does delivery take?", [SHIPPING, second])
    assert answer.sources == ["shipping"]
    assert COURIERS.label not in answer.text


async def test_sources_are_capped_and_unlabelled_documents_are_named_plainly() -> None:
    extra = [Snippet(f"faq{i}", f"Delivery question number {i} is answered here.", ABOUT)
             for i in range(4)]  # fmt: skip
    answer = await reply("How long does delivery take?", [SHIPPING, *extra])
    assert answer.sources == ["shipping", *(s.external_id for s in extra)][:MAX_SOURCES]
    assert UNLABELLED[MAX_SOURCES - 2] in answer.text


# --- honesty ----------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_URL = re.compile(r"(?:https?://|www\.)\S*[^\s.,;:!?)\]}\"'\u2019\u201d]")
"""https?://\\S+ and www\\.\\S+, less the punctuation that ends the sentence after them."""
_DATE = re.compile(
    r"\b(?:January|February|March|April|June|July|August|September|October|November|"
    r"December|Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\b"
)
_WORD = re.compile(r"(?<!\w)[^\W\d_][\w'\u2019-]*")
"""A word that starts a token: the "D" of "2D" is no name (its number is checked as one)."""
ORDINARY = frozenset(["I", "I'm", "I'd", "I'll", "I've", "I\u2019m", "I\u2019d", "OK"])
"""Capitalised words any reply may hold."""


def invented(text: str, allowed_texts: Sequence[str]) -> list[str]:
    """The numbers, URLs, dates and capitalised names in ``text`` that no allowed text holds.

    Numbers and URLs must appear as they are; a capitalised word (past a sentence's first
    word) or a month or weekday must appear as a whole word, in any case."""
    allowed = "\n".join(allowed_texts)
    found: list[str] = []
    for url in _URL.findall(text):
        if url not in allowed:
            found.append(url)
    bare = _URL.sub(" ", text)
    for number in _NUMBER.findall(bare):
        if not re.search(rf"(?<![\d.,]){re.escape(number)}(?![\d]|[.,]\d)", allowed):
            found.append(number)
    names: list[str] = _DATE.findall(bare)
    for sentence in sentences(bare):
        names += [w for w in _WORD.findall(sentence)[1:] if w[0].isupper() and w not in ORDINARY]
    for name in names:
        if not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", allowed, re.IGNORECASE):
            found.append(name)
    return found


def test_the_honesty_checker_catches_what_nobody_said() -> None:
    said = (
        "Hello, Ana! Call Bob on 0800 123 456 or see https://acme.example/help. "
        "We open on Monday at 9.30, and on 2024-05-01 I'm at www.acme.example too."
    )
    assert invented(said, ["Ana"]) == [
        "https://acme.example/help",
        "www.acme.example",
        "0800",
        "123",
        "456",
        "9.30",
        "2024",
        "05",
        "01",
        "Monday",
        "Bob",
        "Monday",
    ]
    allowed = ["my name is ana", "call bob on 0800 123 456", "https://acme.example/help",
               "Open Monday 9.30; 2024-05-01, www.acme.example."]  # fmt: skip
    assert invented(said, allowed) == []
    # A number is matched whole: 30 is not in 300, nor 1.5 in 1.50.
    assert invented("It takes 30 days and costs 1.5.", ["300 days, 1.50"]) == ["30", "1.5"]


CONTACT = Snippet(
    "contact",
    "Write to us at https://acme.example/help or call 0800 123 456. The phone line is open "
    "from 9 to 17 on weekdays. The store is closed on 25 December and 1 January.",
    0.0,
    label="Contact",
)
WARRANTY = Snippet(
    "warranty",
    "Every backpack carries a two-year warranty against manufacturing defects. Warranty "
    "claims need the order number printed on the Acme invoice.",
    0.0,
    label="Warranty",
)
LIBRARY = [RETURNS, SHIPPING, COURIERS, CONTACT, WARRANTY]
LIBRARY_TOPICS = [s.label for s in LIBRARY]
_LIBRARY_VECTORS = EMBED([s.text for s in LIBRARY])

MESSAGES = [
    # social
    "Hi there",
    "Good morning!",
    "hello nora",
    "Thanks so much!",
    "Bye!",
    "How are you?",
    "Who are you?",
    "What's your name?",
    "Are you a bot?",
    "What can you help with?",
    "ok",
    "You're great",
    # facts
    "My name is Ana.",
    "I live in Lisbon.",
    "What's my name?",
    "Where do I live?",
    "What do you know about me?",
    "What do I do for a living?",
    "Hi, my name is Bruno and I live in Porto.",
    # answered from knowledge
    "How long does delivery take?",
    "Can I return shoes I wore once?",
    "Is there a warranty on backpacks?",
    "How can I contact support?",
    "When is the store closed?",
    "Where do orders ship from?",
    "My name is Ana. Can I return shoes I wore once?",
    "Hi! How long until my refund reaches my card?",
    # off-topic
    "Do you sell bicycles?",
    "What's the capital of France?",
    "Who won the World Cup in 2022?",
    "What will the weather be like in Paris on Friday?",
    "Can you give me your CEO's phone number?",
    "What's the price of Bitcoin today?",
]


def retrieve(message: str, who: Persona, memory: Memory) -> list[Snippet]:
    """What the retriever hands over: the library scored by its cosine to the message less
    its social part (as ``engine.turns`` searches), best first."""
    question = social(message, who, memory).rest
    if not question:
        return []
    scores = _LIBRARY_VECTORS @ EMBED([question])[0]
    ranked = sorted(zip(LIBRARY, scores, strict=True), key=lambda pair: -pair[1])
    return [Snippet(s.external_id, s.text, float(score), label=s.label) for s, score in ranked]


@pytest.mark.parametrize("memory", [NOBODY, ANA], ids=["stranger", "known"])
async def test_no_reply_says_what_nobody_gave_it(memory: Memory) -> None:
    answered = 0
    for (sociality, leading), message in itertools.product(VOICES, MESSAGES):
        who = persona(sociality, leading, role=ROLE)
        snippets = retrieve(message, who, memory)
        answer = await reply(message, snippets, who=who, memory=memory, topics=LIBRARY_TOPICS)
        cited = [s for s in snippets if s.external_id in answer.sources]
        allowed = [
            message,
            *memory.facts.values(),
            who.name,
            who.role,
            *LIBRARY_TOPICS,
            *(s.text for s in cited),
            *(s.label for s in cited),
        ]
        assert invented(answer.text, allowed) == [], (sociality, leading, message, answer)
        answered += bool(answer.sources)
    # The sweep quoted knowledge, so the check read document sentences as well as lines.
    assert answered >= len(VOICES) * 5


async def test_the_same_state_gives_the_same_reply() -> None:
    for message in MESSAGES:
        snippets = retrieve(message, persona(), ANA)
        first = await reply(message, snippets, memory=ANA)
        again = await EmbeddedResponder(EMBED).reply(
            TurnContext(
                persona=persona(), memory=ANA, message=message, snippets=snippets, topics=TOPICS
            )
        )
        assert first == again
