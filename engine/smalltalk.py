"""Small talk: the social part of a message, answered in the persona's voice with no model.

The embedded responder quotes its knowledge and nothing else, so on its own it meets "Hi
there" with "I don't have information on that". This module finds the sentences of a message
that are social (greetings, thanks, goodbyes, "how are you", "who are you", "what can you
do", "what's my name", "my name is Ana", "ok"), answers them, and hands back the rest for the
knowledge answer: "Hi! My name is Ana. Can I return shoes I wore once?" is greeted with
"Hello! Nice to meet you, Ana." and leaves "Can I return shoes I wore once?".

What counts. A sentence is social only when every word of it belongs to a social form of the
tables below or to filler ("there", "so much", the persona's name), compared after case,
punctuation, apostrophes and emoji are dropped; so "How are returns handled?" is never "how
are you", and "Who are your suppliers?" never "who are you". Social clauses that open a
sentence before a comma or a dash ("Hello, do you ship to Spain?", "Thanks, but what about
shipping?"), or a greeting word that opens it with no comma at all ("Hi can I ..."), are split
off, and the rest of the sentence is left to answer.

Honesty. A reply holds no number, URL, date or name other than the persona's own name and
role, the topic labels it is given, and the facts the user stated: ``Memory.facts``, or this
message as :func:`engine.memory.extract_facts` reads it (the one rule for those, as memory will
store them). A fact that is not known is said to be unknown, and nothing claims knowledge.

Voice. Sociality picks each line and the leading temperament picks the closing offer and how
a fact is recalled; every variant is whole sentences ending in a stop, so traits change the
wording, never the grammar. The same inputs always give the same reply.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, NamedTuple

import msgspec

from engine.memory import Memory, extract_facts
from engine.personas import Persona, Sociality, TemperamentName
from engine.sentences import sentences


class Social(msgspec.Struct, frozen=True):
    said: str
    """The persona's words for the social part: whole sentences, "" when there are none."""
    rest: str
    """What is left of the message to answer from knowledge, "" when it was all social."""


Intent = Literal[
    "greeting",
    "wellbeing",
    "thanks",
    "goodbye",
    "acknowledgement",
    "praise",
    "pleased",
    "identity",
    "persona_name",
    "bot",
    "abilities",
    "recall",
    "introduction",
]


class Move(NamedTuple):
    """One social thing the user did, e.g. greeted ("Good morning") or asked a fact."""

    intent: Intent
    detail: str = ""
    """The greeting or goodbye to say back ("Good morning"), or the fact a recall asks or
    an introduction states ("name", "location", ...; "all" for everything known)."""


# --- the forms ------------------------------------------------------------------------------

# Each form is written as it reads after normalising: lowercase, no apostrophes ("whats"),
# a run of one letter cut to two ("hiiii" -> "hii"). Forms are separated by "|".
FORMS: dict[Intent, str] = {
    "greeting": """
        hi | hello | hey | hiya | heya | howdy | hallo | hullo | yo | greetings | hii | heyy
        | helloo | hey hey | hi hi | good morning | good afternoon | good evening | good day
        | morning | afternoon | evening
    """,
    "wellbeing": """
        how are you | how are you doing | how are you today | how are you doing today | how r u
        | how are u | how ru | hows it going | how is it going | how are things | how do you do
        | whats up | sup | wassup | how have you been | how you doing | are you ok
        | are you well | and you | what about you | how about you | hows your day
        | how is your day | hows your day going | hows life
    """,
    "thanks": """
        thanks | thank you | thank u | thankyou | thx | thnx | thanx | ty | tysm | tyvm
        | cheers | many thanks | much appreciated | appreciated | appreciate it
        | i appreciate it | i appreciate that | appreciate that | thanks a million
    """,
    "goodbye": """
        bye | bye bye | byebye | goodbye | good bye | see you | see ya | see you later
        | see you soon | cya | later | take care | good night | goodnight | night | farewell
        | talk to you later | talk later | ttyl | catch you later | have a good day
        | have a nice day | have a great day | have a good one | thats all | thats it
        | thats all i needed | im done | i am done | all done | nothing else | no thanks
        | no thank you | gotta go | got to go | i have to go | i need to go | im off
    """,
    "acknowledgement": """
        ok | okay | okey | okie | k | kk | alright | all right | cool | great | nice | good
        | perfect | awesome | excellent | wonderful | fantastic | amazing | sweet | got it
        | gotcha | i see | understood | makes sense | that makes sense | sounds good
        | that sounds good | fine | fair enough | noted | sure | yes | yeah | yep | yup | no
        | nope | right | oh | ah | hmm | lol | haha | hahaha | wow | thats great
        | thats helpful | that helps | thats perfect | thats good | thats nice | thats cool
        | very good | good to know | no problem | no worries | np | youre welcome
        | thats fine | all good | you too | im good | im fine | im great | im ok | im okay
        | im well | im doing well | im doing good | im doing great | doing well | not bad
        | good thanks | fine thanks | great thanks | im good thanks | im fine thanks
        | im great thanks | im well thanks | im good thank you | im fine thank you
    """,
    "praise": """
        youre great | youre awesome | youre amazing | youre the best | youre helpful
        | youre very helpful | youre so helpful | youre smart | youre brilliant | youre a star
        | you are great | you are awesome | you are amazing | you are the best
        | you are helpful | you are very helpful | you rock | good job | great job | nice job
        | well done | good work | great work | nice work | good bot | great help
        | that was helpful | that was very helpful | youve been helpful
        | youve been very helpful | you have been very helpful
    """,
    "pleased": """
        nice to meet you | pleased to meet you | good to meet you | great to meet you
        | nice meeting you | lovely to meet you | glad to meet you | nice to meet you too
    """,
    "identity": """
        who are you | who r u | who are u | what are you | who am i talking to
        | who am i talking with | who am i speaking to | who am i speaking with
        | who am i chatting with | introduce yourself
        | tell me about yourself | tell me about you
    """,
    "persona_name": """
        whats your name | what is your name | whats ur name | your name | do you have a name
        | what should i call you | what do i call you | what can i call you
        | what are you called | how should i call you | whats yours | what is yours
        | and yours
    """,
    "bot": """
        are you a bot | are you a robot | are you an ai | are you ai | are you a human
        | are you human | are you a person | are you a real person | are you real
        | are you a machine | are you a computer | are you a chatbot | are you a program
        | am i talking to a bot | am i talking to a human | am i talking to a real person
        | am i talking to a person | am i talking to a robot | am i talking to an ai
        | am i chatting with a bot | am i chatting with a human | is this a bot
        | is this a real person | is this a human | is this a robot | is this an ai
        | is this automated
    """,
    "abilities": """
        what can you do | what can you do for me | what can you help with
        | what can you help me with | what do you help with | how can you help
        | how can you help me | what are you able to do | what do you do | what do you know
        | what can i ask | what can i ask you | what can i ask you about | what topics do you know
        | what topics do you cover | what topics can you help with | what are you good at
        | help | help me | can you help | can you help me | what kind of questions can you answer
        | what questions can you answer | what do you cover | what can you tell me about
    """,
}

# Questions about what the user told us, by the fact they ask ("all": everything known).
# "What do I do?" alone is left out: after "My parcel is lost." it asks for advice, not a job.
RECALL_FORMS: dict[str, str] = {
    "name": """
        whats my name | what is my name | do you know my name | do you remember my name
        | you know my name | remember my name | who am i | do you know who i am
        | do you remember who i am | what do you call me
    """,
    "location": """
        where do i live | do you know where i live | do you remember where i live
        | where am i based | where am i located | whats my location | what is my location
    """,
    "origin": """
        where am i from | do you know where im from | do you remember where im from
        | do you know where i am from | where do i come from
    """,
    "job": """
        what do i do for a living | what do i do for work | whats my job | what is my job
        | whats my profession | what is my profession | whats my occupation
        | what is my occupation | what do i work as | do you know what i do
        | do you remember what i do
    """,
    "all": """
        what do you know about me | what do you remember about me
        | what else do you know about me | do you know me | do you remember me
        | what have i told you | what have i told you about me
        | what have i told you about myself | what did i tell you about me
        | what did i tell you about myself | tell me what you know about me
    """,
}

# Words around social forms that change nothing: "hi there", "thanks so much", "ok then".
FILLER = """
    there | again | so much | very much | a lot | a bunch | loads | then | all | everyone
    | everybody | folks | guys | friend | mate | buddy | dear | for now | for that | for this
    | for the help | for your help | for helping | for helping me | for everything | for all
    | for all your help | for the info | for the information | for the answer | for your time
    | for asking | well | so | and | but | also | just | really | too | please | um | uh | btw
    | by the way | anyway | oh well
"""
# The greetings that may open a sentence without a comma ("Hi can I return these?"); "Morning
# delivery?" shows why not every greeting may.
OPENERS = """
    hi | hello | hey | hiya | heya | howdy | hii | heyy | helloo | hi there | hello there
    | hey there | good morning | good afternoon | good evening
"""
# What a greeting or goodbye that names a time of day is answered with.
_DETAILS = {
    "good morning": "Good morning",
    "morning": "Good morning",
    "good afternoon": "Good afternoon",
    "afternoon": "Good afternoon",
    "good evening": "Good evening",
    "evening": "Good evening",
    "good day": "Good day",
    "good night": "Good night",
    "goodnight": "Good night",
    "night": "Good night",
}
# Words that state a fact around its value ("my name is", "i live in"); the value is found by
# extract_facts and masked, so an introduction is these words then a masked value.
_INTRO_WORDS = frozenset(
    "my name is names call me you can i im am called live living reside based located in "
    "currently now still also actually originally from come work working as".split()
)
# Words that join a split-off social clause to the rest ("Thanks, but what about ...").
_CONNECTIVES = frozenset("but and so also anyway well oh".split())
MAX_SOCIAL_WORDS = 16
"""A sentence longer than this is not small talk; it also bounds the work per sentence."""
_PERSONA = "\x00persona"  # the persona's name, masked: a filler ("hello Rapport")
_FACT = "\x00fact:"  # prefix of a masked fact value, e.g. "\x00fact:name"

Form = tuple[str, ...]
Table = dict[str, list[tuple[Form, Move | None]]]
"""Forms by their first word, longest first, each with its move (None: filler)."""


def _split(forms: str) -> Iterator[str]:
    return (" ".join(form.split()) for form in forms.split("|"))


def _table(entries: Sequence[tuple[str, Move | None]]) -> Table:
    table: Table = {}
    for text, move in entries:
        form = tuple(text.split())
        table.setdefault(form[0], []).append((form, move))
    for forms in table.values():
        forms.sort(key=lambda entry: -len(entry[0]))  # stable, so ties keep table order
    return table


def _moves(intent: Intent, forms: str) -> list[tuple[str, Move]]:
    """A table's forms with their move; a greeting or goodbye keeps its time of day."""
    return [(form, Move(intent, _DETAILS.get(form, ""))) for form in _split(forms)]


_TABLE = _table(
    [
        *(entry for intent, forms in FORMS.items() for entry in _moves(intent, forms)),
        *(
            (form, Move("recall", fact))
            for fact, forms in RECALL_FORMS.items()
            for form in _split(forms)
        ),
        *((form, None) for form in [*_split(FILLER), _PERSONA]),
    ]
)
_OPENER_TABLE = _table([*_moves("greeting", OPENERS), ("there", None), (_PERSONA, None)])


# --- reading --------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_APOSTROPHE = re.compile(r"['\u2019]")
_REPEATED = re.compile(r"([^\W\d_])\1{2,}")
# Characters that join two words into one rather than separate clauses ("hi-vis", "and/or").
_JOINERS = frozenset({"-", "/", "'", "\u2019"})


class Token(NamedTuple):
    word: str
    """Normalised, or a mask (the persona's name, a fact's value)."""
    start: int
    end: int


def normalise(word: str) -> str:
    """A word as the forms are written: lowercase, no apostrophes, long letter runs cut."""
    return _REPEATED.sub(r"\1\1", _APOSTROPHE.sub("", word.casefold()))


def _words(text: str) -> list[str]:
    return [normalise(match.group()) for match in _WORD.finditer(text)]


def _tokens(sentence: str, persona: Persona) -> list[Token]:
    """The sentence's words, with the persona's name and the facts it states masked."""
    tokens = [Token(normalise(m.group()), m.start(), m.end()) for m in _WORD.finditer(sentence)]
    for fact, value in extract_facts(sentence).items():
        tokens = _masked(tokens, _words(value), _FACT + fact)
    names = _words(persona.name)
    tokens = _masked(tokens, names, _PERSONA)
    return _masked(tokens, names[:1], _PERSONA)  # a first name alone ("thanks Ada")


def _masked(tokens: list[Token], words: list[str], mask: str) -> list[Token]:
    """``tokens`` with every run that spells ``words`` made one token, ``mask``."""
    if not words:
        return tokens
    out: list[Token] = []
    index = 0
    while index < len(tokens):
        run = tokens[index : index + len(words)]
        if [token.word for token in run] == words:
            out.append(Token(mask, run[0].start, run[-1].end))
            index += len(words)
        else:
            out.append(tokens[index])
            index += 1
    return out


def _parse(words: Sequence[str], table: Table, *, statements: bool = True) -> list[Move] | None:
    """The moves that ``words`` are made of, when every word belongs to a form, filler or
    (with ``statements``) a fact's statement; None otherwise, and when they are filler alone."""
    reached: dict[int, list[Move]] = {0: []}
    for index, word in enumerate(words):
        if index not in reached:
            continue
        candidates = list(table.get(word, ()))
        if statements and (end := _introduction_end(words, index)) is not None:
            fact = words[end - 1].removeprefix(_FACT)
            candidates.append((tuple(words[index:end]), Move("introduction", fact)))
        for form, move in candidates:
            end = index + len(form)
            if end not in reached and tuple(words[index:end]) == form:
                reached[end] = [*reached[index], move] if move else reached[index]
    return reached.get(len(words)) or None


def _introduction_end(words: Sequence[str], index: int) -> int | None:
    """Where a fact's statement that starts at ``index`` ends ("my name is <name>")."""
    end = index
    while end < len(words) and words[end] in _INTRO_WORDS:
        end += 1
    if end > index and end < len(words) and words[end].startswith(_FACT):
        return end + 1
    return None


def _read(sentence: str, persona: Persona) -> tuple[list[Move], str]:
    """The moves of the sentence's social part, and what is left of it to answer."""
    tokens = _tokens(sentence, persona)
    if not tokens:
        # A sentence of emoji alone ("👍") acknowledges; punctuation alone says nothing.
        emoji = any(unicodedata.category(char) == "So" for char in sentence)
        return ([Move("acknowledgement")] if emoji else []), sentence
    words = [token.word for token in tokens]
    if len(words) <= MAX_SOCIAL_WORDS and (moves := _parse(words, _TABLE)):
        return moves, ""
    # The longest social opening that ends where a clause does; a greeting may end anywhere.
    for cut in range(min(len(tokens) - 1, MAX_SOCIAL_WORDS), 0, -1):
        gap = sentence[tokens[cut - 1].end : tokens[cut].start]
        if gap.strip() in _JOINERS:
            continue
        opening = words[:cut]
        if moves := (
            _parse(opening, _TABLE)
            if gap.strip()
            else _parse(opening, _OPENER_TABLE, statements=False)
        ):
            while cut < len(tokens) - 1 and words[cut] in _CONNECTIVES:
                cut += 1
            return moves, sentence[tokens[cut].start :]
    return [], sentence


# --- the voice ------------------------------------------------------------------------------

# {name} is ", Ana" where the user is greeted by name, else "".
SALUTATION: dict[Sociality, str] = {"extrovert": "Hi", "ambivert": "Hello", "introvert": "Hello"}
GREETING: dict[Sociality, str] = {
    "extrovert": "{hello}{name}! It's good to hear from you.",
    "ambivert": "{hello}{name}!",
    "introvert": "{hello}{name}.",
}
FAREWELL: dict[Sociality, str] = {"extrovert": "Bye", "ambivert": "Goodbye", "introvert": "Goodbye"}
GOODBYE: dict[Sociality, str] = {
    "extrovert": "{bye}{name}! It was lovely talking with you.",
    "ambivert": "{bye}{name}. Take care.",
    "introvert": "{bye}.",
}
THANKS: dict[Sociality, str] = {
    "extrovert": "You're very welcome{name}!",
    "ambivert": "You're welcome{name}.",
    "introvert": "You're welcome.",
}
WELLBEING: dict[Sociality, str] = {
    "extrovert": "I'm doing great, thanks for asking!",
    "ambivert": "I'm well, thank you.",
    "introvert": "I'm fine, thanks.",
}
ACKNOWLEDGEMENT: dict[Sociality, str] = {
    "extrovert": "Alright!",
    "ambivert": "Alright.",
    "introvert": "Okay.",
}
PRAISE: dict[Sociality, str] = {
    "extrovert": "Thank you so much, that's kind of you!",
    "ambivert": "Thank you, that's kind of you.",
    "introvert": "Thank you.",
}
PLEASED: dict[Sociality, str] = {
    "extrovert": "Nice to meet you too{name}!",
    "ambivert": "Nice to meet you too{name}.",
    "introvert": "Likewise.",
}
# The user gave their name: first time, or again / a new one when memory had one.
MET: dict[Sociality, str] = {
    "extrovert": "Nice to meet you, {user}!",
    "ambivert": "Nice to meet you, {user}.",
    "introvert": "Nice to meet you, {user}.",
}
RENAMED: dict[Sociality, str] = {
    "extrovert": "Got it, {user}!",
    "ambivert": "Got it, {user}.",
    "introvert": "Got it, {user}.",
}
NOTED: dict[Sociality, str] = {
    "extrovert": "Good to know, thanks for telling me!",
    "ambivert": "Good to know, thank you.",
    "introvert": "Noted.",
}
PERSONA_NAME: dict[Sociality, str] = {
    "extrovert": "My name is {persona}!",
    "ambivert": "My name is {persona}.",
    "introvert": "My name is {persona}.",
}
BOT: dict[Sociality, str] = {
    "extrovert": "I'm {persona}, a virtual assistant, not a human, and I'm glad to help!",
    "ambivert": "I'm {persona}, a virtual assistant, not a human.",
    "introvert": "I'm a virtual assistant, not a human.",
}
ABILITIES: dict[Sociality, str] = {
    "extrovert": "I can help with {topics}!",
    "ambivert": "I can help with {topics}.",
    "introvert": "I can help with {topics}.",
}
NO_TOPICS: dict[Sociality, str] = {
    "extrovert": "I answer questions from my knowledge base, so ask away!",
    "ambivert": "I answer questions from my knowledge base.",
    "introvert": "I answer questions from my knowledge base.",
}
MAX_TOPICS = 6
"""Topics named in "I can help with ..."; more are "and more"."""
# A recalled fact: {facts} is "your name is Ana" or a list of such; the line is capitalised.
RECALL: dict[TemperamentName, str] = {
    "sanguine": "Of course, {facts}!",
    "choleric": "{facts}.",
    "phlegmatic": "You told me {facts}.",
    "melancholic": "If I remember rightly, {facts}.",
}
FACT_SAYS = {
    "name": "your name is {}",
    "location": "you live in {}",
    "origin": "you're from {}",
    "job": "you work as {}",
}
"""How each fact is said back; a fact without a line here is never recalled."""
UNKNOWN = {
    "name": "I don't know your name yet.",
    "location": "I don't know where you live yet.",
    "origin": "I don't know where you're from yet.",
    "job": "I don't know your job yet.",
    "all": "You haven't told me anything about yourself yet.",
}
INVITE: dict[Sociality, str] = {
    "extrovert": "Tell me whenever you like!",
    "ambivert": "You're welcome to tell me.",
    "introvert": "",
}
# The closing line of an all-social message: an offer after an opening ("Hi"), another
# after a closing ("Thanks"); none after a goodbye, an answer (a recall, abilities), or
# when the knowledge answer follows.
OFFER: dict[TemperamentName, str] = {
    "sanguine": "What can I do for you?",
    "choleric": "What do you need?",
    "phlegmatic": "How can I help?",
    "melancholic": "Let me know how I can help.",
}
MORE: dict[TemperamentName, str] = {
    "sanguine": "Anything else I can do for you?",
    "choleric": "Anything else?",
    "phlegmatic": "Is there anything else I can help with?",
    "melancholic": "Let me know if there's anything else.",
}
_OPENING: frozenset[Intent] = frozenset(
    {"greeting", "wellbeing", "introduction", "pleased", "identity", "persona_name", "bot"}
)
_CLOSING: frozenset[Intent] = frozenset({"thanks", "acknowledgement", "praise"})
# Lines with room for the user's name ({name}).
_ADDRESSED: frozenset[Intent] = frozenset({"greeting", "goodbye", "thanks", "pleased"})

ROLE_CHARS = 200
"""A role's first sentence longer than this is instructions, not something to say."""
_YOU_ARE = re.compile(r"you(?:\s+are|['\u2019]re)\s+", re.IGNORECASE)
_YOUR = re.compile(r"\byour(self)?\b", re.IGNORECASE)
_ARTICLE_START = re.compile(r"(?:an?|the)\s", re.IGNORECASE)
_I_AM_START = re.compile(r"i(?:\s+am|['\u2019]m)\s", re.IGNORECASE)
_TRAILING = re.compile(r"[\s,;:\u2013\u2014-]+$")


def social(message: str, persona: Persona, memory: Memory, topics: Sequence[str] = ()) -> Social:
    """The persona's answer to the social sentences of ``message``, and the rest of it.

    ``topics`` are labels of the documents the persona knows, for "what can you do".
    A message with nothing social comes back whole as ``rest``, with ``said`` empty.
    """
    moves: list[Move] = []
    rest: list[str] = []
    for sentence in sentences(message, lowercase_starts=True):  # chat, not edited prose
        found, left = _read(sentence, persona)
        moves += found
        if _WORD.search(left):
            rest.append(left)
    if not moves:
        return Social(said="", rest=message.strip())
    stated = extract_facts(message)
    said = _reply(moves, persona, memory.facts, stated, topics, answering=bool(rest))
    return Social(said=said, rest=" ".join(rest))


def _reply(
    moves: Sequence[Move],
    persona: Persona,
    remembered: Mapping[str, str],
    stated: Mapping[str, str],
    topics: Sequence[str],
    *,
    answering: bool,
) -> str:
    kept = _kept(moves, answering)
    facts = {**remembered, **stated}
    user = facts.get("name")
    # The user's name is said once: by the line that states or recalls it, else by the first
    # line with room for it.
    named = any(
        move in (Move("introduction", "name"), Move("recall", "name"), Move("recall", "all"))
        for move in kept
    )
    lines = []
    for move in kept:
        address = ""
        if user and not named and move.intent in _ADDRESSED:
            address, named = f", {user}", True
        lines.append(_line(move, persona, remembered, facts, topics, address))
    if kept and not answering and all(move.intent != "goodbye" for move in kept):
        last = kept[-1].intent
        if last in _OPENING:
            lines.append(OFFER[persona.temperament.leading])
        elif last in _CLOSING:
            lines.append(MORE[persona.temperament.leading])
    return " ".join(line for line in lines if line)


def _kept(moves: Sequence[Move], answering: bool) -> list[Move]:
    """The moves worth a line, each once, in the order they came but goodbyes last. A bare
    "ok" earns one only when it is all there is; before a question, "ok" and "bye" are
    answered by the answer."""
    if any(move.intent == "introduction" for move in moves):
        # One line for all the facts stated: "Nice to meet you" when the name is among them.
        fact = "name" if Move("introduction", "name") in moves else "other"
        moves = [Move("introduction", fact) if m.intent == "introduction" else m for m in moves]
    kept = list(dict.fromkeys(moves))
    if answering:
        kept = [m for m in kept if m.intent not in ("acknowledgement", "goodbye")]
    if any(move.intent != "acknowledgement" for move in kept):
        kept = [m for m in kept if m.intent != "acknowledgement"]
    # A goodbye is said last, whatever came after it ("That's all, thanks").
    return sorted(kept, key=lambda move: move.intent == "goodbye")


def _line(
    move: Move,
    persona: Persona,
    remembered: Mapping[str, str],
    facts: Mapping[str, str],
    topics: Sequence[str],
    address: str,
) -> str:
    voice = persona.sociality
    match move.intent:
        case "greeting":
            return GREETING[voice].format(hello=move.detail or SALUTATION[voice], name=address)
        case "goodbye":
            return GOODBYE[voice].format(bye=move.detail or FAREWELL[voice], name=address)
        case "thanks":
            return THANKS[voice].format(name=address)
        case "pleased":
            return PLEASED[voice].format(name=address)
        case "wellbeing":
            return WELLBEING[voice]
        case "acknowledgement":
            return ACKNOWLEDGEMENT[voice]
        case "praise":
            return PRAISE[voice]
        case "identity":
            return _who(persona)
        case "persona_name":
            return PERSONA_NAME[voice].format(persona=persona.name)
        case "bot":
            return BOT[voice].format(persona=persona.name)
        case "abilities":
            return _abilities(topics, voice)
        case "recall":
            return _recall(move.detail, facts, persona)
        case "introduction":
            if move.detail != "name":
                return NOTED[voice]
            table = RENAMED if "name" in remembered else MET
            return table[voice].format(user=facts["name"])


def _recall(fact: str, facts: Mapping[str, str], persona: Persona) -> str:
    """The facts asked for, said back; or that they are not known yet."""
    asked = list(FACT_SAYS) if fact == "all" else [fact]
    known = [FACT_SAYS[name].format(facts[name]) for name in asked if name in facts]
    if known:
        return _capitalised(RECALL[persona.temperament.leading].format(facts=listed(known)))
    invite = INVITE[persona.sociality]
    return f"{UNKNOWN[fact]} {invite}" if invite else UNKNOWN[fact]


def _abilities(topics: Sequence[str], voice: Sociality) -> str:
    named = named_topics(topics)
    return ABILITIES[voice].format(topics=named) if named else NO_TOPICS[voice]


def named_topics(topics: Sequence[str]) -> str:
    """Topics read out: each once, at most ``MAX_TOPICS``, then "more"; "" for none."""
    labels = list(dict.fromkeys(" ".join(topic.split()) for topic in topics if topic.strip()))
    shown = labels[:MAX_TOPICS] + (["more"] if len(labels) > MAX_TOPICS else [])
    return listed(shown)


def _who(persona: Persona) -> str:
    """The persona introducing itself: its name, and its role when that reads as a
    description ("A guide for Acme's store", "You are a guide ..."); a role that reads as
    instructions ("Answer briefly.") is not said."""
    role = _role(persona.role)
    if not role:
        return f"I'm {persona.name}, a virtual assistant."
    if _ARTICLE_START.match(role):
        return f"I'm {persona.name}, {role[0].lower()}{role[1:]}"
    if persona.name.casefold() in role.casefold():  # "I'm Max, a guide ..."
        return role
    return f"I'm {persona.name}. {role}"


def _role(role: str) -> str:
    """The role's first sentence as the persona says it, ending in a stop: "You are a guide
    for your shop" -> "I'm a guide for my shop."; "" when it is no description."""
    found = sentences(" ".join(role.split()))
    first = _TRAILING.sub("", found[0]) if found else ""
    if not first or len(first) > ROLE_CHARS:
        return ""
    if you := _YOU_ARE.match(first):
        first = "I'm " + _YOUR.sub(lambda m: "my" + (m.group(1) or ""), first[you.end() :])
    if not (_ARTICLE_START.match(first) or _I_AM_START.match(first)):
        return ""
    first = first[0].upper() + first[1:]
    return first if first[-1] in ".!?\u2026" else first + "."


def listed(items: Sequence[str]) -> str:
    """Items read out as a list: "a", "a and b", "a, b and c"."""
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
