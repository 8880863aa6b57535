"""Small talk: which sentences are social, what the persona says to them in each voice, what
is left for the knowledge answer, and that no reply states what nobody said."""

from __future__ import annotations

import itertools
import re
from typing import get_args

import pytest

from engine.memory import Memory
from engine.personas import Persona, Sociality, Temperament, TemperamentName
from engine.sentences import sentences
from engine.smalltalk import (
    FACT_SAYS,
    FILLER,
    FORMS,
    MAX_TOPICS,
    NO_TOPICS,
    OPENERS,
    RECALL_FORMS,
    UNKNOWN,
    Social,
    normalise,
    social,
)

VOICES = list(itertools.product(get_args(Sociality), get_args(TemperamentName)))
TOPICS = ["returns", "shipping", "sizing"]
NOBODY = Memory(summary="", facts={}, recent=[])
ANA = Memory(
    summary="",
    facts={"name": "Ana", "location": "Lisbon", "origin": "Porto", "job": "a nurse"},
    recent=[],
)


def persona(
    sociality: Sociality = "ambivert",
    leading: TemperamentName = "phlegmatic",
    *,
    name: str = "Rapport",
    role: str = "",
) -> Persona:
    weights = {temperament: 0.1 for temperament in get_args(TemperamentName)}
    weights[leading] = 0.7
    return Persona(
        id="p1",
        name=name,
        role=role,
        sociality=sociality,
        temperament=Temperament(**weights),
    )


def said(message: str, memory: Memory = NOBODY, **traits: str) -> str:
    result = social(message, persona(**traits), memory, TOPICS)  # type: ignore[arg-type]
    assert result.rest == "", result
    return result.said


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Hi there", "Hello! How can I help?"),
        ("hello!!", "Hello! How can I help?"),
        ("Hey Rapport :)", "Hello! How can I help?"),
        ("good morning", "Good morning! How can I help?"),
        ("Hiiii", "Hello! How can I help?"),
        ("How are you?", "I'm well, thank you. How can I help?"),
        ("hows it going", "I'm well, thank you. How can I help?"),
        ("Hi, how are you doing today?", "Hello! I'm well, thank you. How can I help?"),
        ("Thanks a lot!", "You're welcome. Is there anything else I can help with?"),
        ("thank u so much", "You're welcome. Is there anything else I can help with?"),
        ("ty", "You're welcome. Is there anything else I can help with?"),
        ("Cheers, Rapport.", "You're welcome. Is there anything else I can help with?"),
        ("appreciate it", "You're welcome. Is there anything else I can help with?"),
        ("Bye!", "Goodbye. Take care."),
        ("see you later", "Goodbye. Take care."),
        ("Good night", "Good night. Take care."),
        ("that's all, thanks", "You're welcome. Goodbye. Take care."),
        ("No, thanks.", "Goodbye. Take care."),
        ("ok", "Alright. Is there anything else I can help with?"),
        ("Cool.", "Alright. Is there anything else I can help with?"),
        ("great", "Alright. Is there anything else I can help with?"),
        ("\U0001f44d", "Alright. Is there anything else I can help with?"),
        ("ok thanks", "You're welcome. Is there anything else I can help with?"),
        (
            "You're awesome!",
            "Thank you, that's kind of you. Is there anything else I can help with?",
        ),
        ("nice to meet you", "Nice to meet you too. How can I help?"),
        ("Who are you?", "I'm Rapport, a virtual assistant. How can I help?"),
        ("whats your name", "My name is Rapport. How can I help?"),
        ("Are you a bot?", "I'm Rapport, a virtual assistant, not a human. How can I help?"),
        (
            "am i talking to a real person?",
            "I'm Rapport, a virtual assistant, not a human. How can I help?",
        ),
        ("What can you do?", "I can help with returns, shipping and sizing."),
        ("what can you help me with", "I can help with returns, shipping and sizing."),
        ("My name is Ana.", "Nice to meet you, Ana. How can I help?"),
        ("hi, my name is ana", "Hello! Nice to meet you, Ana. How can I help?"),
        ("call me Ana!", "Nice to meet you, Ana. How can I help?"),
        ("I live in Lisbon.", "Good to know, thank you. How can I help?"),
        ("I'm good, thanks. And you?", "I'm well, thank you. How can I help?"),
    ],
)
def test_each_social_form_gets_its_answer(message: str, expected: str) -> None:
    assert said(message) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("What's my name?", "You told me your name is Ana."),
        ("whats my name", "You told me your name is Ana."),
        ("Do you know my name?", "You told me your name is Ana."),
        ("who am I", "You told me your name is Ana."),
        ("Where do I live?", "You told me you live in Lisbon."),
        ("where am i from", "You told me you're from Porto."),
        ("What's my job?", "You told me you work as a nurse."),
        (
            "What do you know about me?",
            "You told me your name is Ana, you live in Lisbon, you're from Porto and you work "
            "as a nurse.",
        ),
        ("Hi!", "Hello, Ana! How can I help?"),
        ("thanks", "You're welcome, Ana. Is there anything else I can help with?"),
        ("Hi! What's my name?", "Hello! You told me your name is Ana."),
        ("call me Grace", "Got it, Grace. How can I help?"),
    ],
)
def test_facts_are_answered_from_memory(message: str, expected: str) -> None:
    assert said(message, ANA) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("What's my name?", "I don't know your name yet. You're welcome to tell me."),
        ("where do I live", "I don't know where you live yet. You're welcome to tell me."),
        ("what's my job", "I don't know your job yet. You're welcome to tell me."),
        (
            "what do you know about me?",
            "You haven't told me anything about yourself yet. You're welcome to tell me.",
        ),
    ],
)
def test_an_unknown_fact_is_said_to_be_unknown(message: str, expected: str) -> None:
    assert said(message) == expected


def test_a_name_stated_in_the_message_counts_before_memory_stores_it() -> None:
    assert said("My name is Ana. What's my name?") == (
        "Nice to meet you, Ana. You told me your name is Ana."
    )


def test_only_what_memory_holds_is_recalled() -> None:
    only_name = Memory(summary="", facts={"name": "Ana"}, recent=[])
    assert said("What do you know about me?", only_name) == "You told me your name is Ana."
    assert said("where do I live?", only_name) == (
        "I don't know where you live yet. You're welcome to tell me."
    )


@pytest.mark.parametrize(
    ("message", "said_", "rest"),
    [
        (
            "Hi! My name is Ana. Can I return shoes I wore once?",
            "Hello! Nice to meet you, Ana.",
            "Can I return shoes I wore once?",
        ),
        ("Hello, do you ship to Spain?", "Hello!", "do you ship to Spain?"),
        ("Hi there, what is your return policy?", "Hello!", "what is your return policy?"),
        ("Good morning! How do refunds work?", "Good morning!", "How do refunds work?"),
        ("Hi can I return shoes?", "Hello!", "can I return shoes?"),
        ("Hey Rapport how long is delivery?", "Hello!", "how long is delivery?"),
        ("Thanks, but what about shipping?", "You're welcome.", "what about shipping?"),
        ("Thanks! And do you ship to Spain?", "You're welcome.", "And do you ship to Spain?"),
        ("Ok, so how do I return it?", "", "how do I return it?"),
        ("Can I return shoes? Bye!", "", "Can I return shoes?"),
        ("Do you ship abroad? Thanks!", "You're welcome.", "Do you ship abroad?"),
        ("hi, I'm Ana", "Hello!", "I'm Ana"),
    ],
)
def test_the_social_part_is_split_from_the_question(message: str, said_: str, rest: str) -> None:
    assert social(message, persona(), NOBODY, TOPICS) == Social(said=said_, rest=rest)


# Real questions: none is social, however close it comes to a social form.
QUESTIONS = [
    "How are returns handled?",
    "Who are your suppliers?",
    "What is your return policy?",
    "How are you handling my refund?",
    "What's your return address?",
    "What are your opening hours?",
    "Who are you owned by?",
    "What can you do about a late delivery?",
    "What do you know about shipping to Spain?",
    "Are you open on Sundays?",
    "Can you help me with a return?",
    "What do I do?",
    "What do I do if my parcel is lost?",
    "Where do I send my return?",
    "What's up with my order?",
    "Thanks for the fast delivery but the box was damaged.",
    "Morning delivery options?",
    "Evening dresses in size 12?",
    "Hi-vis vests?",
    "Good quality boots for hiking?",
    "How long does shipping take?",
    "Do you know my order number?",
    "Who am I supposed to contact about a refund?",
    "Is this jacket waterproof?",
    "Where am I supposed to print the label?",
    "My name is on the order but the address is wrong.",
    "I live in a flat, can you deliver to the door?",
    "I live in Lisbon and I want to know how long delivery takes to get here from your shop.",
    "My name is Ana and I would like to return the shoes I bought.",
]


@pytest.mark.parametrize("question", QUESTIONS)
def test_a_real_question_is_never_social(question: str) -> None:
    assert social(question, persona(), ANA, TOPICS) == Social(said="", rest=question)


def test_a_message_with_nothing_social_comes_back_whole() -> None:
    message = "  Can I return shoes?\n\nAnd boots?  "
    assert social(message, persona(), NOBODY) == Social(said="", rest=message.strip())
    assert social("", persona(), NOBODY) == Social(said="", rest="")


WORDS_OF_EVERY_KIND = [
    "Hi there",
    "How are you?",
    "Thanks so much!",
    "bye",
    "ok",
    "You're great",
    "nice to meet you",
    "Who are you?",
    "What's your name?",
    "Are you a bot?",
    "What can you do?",
    "What's my name?",
    "Where do I live?",
    "What do you know about me?",
    "My name is Ana and I live in Lisbon.",
    "Hi! My name is Ana. Can I return shoes I wore once?",
    "Hello, do you ship to Spain?",
    "Good evening Rapport, thanks, bye!",
]


@pytest.mark.parametrize(("sociality", "leading"), VOICES)
def test_every_voice_speaks_whole_sentences(sociality: Sociality, leading: TemperamentName) -> None:
    for message, memory in itertools.product(WORDS_OF_EVERY_KIND, [NOBODY, ANA]):
        words = social(message, persona(sociality, leading), memory, TOPICS).said
        for sentence in sentences(words):
            assert sentence[0].isupper(), (message, words)
            assert sentence[-1] in ".!?", (message, words)


@pytest.mark.parametrize(("sociality", "leading"), VOICES)
def test_every_voice_keeps_the_meaning(sociality: Sociality, leading: TemperamentName) -> None:
    def says(message: str, memory: Memory = NOBODY) -> str:
        return social(message, persona(sociality, leading), memory, TOPICS).said

    assert "Ana" in says("What's my name?", ANA)
    assert "Lisbon" in says("where do I live?", ANA)
    assert "a nurse" in says("what's my job", ANA)
    assert all(fact in says("what do you know about me", ANA) for fact in ANA.facts.values())
    assert "don't know your name" in says("What's my name?")
    assert "Ana" in says("Hi!", ANA)
    assert "Ana" in says("My name is Ana.")
    assert "Rapport" in says("Who are you?") and "Rapport" in says("What's your name?")
    assert "not a human" in says("Are you a bot?")
    assert all(topic in says("What can you do?") for topic in TOPICS)
    assert says("Thanks!").startswith("You're")
    assert says("Hello, do you ship to Spain?") != ""


def test_traits_change_the_wording() -> None:
    lines = {social("Hi", persona(*voice), ANA).said for voice in VOICES}
    assert len(lines) >= 4
    recalled = {social("What's my name?", persona(*voice), ANA).said for voice in VOICES}
    assert len(recalled) == len(get_args(TemperamentName))


URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


def claims(text: str) -> set[str]:
    """Numbers, URLs, and capitalised words other than a sentence's first word and "I": what
    a reply could assert."""
    found = set(URL.findall(text))
    for sentence in sentences(URL.sub(" ", text)):
        for index, word in enumerate(WORD.findall(sentence)):
            first = index == 0
            if any(c.isdigit() for c in word) or (
                word[0].isupper() and not first and word not in ("I", "I'm")
            ):
                found.add(word)
    return found


HONESTY_MESSAGES = [
    *WORDS_OF_EVERY_KIND,
    "Hi, I'm 42 and I live at 12 Main St. What's my name?",
    "Thanks! Visit https://example.com for more.",
    "Good morning! My order 1234 was late.",
    "Who am I? I'm John from Acme.",
    "what do you know about me",
    "I work as a nurse. What's my job?",
    "I'm from Porto. Where am I from?",
]


@pytest.mark.parametrize(("sociality", "leading"), VOICES)
def test_no_reply_states_what_nobody_said(sociality: Sociality, leading: TemperamentName) -> None:
    who = persona(sociality, leading, name="Max", role="You are Max, the guide of Acme's store.")
    for message, memory in itertools.product(HONESTY_MESSAGES, [NOBODY, ANA]):
        words = social(message, who, memory, TOPICS).said
        allowed = " ".join([message, *memory.facts.values(), who.name, who.role, *TOPICS])
        for claim in claims(words):
            assert claim.casefold() in allowed.casefold(), (message, words, claim)


def test_the_same_state_gives_the_same_reply() -> None:
    for message, voice in itertools.product(WORDS_OF_EVERY_KIND, VOICES):
        first = social(message, persona(*voice), ANA, TOPICS)
        assert social(message, persona(*voice), ANA, TOPICS) == first


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("", "I'm Rapport, a virtual assistant."),
        (
            "A helpful assistant for Acme's store",
            "I'm Rapport, a helpful assistant for Acme's store.",
        ),
        ("The concierge of Hotel Lisboa.", "I'm Rapport, the concierge of Hotel Lisboa."),
        (
            "You are a guide for your customers. Answer briefly.",
            "I'm Rapport. I'm a guide for my customers.",
        ),
        ("You're Rapport, Acme's assistant:", "I'm Rapport, Acme's assistant."),
        ("I am the shop's assistant!", "I'm Rapport. I am the shop's assistant!"),
        ("Answer questions about returns only.", "I'm Rapport, a virtual assistant."),
        ("You are " + "very " * 60 + "helpful.", "I'm Rapport, a virtual assistant."),
    ],
)
def test_who_are_you_says_the_name_and_the_role(role: str, expected: str) -> None:
    reply = social("who are you?", persona("introvert", "choleric", role=role), NOBODY)
    assert reply == Social(said=expected + " What do you need?", rest="")


def test_what_can_you_do_names_the_topics_it_was_given() -> None:
    many = [f"topic {n}" for n in range(MAX_TOPICS + 2)]
    reply = social("what can you do?", persona(), NOBODY, many).said
    assert reply.endswith(f"{many[MAX_TOPICS - 1]} and more.") and many[MAX_TOPICS] not in reply
    assert social("What can you do?", persona(), NOBODY, ["  returns ", "returns"]).said == (
        "I can help with returns."
    )
    assert social("help", persona(), NOBODY).said == NO_TOPICS["ambivert"]


def test_a_first_name_stated_again_is_acknowledged_not_met() -> None:
    assert said("My name is Ana", ANA) == "Got it, Ana. How can I help?"


def test_the_users_name_is_said_once() -> None:
    assert said("Hi, thanks, bye", ANA) == "Hello, Ana! You're welcome. Goodbye. Take care."


def test_every_fact_asked_can_be_said_or_said_to_be_unknown() -> None:
    assert set(RECALL_FORMS) == {*FACT_SAYS, "all"} == set(UNKNOWN)


def test_every_form_is_written_as_it_is_read() -> None:
    tables = [*FORMS.values(), *RECALL_FORMS.values(), FILLER, OPENERS]
    for forms in tables:
        for form in forms.split("|"):
            words = form.split()
            assert words and [normalise(word) for word in words] == words, form
