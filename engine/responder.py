"""The embedded grounded responder: the default reply backend, with no model at all.

It answers the social part of a message (greetings, thanks, "who are you", "what's my
name": :mod:`engine.smalltalk`) in the persona's voice, and the rest only with sentences
taken from the persona's knowledge snippets. The retriever hands them over by document, best
document first, each document's best chunks together; the first document that answers is
quoted. A document whose best snippet, or the document as a whole (its own vector, as the
ranking counts it: :attr:`engine.replies.Snippet.closeness`), scores ``RELEVANT`` or more is
about the message; below that, down to ``RELATED``, only its sentences that share half the
message's words count ("Can I return my shoes?" scores 0.37 against a passage on returns
that says "Returns are free for 30 days"). "Can I return shoes I wore once?" scores 0.44
against a returns policy that says items must be unused, and is answered. The cut was
chosen on five evaluation sets, among the cuts that decline every off-topic question of
each and of the product bench, each figure reported out of sample (BENCHMARKS.md, "Replies
on knowledge bases nobody tuned for"): at 0.38 "Do you sell fishing rods?" is answered from
an outdoor shop's trekking poles. "Is there a scanf() or sscanf() equivalent?" scores 0.34
against its best chunk, and is answered because its document, whole, scores over the cut.
When no sentence is left, or
none comes close to what is asked (``ANSWERS``), it says plainly that its knowledge does
not cover it, names the topics it does cover, and invents nothing.

Choosing the sentence takes both lexical and embedding evidence. The words the snippet
repeats (in two of its sentences or more) name what it is about, say "Lumen backpack"; the
message less those words is what is asked about it ("which colours does the come in"). Each
sentence is compared in meaning with that question, so "It is available in rust red, ochre
and plum" beats "The Lumen backpack is our choice for multi-day hikes", which a comparison
with the whole message prefers because it repeats the name. Sentence vectors are made at
ingest, each sentence embedded on its own (``kb.worker``); only what is asked and the
message are embedded here. Other documents nearly as close as the quoted one are named
after the quote and cited too, up to ``MAX_SOURCES``. BENCHMARKS.md ("Grounding") has the
measurements behind these constants.

Its phrasing follows the persona: sociality and leading temperament pick the lead-in, the
pointer to more and the no-answer line, each a whole sentence, so traits change the wording
and never the grammar or the quote; it calls the user by name once memory knows it. The same
state always gives the same reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import anyio.to_thread
import numpy as np

from engine.recent import Recent
from engine.replies import (
    RELATED,
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
from engine.smalltalk import listed, named_topics, social
from engine.words import STOPWORDS, WORD, stem, words

MAX_SENTENCES = 2
RELEVANT = 0.40
"""A snippet this similar to the message (cosine) is about it; between ``RELATED``
(:mod:`engine.replies`) and this, it counts only through sentences sharing words."""
SHARED = 0.5
"""The share of the message's content words a sentence of a related snippet must hold."""
ANSWERS = 0.2
"""A sentence this close (cosine) to what is asked (``asked_about``) answers it."""
ANSWERS_WITH_MESSAGE = 0.6
"""So does one whose cosines to what is asked and to the whole message add up to this.
What is asked is the sharper test, but can be too little to judge by alone ("Why doesn't
list.sort() return the sorted list?" less the passage's topic words is "Why doesn't the");
the whole message alone rewards a sentence that merely names the subject. Measured: "Is
the Lumen backpack vegan?" against "The Lumen backpack is our choice for multi-day hikes"
is 0.04 + 0.52 and is declined; "Can I return shoes I wore once?" against "Returned items
must be unused" is 0.19 + 0.46 and answers."""
SNIPPETS_READ = 3
"""Only the most relevant documents are read: the answer is in the top three for 99 % of the
answerable questions measured, and every sentence read is a sentence embedded."""
SECOND_WITHIN = 0.05
"""A second sentence is quoted only when it scores nearly as well as the best."""
SENTENCE_CACHE = 4096
"""Sentence and question vectors kept (1.5 KB each): knowledge sentences come back turn after
turn, and so do common questions."""
# A lead-in is a whole sentence before the quote, never a fragment glued to it ("Happily:
# Yes."): the persona's traits change the words, the quote stays as the document says it.
GREETED_LEAD = {
    "extrovert": ("Good question!", "Good question, {name}!"),
    "ambivert": ("", "Sure, {name}."),
    "introvert": ("", ""),
}
"""The sociality's lead-in, without and with the user's name."""
TEMPERAMENT_LEAD = {
    "sanguine": "Happy to help with that.",
    "choleric": "",
    "phlegmatic": "Here's what I have on that.",
    "melancholic": "Here is what my notes say.",
}
MORE_IN = {
    "extrovert": "You'll find more on this in {documents}!",
    "ambivert": "There is more on this in {documents}.",
    "introvert": "See also {documents}.",
}
NO_ANSWER = {
    "extrovert": "I wish I could help with that{name}, but my knowledge base has nothing on it.",
    "ambivert": "I don't have information on that{name}. My knowledge base doesn't cover it, "
    "so I'd rather not guess.",
    "introvert": "I don't have information on that. My knowledge base doesn't cover it.",
}
CAN_HELP = {
    "extrovert": "I'd love to help with {topics}, though!",
    "ambivert": "I can help with {topics}.",
    "introvert": "I can help with {topics}.",
}
NO_IMAGES = "I can't look at images, so I can only go by what you write."
MAX_SOURCES = 3
"""Documents a reply cites: the one it quotes and up to two more that cover the question."""
RELATED_WITHIN = 0.3
"""A further document is cited when it is this close to the quoted one..."""
CITED = 0.3
"""...and at least this close to the question. Lower than ``RELEVANT``: the reply already
answers from a document that is about the question, and points to others beside it."""
UNLABELLED = ("another document", "two other documents")


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


def by_document(snippets: Sequence[Snippet]) -> list[list[Snippet]]:
    """The retriever's snippets as documents, in its order: each document's chunks come
    together, its best first."""
    documents: dict[str, list[Snippet]] = {}
    for snippet in snippets:
        documents.setdefault(snippet.external_id, []).append(snippet)
    return list(documents.values())


def choose(
    message: str,
    documents: Sequence[list[Snippet]],
    similarity: dict[str, np.ndarray],
    relevant: float = RELEVANT,
) -> tuple[Snippet, list[str]] | None:
    """The first document, in the retriever's order, that answers (as its best snippet),
    and the sentences of its snippets to quote, in reading order. ``similarity`` is each
    sentence's cosine to what is asked (``asked_about``) and to the whole message: the first
    ranks the sentences, both say whether a sentence answers at all (``ANSWERS``,
    ``ANSWERS_WITH_MESSAGE``). Whether a document is about the question at all is its best
    snippet's closeness (the chunk's score, or the whole document's where that is higher):
    the chunk that holds the answer need not be the closest one."""
    asked = words(message)
    for chunks in documents:
        best = chunks[0]
        level = best.closeness
        scored = []
        for rank, snippet in enumerate(chunks):
            for position, sentence in enumerate(sentences(snippet.text)):
                closeness = similarity[sentence]
                answers = float(closeness[0])
                shared = len(asked & words(sentence)) / len(asked) if asked else 0.0
                about = level >= relevant or (level >= RELATED and shared >= SHARED)
                if about and (answers >= ANSWERS or float(closeness.sum()) >= ANSWERS_WITH_MESSAGE):
                    scored.append((-answers, rank, position, sentence))
        if scored:
            scored.sort()
            top = -scored[0][0]
            picked = dict.fromkeys(
                (rank, position, sentence)
                for answers, rank, position, sentence in scored[:MAX_SENTENCES]
                if -answers >= top - SECOND_WITHIN
            )
            # Chunks overlap: a sentence they share is quoted once, in reading order.
            said = dict.fromkeys(sentence for _, _, sentence in sorted(picked))
            return best, list(said)
    return None


ASKING = frozenset(
    "how what which who whom whose why when where can could do does did is are was were "
    "will would should shall may might have has any tell explain show give help".split()
)
"""First words of a question or a request; with a "?", they tell a question from a remark."""


def asks(text: str) -> bool:
    first = WORD.search(text)
    return "?" in text or (first is not None and first.group().lower() in ASKING)


def related(quoted: Snippet, snippets: Sequence[Snippet]) -> list[Snippet]:
    """Other documents the reply points to (as their best snippets): about the question,
    nearly as close as the one quoted, in the retriever's order."""
    return [
        s
        for s in (chunks[0] for chunks in by_document(snippets))
        if s.external_id != quoted.external_id
        and s.score >= CITED
        and s.score >= quoted.score - RELATED_WITHIN
    ][: MAX_SOURCES - 1]


class SentenceVectors:
    """Cosines of what is asked to the snippets' sentences. Sentence vectors come with the
    snippets, made at ingest; those that do not (a chunk indexed before they were, or a
    sentence past the model's truncation) are embedded here with the question, in one call
    off the event loop, and remembered (least recently used go first)."""

    def __init__(self, embed: Embed, capacity: int = SENTENCE_CACHE) -> None:
        self._embed = embed
        self._cache: Recent[str, np.ndarray] = Recent(capacity)

    async def similarity(
        self,
        questions: list[str],
        snippets: Sequence[Snippet],
        embedded: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Each sentence's cosines to each of ``questions``; a question among ``embedded``
        (retrieval's, :attr:`TurnContext.embedded`) is not embedded again."""
        embedded = embedded or {}
        known: dict[str, np.ndarray] = {}
        for snippet in snippets:
            said = sentences(snippet.text)
            if len(snippet.sentence_vectors) == len(said):
                for sentence, vector in zip(said, snippet.sentence_vectors, strict=True):
                    if vector is not None:
                        known.setdefault(sentence, vector)
        texts = [t for s in snippets for t in sentences(s.text) if t not in known]
        unique = list(dict.fromkeys(texts))
        # Each question embedded costs about as much as the retrieval's own embedding; the
        # whole message usually is retrieval's question (BENCHMARKS.md, "Speed after issue 25").
        # What is asked comes back as sentences do (a starter prompt, a common question), and
        # is remembered with them: a text has one vector, whatever it is.
        asking = [q for q in dict.fromkeys(questions) if q not in embedded]
        cached = {t: v for t in (*asking, *unique) if (v := self._cache.get(t)) is not None}
        to_embed = [t for t in dict.fromkeys((*asking, *unique)) if t not in cached]
        vectors = await anyio.to_thread.run_sync(self._embed, to_embed) if to_embed else []
        fresh = dict(zip(to_embed, vectors, strict=True))
        for text, vector in fresh.items():
            self._cache.put(text, vector)
        found = embedded | cached | fresh
        known |= {t: found[t] for t in unique}
        asked = np.stack([found[q] for q in questions])
        return {t: asked @ v for t, v in known.items()}


async def best_sentences(
    message: str,
    snippets: Sequence[Snippet],
    vectors: SentenceVectors,
    relevant: float = RELEVANT,
    embedded: dict[str, np.ndarray] | None = None,
) -> tuple[Snippet, list[str]] | None:
    documents = [d for d in by_document(snippets)[:SNIPPETS_READ] if d[0].closeness >= RELATED]
    if not documents or not words(message):
        return None
    asked = asked_about(message, documents[0][0])
    read = [snippet for chunks in documents for snippet in chunks]
    similarity = await vectors.similarity([asked, message], read, embedded)
    return choose(message, documents, similarity, relevant)


_ENDS_SENTENCE = re.compile(r"[.!?\u2026][\"')\]\u2019\u201d]*$")


def separator(before: str) -> str:
    """What goes between two units: a space after a sentence; a blank line after a quote
    that ends without a stop (code, a list), so that what follows starts a paragraph of its
    own instead of running on from it."""
    return " " if _ENDS_SENTENCE.search(before.rstrip()) else "\n\n"


class EmbeddedResponder:
    def __init__(self, embed: Embed, *, relevant: float = RELEVANT) -> None:
        """``relevant``: the cut (``RELEVANT``), a parameter so that bench/tuning.py can
        measure others."""
        self._vectors = SentenceVectors(embed)
        self._relevant = relevant

    async def reply(self, context: TurnContext, emit: Emit = ignore) -> Reply:
        emit(ReplyStarted())
        persona = context.persona
        talk = social(context.message, persona, context.memory, context.topics)
        # Each unit is sent as soon as it is decided: the note about an image and the answer
        # to the social part first, then the answer from knowledge, which waits for the
        # embedder.
        units = [NO_IMAGES] if context.image is not None else []
        if talk.said:
            units.append(talk.said)
        for unit in units:
            emit(ReplyDelta(unit if unit is units[0] else " " + unit))
        sources: list[str] = []
        answer: list[str] = []
        if talk.rest or not talk.said:
            chosen = await best_sentences(
                talk.rest, context.snippets, self._vectors, self._relevant, context.embedded
            )
            if chosen is not None:
                answer, sources = self._quote(context, *chosen, greeted=bool(talk.said))
            elif asks(talk.rest) or not talk.said:
                answer = self._no_answer(context, greeted=bool(talk.said))
            # Otherwise a remark after the social part ("Hi, I'm Ana"): that answer will do.
        for unit in answer:
            piece = separator(units[-1]) + unit if units else unit
            units.append(piece)
            emit(ReplyDelta(piece))
        reply = Reply(text="".join(units), sources=sources)
        emit(ReplySources(sources))
        emit(ReplyDone(reply))
        return reply

    @staticmethod
    def _quote(
        context: TurnContext, quoted: Snippet, said: list[str], *, greeted: bool
    ) -> tuple[list[str], list[str]]:
        persona = context.persona
        name = context.memory.facts.get("name")
        plain, addressed = GREETED_LEAD[persona.sociality]
        lead = [] if greeted else [addressed.format(name=name) if name else plain]
        lead.append(TEMPERAMENT_LEAD[persona.temperament.leading])
        also = related(quoted, context.snippets)
        units = [" ".join(part for part in (*lead, said[0]) if part), *said[1:]]
        if also:
            labelled = [f"\u201c{s.label}\u201d" for s in also if s.label]
            unnamed = len(also) - len(labelled)
            documents = labelled + ([UNLABELLED[unnamed - 1]] if unnamed else [])
            units.append(MORE_IN[persona.sociality].format(documents=listed(documents)))
        return units, [quoted.external_id, *(s.external_id for s in also)]

    @staticmethod
    def _no_answer(context: TurnContext, *, greeted: bool) -> list[str]:
        persona = context.persona
        name = context.memory.facts.get("name")
        units = [
            NO_ANSWER[persona.sociality].format(name=f", {name}" if name and not greeted else "")
        ]
        if topics := named_topics(context.topics):
            units.append(CAN_HELP[persona.sociality].format(topics=topics))
        return units
