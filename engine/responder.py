"""The embedded grounded responder: the default reply backend, with no model at all.

It answers only with sentences taken from the persona's knowledge snippets: the ones that
best match the message (the retriever's score plus word overlap with the message). When no
snippet matches, it says so plainly instead of inventing. Its phrasing follows the persona:
name, sociality and leading temperament pick the opener and the no-answer line, and it
greets the user by name once memory knows it. The same state always gives the same reply.
"""

from __future__ import annotations

import re

from engine.personas import Persona
from engine.replies import OnDelta, Reply, Snippet, TurnContext

SENTENCE = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_SENTENCES = 2
MIN_OVERLAP = 0.3
"""A snippet sentence sharing less of the message's words than this is not an answer..."""
CLOSE_MEANING = 0.5
"""...unless its snippet is this similar in meaning to the message (cosine), in which case
the snippet's first sentence answers even with no word in common."""
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


def leading_temperament(persona: Persona) -> str:
    t = persona.temperament
    weights = [
        ("sanguine", t.sanguine),
        ("choleric", t.choleric),
        ("phlegmatic", t.phlegmatic),
        ("melancholic", t.melancholic),
    ]
    # Ties go to the earlier name, so equal weights (the default) pick one steadily.
    return max(weights, key=lambda item: item[1])[0]


def best_sentences(message: str, snippets: list[Snippet]) -> list[tuple[str, str]]:
    """The (sentence, external_id) pairs that best answer ``message``, in snippet order."""
    asked = words(message)
    if not asked:
        return []
    scored = []
    for rank, snippet in enumerate(snippets):
        for position, sentence in enumerate(SENTENCE.split(snippet.text.strip())):
            overlap = len(asked & words(sentence)) / len(asked)
            if overlap >= MIN_OVERLAP or (position == 0 and snippet.score >= CLOSE_MEANING):
                score = overlap + snippet.score
                scored.append((-score, rank, position, sentence, snippet.external_id))
    picked = sorted(scored)[:MAX_SENTENCES]
    # Quote in reading order: by snippet rank, then position within the snippet.
    return [(s, doc) for _, _, _, s, doc in sorted(picked, key=lambda p: (p[1], p[2]))]


class EmbeddedResponder:
    async def reply(self, context: TurnContext, on_delta: OnDelta | None = None) -> Reply:
        persona = context.persona
        name = context.memory.facts.get("name")
        with_name = f", {name}" if name else ""
        prefix = NO_IMAGES if context.image is not None else ""
        chosen = best_sentences(context.message, context.snippets)
        if chosen:
            opener = OPENERS[persona.sociality].format(name=with_name)
            lead = TEMPERAMENT_LEAD[leading_temperament(persona)]
            body = " ".join(sentence for sentence, _ in chosen)
            text = prefix + opener + lead + body
            sources = list(dict.fromkeys(doc for _, doc in chosen))
        else:
            text = prefix + NO_ANSWER[persona.sociality].format(name=with_name)
            sources = []
        if on_delta is not None:
            pieces = text.split(" ")
            for index, piece in enumerate(pieces):
                await on_delta(piece if index == len(pieces) - 1 else piece + " ")
        return Reply(text=text, sources=sources)
