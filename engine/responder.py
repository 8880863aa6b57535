"""The embedded grounded responder: the default reply backend, with no model at all.

It answers only with sentences taken from the persona's knowledge snippets. A snippet the
retriever scored ``RELEVANT`` or more is about the message; below that, down to
``RELATED``, only its sentences that share half the message's words count ("Can I return
my shoes?" scores 0.37 against a passage on returns that says "Returns are free for 30
days"). When no sentence is left, or none comes close to what is asked (``ANSWERS``), the
responder says plainly that its knowledge base does not cover it instead of inventing.

Choosing the sentence takes both lexical and embedding evidence. The words the best
snippet repeats (in two of its sentences or more) name what it is about, say "Lumen
backpack"; the message less those words is what is asked about it ("which colours does
the come in"). Each sentence is compared in meaning with that question, so "It is available
in rust red, ochre and plum" beats "The Lumen backpack is our choice for multi-day hikes",
which a comparison with the whole message prefers because it repeats the name. A sentence's
score adds its snippet's relevance (twice: finding the right document matters most), so a
sentence of the right document wins over the same sentence about another product.
BENCHMARKS.md ("Grounding") has the measurements behind these constants.

Its phrasing follows the persona: name, sociality and leading temperament pick the opener
and the no-answer line, and it greets the user by name once memory knows it. The same state
always gives the same reply.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import anyio.to_thread
import numpy as np

from engine.replies import (
    Embed,
    Emit,
    Reply,
    ReplyDelta,
    ReplyDone,
    ReplySources,
    ReplyStarted,
    Snippet,
    TurnContext,
    ignore,
)
from engine.sentences import sentences

WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_SENTENCES = 2
RELEVANT = 0.45
"""A snippet this similar to the message (cosine) is about it."""
RELATED = 0.3
"""A snippet between this and RELEVANT counts only through sentences sharing words."""
SHARED = 0.5
"""The share of the message's content words a sentence of a related snippet must hold."""
ANSWERS = 0.2
"""A sentence less similar than this to what is asked does not answer it."""
SNIPPET_WEIGHT = 2.0
SNIPPETS_READ = 3
"""Only the most relevant snippets are read: the answer is in the top three for 99 % of the
answerable questions measured, and every sentence read is a sentence embedded."""
SECOND_WITHIN = 0.05
"""A second sentence is quoted only when it scores nearly as well as the best."""
SENTENCE_CACHE = 4096
"""Sentence vectors kept (1.5 KB each): knowledge sentences come back turn after turn."""
SUFFIXES = ("ments", "ment", "ings", "ing", "ed", "s")
SIBILANT_PLURALS = ("sses", "xes", "zes", "ches", "shes")
"""Plurals that add "es" (boxes, churches); elsewhere only "s" goes (takes -> take)."""

# Words too common to show that a sentence is about the question.
STOPWORDS = frozenset(
    "a an the and or but if of to in on at for with by from as is are was were be been it "
    "its this that these those i you he she we they me my your our their do does did how "
    "what which who whom why when where can could should would will shall may might must "
    "about into than then there here so not no yes please tell explain me us".split()
)

OPENERS = {
    "extrovert": "Great question{name}! ",
    "ambivert": "Sure{name}. ",
    "introvert": "",
}
TEMPERAMENT_LEAD = {
    "sanguine": "Happily: ",
    "choleric": "In short: ",
    "phlegmatic": "",
    "melancholic": "As far as my notes go, ",
}
NO_ANSWER = {
    "extrovert": (
        "I wish I could help with that{name}, but my knowledge base has nothing on it. "
        "Ask me something else!"
    ),
    "ambivert": (
        "I don't have information on that{name}. My knowledge base doesn't cover it, "
        "so I'd rather not guess."
    ),
    "introvert": "I don't have information on that. My knowledge base doesn't cover it.",
}
NO_IMAGES = "I can't look at images, so I can only go by what you write. "


def stem(word: str) -> str:
    """A light suffix strip, so "pay", "pays" and "payment" meet."""
    if word.endswith(SIBILANT_PLURALS) and len(word) >= 5:
        return word[:-2]
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def words(text: str) -> set[str]:
    return {stem(w) for w in (m.lower() for m in WORD.findall(text)) if w not in STOPWORDS}


def topic_words(text: str) -> set[str]:
    """The words a passage repeats, in two of its sentences or more: what it is about."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for sentence in sentences(text):
        found = words(sentence)
        repeated |= seen & found
        seen |= found
    return repeated


def asked_about(message: str, top: Snippet) -> str:
    """``message`` less the words naming what the top snippet is about; the whole message
    when that would leave nothing."""
    topic = topic_words(top.text)
    kept = [w for w in WORD.findall(message) if stem(w.lower()) not in topic]
    return " ".join(kept) if any(stem(w.lower()) not in STOPWORDS for w in kept) else message


def choose(
    message: str, snippets: Sequence[Snippet], similarity: dict[str, float]
) -> list[tuple[str, str]]:
    """The (sentence, external_id) pairs that answer, in reading order; ``similarity`` is
    each sentence's cosine to what is asked."""
    asked = words(message)
    scored = []
    for rank, snippet in enumerate(snippets):
        for position, sentence in enumerate(sentences(snippet.text)):
            answers = similarity[sentence]
            shared = len(asked & words(sentence)) / len(asked) if asked else 0.0
            about = snippet.score >= RELEVANT or (snippet.score >= RELATED and shared >= SHARED)
            if about and answers >= ANSWERS:
                score = SNIPPET_WEIGHT * snippet.score + answers
                scored.append((-score, rank, position, sentence, snippet.external_id))
    if not scored:
        return []
    scored.sort()
    best = -scored[0][0]
    picked = [scored[0], *(s for s in scored[1:MAX_SENTENCES] if -s[0] >= best - SECOND_WITHIN)]
    # Quote in reading order: by snippet rank, then position within the snippet.
    return [(s, doc) for _, _, _, s, doc in sorted(picked, key=lambda p: (p[1], p[2]))]


class SentenceVectors:
    """Embeds what is asked together with the sentences not seen lately, in one call off
    the event loop, and remembers the sentences' vectors (least recently used go first)."""

    def __init__(self, embed: Embed, capacity: int = SENTENCE_CACHE) -> None:
        self._embed = embed
        self._capacity = capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    async def similarity(self, question: str, texts: list[str]) -> dict[str, float]:
        unique = list(dict.fromkeys(texts))
        missing = [t for t in unique if t not in self._cache]
        vectors = await anyio.to_thread.run_sync(self._embed, [question, *missing])
        for text, vector in zip(missing, vectors[1:], strict=True):
            self._cache[text] = vector
        for text in unique:
            self._cache.move_to_end(text)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        asked = vectors[0]
        return {t: float(self._cache[t] @ asked) for t in unique}


async def best_sentences(
    message: str, snippets: Sequence[Snippet], vectors: SentenceVectors
) -> list[tuple[str, str]]:
    ranked = sorted(snippets, key=lambda s: -s.score)[:SNIPPETS_READ]
    relevant = [s for s in ranked if s.score >= RELATED]
    if not relevant or not words(message):
        return []
    texts = [sentence for s in relevant for sentence in sentences(s.text)]
    asked = asked_about(message, relevant[0])
    return choose(message, relevant, await vectors.similarity(asked, texts))


class EmbeddedResponder:
    def __init__(self, embed: Embed) -> None:
        self._vectors = SentenceVectors(embed)

    async def reply(self, context: TurnContext, emit: Emit = ignore) -> Reply:
        emit(ReplyStarted())
        persona = context.persona
        name = context.memory.facts.get("name")
        with_name = f", {name}" if name else ""
        # The answer's own units, each sent as soon as it is decided: the note about an
        # image, then the persona's opener, then each quoted sentence (the slow part, which
        # waits for the embedder) or the no-answer line.
        units = [NO_IMAGES] if context.image is not None else []
        for unit in units:
            emit(ReplyDelta(unit))
        chosen = await best_sentences(context.message, context.snippets, self._vectors)
        if chosen:
            opener = OPENERS[persona.sociality].format(name=with_name)
            lead = TEMPERAMENT_LEAD[persona.temperament.leading]
            said = [opener + lead + chosen[0][0], *(sentence for sentence, _ in chosen[1:])]
            sources = list(dict.fromkeys(doc for _, doc in chosen))
        else:
            said = [NO_ANSWER[persona.sociality].format(name=with_name)]
            sources = []
        for index, unit in enumerate(said):
            piece = unit if index == 0 else " " + unit
            units.append(piece)
            emit(ReplyDelta(piece))
        reply = Reply(text="".join(units), sources=sources)
        emit(ReplySources(sources))
        emit(ReplyDone(reply))
        return reply
