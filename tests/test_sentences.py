"""The one sentence rule: where sentences end, and that chunks and the responder agree on it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from engine.replies import Snippet
from engine.responder import SentenceVectors, best_sentences
from engine.sentences import paragraph_spans, sentence_spans, sentences
from kb.chunking import chunk_text
from kb.embedder import shared_embedder

# Sentences whose stop is followed by a closing quote or bracket, or is an ellipsis: the
# responder's old rule, a split only right after . ! or ?, ran each into the next one.
QUOTED = [
    'The clerk said "Returns are free."',
    "Shipping takes a while\u2026",
    "Ask us anything (we answer within a day.)",
    "The lamp costs 40 euros.",
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" ".join(QUOTED), QUOTED),
        ("He wrote \u201cYes!\u201d Then he left.", ["He wrote \u201cYes!\u201d", "Then he left."]),
        (
            "Bring tools, e.g. a hammer. Start at 9 a.m. sharp!",
            [
                "Bring tools, e.g. a hammer.",
                "Start at 9 a.m. sharp!",
            ],
        ),
        ("It opened in 2019. 40 people work here.", ["It opened in 2019.", "40 people work here."]),
        ("開店は九時です。日曜は休みです。", ["開店は九時です。", "日曜は休みです。"]),
        (
            "Body text wraps\nonto a second line. Next.",
            [
                "Body text wraps\nonto a second line.",
                "Next.",
            ],
        ),
        (
            "# Heading\nBody\n- first item\n- second item\n> quoted\n| a | b |",
            [
                "# Heading",
                "Body",
                "- first item",
                "- second item",
                "> quoted",
                "| a | b |",
            ],
        ),
        (
            "A paragraph without a stop\n\n  Another one  ",
            [
                "A paragraph without a stop",
                "Another one",
            ],
        ),
        ("Wait... what? Fine", ["Wait... what?", "Fine"]),
        ("", []),
        (" \n\n\t", []),
    ],
)
def test_where_sentences_end(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_in_chat_a_lowercase_word_after_a_stop_starts_a_sentence() -> None:
    assert sentences("ok. thanks a lot") == ["ok. thanks a lot"]
    assert sentences("ok. thanks a lot", lowercase_starts=True) == ["ok.", "thanks a lot"]


def test_spans_are_offsets_into_the_text_and_keep_to_their_bounds() -> None:
    text = "  Intro here.  Second one!\n\nNew paragraph. Last  "
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == sentences(text)
    assert paragraph_spans(text) == [(0, 26), (28, len(text))]
    assert sentence_spans(text, 28) == spans[2:]
    assert sentence_spans(text, 0, 26) == spans[:2]
    assert paragraph_spans("") == [(0, 0)]


def record_embeddings(embedded: list[str]) -> SentenceVectors:
    """Sentence vectors that note what was embedded; every text gets the same vector."""

    def embed(texts: list[str]) -> np.ndarray:
        embedded.extend(texts)
        return np.full((len(texts), 4), 0.5, dtype=np.float32)

    return SentenceVectors(embed)


async def test_the_responder_reads_a_chunk_as_the_sentences_the_chunker_kept_whole() -> None:
    text = " ".join(QUOTED) + "\n\nOpening hours: 9 to 5. Closed on Sundays."
    # The second paragraph does not fit beside the first: the first chunk is the first
    # paragraph, its four sentences kept whole.
    chunks = chunk_text(text, max_words=30, overlap_words=5)
    assert [c.text for c in chunks[:1]] == [" ".join(QUOTED)]
    embedded: list[str] = []
    snippet = Snippet("doc", chunks[0].text, 0.9)
    await best_sentences("How much is the lamp?", [snippet], record_embeddings(embedded))
    # Besides what is asked (the message, and the message less the snippet's topic), the
    # sentences to choose from.
    assert [t for t in embedded if not t.lower().startswith("how much")] == QUOTED


async def test_sentence_vectors_made_at_ingest_are_used_not_made_again() -> None:
    # The worker embeds each of sentences(chunk) and stores them in that order; the responder
    # reads them against sentences(chunk): where both agree, no sentence is embedded again.
    text = " ".join(QUOTED)
    embedder = shared_embedder()
    stored = tuple(embedder.embed(sentences(text)))
    embedded: list[str] = []

    def embed(texts: list[str]) -> np.ndarray:
        embedded.extend(texts)
        return embedder.embed(texts)

    snippet = Snippet("doc", text, 0.9, sentence_vectors=stored)
    chosen = await best_sentences("How much is the lamp?", [snippet], SentenceVectors(embed))
    assert not set(embedded) & set(QUOTED)
    assert chosen is not None and chosen[1] == ["The lamp costs 40 euros."]


async def test_the_question_retrieval_embedded_is_not_embedded_again() -> None:
    # Retrieval embeds the question (kb.retrieval); the responder compares it and what is
    # asked of the snippet with each sentence. Given retrieval's vector, it embeds only
    # what is asked, and chooses as it does when it embeds both.
    text = " ".join(QUOTED)
    embedder = shared_embedder()
    snippet = Snippet("doc", text, 0.9, sentence_vectors=tuple(embedder.embed(sentences(text))))
    question = "How much is the lamp?"
    embedded: list[str] = []

    def embed(texts: list[str]) -> np.ndarray:
        embedded.extend(texts)
        return embedder.embed(texts)

    given = {question: embedder.embed([question])[0]}
    chosen = await best_sentences(question, [snippet], SentenceVectors(embed), embedded=given)
    assert question not in embedded and len(embedded) == 1  # what is asked, alone
    assert chosen == await best_sentences(question, [snippet], SentenceVectors(embedder.embed))


# Pieces of text the agreement test builds from: every way a sentence can end, soft wraps,
# blocks, paragraphs, abbreviations.
ENDINGS = [
    ". ",
    '." ',
    "\u2026 ",
    ".) ",
    "! ",
    "? ",
    "\u3002",
    ".\n",
    "\n\n",
    "\n- ",
    "\n1. ",
    "\n> ",
    "\n| a | b |\n",
    "\n# Title\n",
]
WORDS = ["word", "Word", "e.g. this", "x" * 30, "\u8a9e\u8a9e", "cost 40", "a.m. sharp", "\n"]


@pytest.mark.parametrize("seed", range(20))
def test_every_chunk_splits_into_the_sentences_of_the_text_it_covers(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + rng.choice(ENDINGS)
        for _ in range(rng.randint(5, 80))
    )
    whole = sentence_spans(text)
    for max_words, overlap in [(120, 20), (30, 10), (12, 0), (8, 6)]:
        for chunk in chunk_text(text, max_words=max_words, overlap_words=overlap):
            start, end = chunk.start, chunk.start + len(chunk.text)
            line = text.rfind("\n", 0, start) + 1
            if line < start and text.startswith("# ", line):
                continue  # the overlap took the end of a heading, which no longer looks like one
            # A chunk may start or end inside a sentence too long to keep whole (or in the
            # overlap taken from one): there it holds that sentence's piece.
            held = [text[max(a, start) : min(b, end)] for a, b in whole if a < end and b > start]
            assert sentences(chunk.text) == held, (max_words, overlap, chunk)
