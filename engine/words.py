"""Which words of a text say what it is about: the one rule shared by lexical retrieval and
the responder.

Lowercase runs of letters and digits, less words too common to tell texts apart, each with a
light suffix strip so that "pay", "pays" and "payment" meet. The knowledge base ranks chunks
by these words (BM25, ``kb.lexical``) and the responder checks that a sentence shares them
with the question; unless both draw the same lines, a chunk found for a word would hold no
sentence the responder accepts for it.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[^\W_]+", re.UNICODE)
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


def stem(word: str) -> str:
    """A light suffix strip, so "pay", "pays" and "payment" meet."""
    if word.endswith(SIBILANT_PLURALS) and len(word) >= 5:
        return word[:-2]
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def terms(text: str) -> list[str]:
    """The text's telling words, stemmed, in order, repeats kept (they count in BM25)."""
    return [stem(w) for w in (m.lower() for m in WORD.findall(text)) if w not in STOPWORDS]


def words(text: str) -> set[str]:
    return set(terms(text))


REFERRING = frozenset("it its itself this these those they them their theirs one ones".split())
"""Words by which a message points back at what was said before ("How heavy is it?"). Not
"that", which begins as many new questions as it points back ("a tent that sleeps four")."""
CONTINUING = (("and",), ("what", "about"), ("how", "about"))
"""Openings of a message that goes on from the last one without a word pointing back ("And
the price?", "What about the warranty?")."""


def refers_back(text: str) -> bool:
    """Whether the text points back at something said before: a word of ``REFERRING``, or
    an opening of ``CONTINUING``."""
    said = [w.lower() for w in WORD.findall(text)]
    return any(w in REFERRING for w in said) or any(
        tuple(said[: len(opening)]) == opening for opening in CONTINUING
    )
