"""Chunking for the embedder: bounded sizes, whole sentences, overlap, exact offsets."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from kb.chunking import CONTEXT_CHARACTERS, Chunk, chunk_contexts, chunk_text, passage

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def sentences_text(
    seed: int, paragraphs: int = 8, lengths: tuple[int, int] = (5, 14)
) -> tuple[str, list[str]]:
    """Paragraphs of sentences, each starting with a unique marker S<n>, so a test can tell
    which sentences a chunk holds."""
    rng = random.Random(seed)
    sentences: list[str] = []
    blocks: list[str] = []
    for _ in range(paragraphs):
        block = []
        for _ in range(rng.randint(2, 7)):
            body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*lengths)))
            sentence = f"S{len(sentences)} {body}."
            sentences.append(sentence)
            block.append(sentence)
        blocks.append(" ".join(block))
    return "\n\n".join(blocks), sentences


def assert_slices(text: str, chunks: list[Chunk]) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert text[chunk.start :].startswith(chunk.text[:20])
        assert text[chunk.start : chunk.start + len(chunk.text)] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text


def assert_covers(text: str, chunks: list[Chunk]) -> None:
    """Every word of the source is in some chunk, and the chunks move forward."""
    covered = [False] * len(text)
    for chunk in chunks:
        covered[chunk.start : chunk.start + len(chunk.text)] = [True] * len(chunk.text)
    for match in re.finditer(r"\S+", text):
        assert all(covered[match.start() : match.end()]), match.group()
    starts = [c.start for c in chunks]
    assert starts == sorted(set(starts))


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \n"])
def test_empty_text_has_no_chunks(text: str) -> None:
    assert chunk_text(text) == []


def test_short_text_is_one_chunk_pointing_at_its_first_character() -> None:
    text = "\n\n  Opening hours: 9 to 5.  Closed on Sundays.\n"
    assert chunk_text(text) == [
        Chunk(index=0, text="Opening hours: 9 to 5.  Closed on Sundays.", start=4)
    ]


@pytest.mark.parametrize(("max_words", "overlap_words"), [(120, 20), (60, 15), (30, 5)])
def test_sizes_bounded_offsets_exact_and_nothing_lost(max_words: int, overlap_words: int) -> None:
    text, _ = sentences_text(seed=max_words, paragraphs=20)
    chunks = chunk_text(text, max_words=max_words, overlap_words=overlap_words)
    assert len(chunks) > 3
    assert all(len(c.text.split()) <= max_words for c in chunks)
    # Packed, not one sentence a chunk: most chunks are well over half full.
    full = [c for c in chunks if len(c.text.split()) > max_words // 2]
    assert len(full) >= len(chunks) * 0.6
    assert_slices(text, chunks)
    assert_covers(text, chunks)


def test_chunks_hold_whole_sentences_and_overlap_by_whole_sentences() -> None:
    text, sentences = sentences_text(seed=7, paragraphs=12)
    chunks = chunk_text(text, max_words=60, overlap_words=15)
    for chunk in chunks:
        held = re.findall(r"S\d+ [^.]*\.", chunk.text)
        # Nothing but whole sentences: every piece is a sentence of the source.
        assert " ".join(chunk.text.split()) == " ".join(held)
        assert all(sentence in sentences for sentence in held)
    for before, after in itertools.pairwise(chunks):
        end_before = before.start + len(before.text)
        assert after.start < end_before  # they overlap
        shared = text[after.start : end_before]
        assert before.text.endswith(shared) and after.text.startswith(shared)
        assert 1 <= len(shared.split()) <= 15 + 15 // 2


def test_overlap_is_about_overlap_words() -> None:
    text, _ = sentences_text(seed=3, paragraphs=30, lengths=(3, 6))
    chunks = chunk_text(text, max_words=100, overlap_words=20)
    shared = [
        len(text[after.start : before.start + len(before.text)].split())
        for before, after in itertools.pairwise(chunks)
    ]
    assert all(14 <= n <= 30 for n in shared), shared


def test_no_overlap_when_asked_for_none() -> None:
    text, _ = sentences_text(seed=5, paragraphs=10)
    chunks = chunk_text(text, max_words=40, overlap_words=0)
    for before, after in itertools.pairwise(chunks):
        assert after.start > before.start + len(before.text)
    assert_covers(text, chunks)


def test_a_sentence_longer_than_a_chunk_is_split_on_words() -> None:
    words = [f"w{i}" for i in range(300)]
    text = "Intro sentence here. " + " ".join(words) + ". Closing words."
    chunks = chunk_text(text, max_words=120, overlap_words=20)
    assert all(len(c.text.split()) <= 120 for c in chunks)
    for chunk in chunks:
        # Cut between words, never inside one.
        assert all(re.fullmatch(r"w\d+\.?|[A-Za-z]+\.?", token) for token in chunk.text.split())
    pieces = [c for c in chunks if "w150" in c.text.split() or "w150." in c.text.split()]
    assert pieces  # the long sentence's middle made it into a chunk
    for before, after in itertools.pairwise(chunks):
        assert after.start < before.start + len(before.text)  # pieces overlap too
    assert_slices(text, chunks)
    assert_covers(text, chunks)


def test_one_giant_word_and_spaceless_scripts_are_bounded() -> None:
    blob = "x" * 5000  # base64, a hash: no spaces, yet many tokens
    chunks = chunk_text(blob, max_words=100, overlap_words=10)
    assert len(chunks) > 1 and all(len(c.text) <= 100 * 20 for c in chunks)
    assert_covers(blob, chunks)
    japanese = "営業時間は午前九時から午後五時までです。" * 40  # 800 characters, no spaces
    chunks = chunk_text(japanese, max_words=100, overlap_words=10)
    assert len(chunks) > 1 and all(len(c.text) <= 100 for c in chunks)
    assert all(c.text.endswith("。") for c in chunks)  # CJK full stops end sentences
    assert_covers(japanese, chunks)


def test_paragraphs_are_kept_apart_when_they_fill_a_chunk() -> None:
    first = " ".join(["First paragraph sentence with nine words in it."] * 8)  # 72 words
    second = " ".join(["Second paragraph sentence is a bit longer than that."] * 8)
    text = f"{first}\n\n{second}"
    chunks = chunk_text(text, max_words=120, overlap_words=20)
    assert chunks[0].text == first
    assert chunks[1].text.endswith(second)


def test_short_paragraphs_are_packed_together() -> None:
    text = "\n\n".join(f"Item {i} costs {i} euros." for i in range(10))
    chunks = chunk_text(text, max_words=120, overlap_words=20)
    assert len(chunks) == 1 and chunks[0].text == text.strip()


def test_sentence_boundaries() -> None:
    text = (
        "Bring tools, e.g. a hammer and some nails. Then start at 9 a.m. sharp!\n"
        "Is it safe? Yes.\n"
        "# Heading line\n"
        "Body text wraps\nonto a second line.\n"
        "- first item\n"
        "- second item"
    )
    chunks = chunk_text(text, max_words=9, overlap_words=0)
    assert [c.text for c in chunks] == [
        "Bring tools, e.g. a hammer and some nails.",
        "Then start at 9 a.m. sharp!\nIs it safe?",
        "Yes.\n# Heading line",
        "Body text wraps\nonto a second line.",
        "- first item\n- second item",
    ]
    assert_slices(text, chunks)
    # "e.g." followed by a lowercase word does not end the sentence.
    chunks = chunk_text("One two three. Tools, e.g. a hammer.", max_words=5, overlap_words=0)
    assert [c.text for c in chunks] == ["One two three.", "Tools, e.g. a hammer."]


def test_deterministic() -> None:
    text, _ = sentences_text(seed=11, paragraphs=15)
    assert chunk_text(text) == chunk_text(text)
    assert chunk_text(text, max_words=50, overlap_words=10) == chunk_text(
        text, max_words=50, overlap_words=10
    )


@pytest.mark.parametrize(("max_words", "overlap_words"), [(0, 0), (10, 10), (10, -1)])
def test_bad_sizes_are_refused(max_words: int, overlap_words: int) -> None:
    with pytest.raises(ValueError):
        chunk_text("Some text.", max_words=max_words, overlap_words=overlap_words)


def test_random_text_keeps_every_promise() -> None:
    rng = random.Random(2024)
    alphabet = ["word", "Word.", "x!", "?", "\n", "\n\n", " ", "  ", "e.g.", "- ", "# ", "ü", "。"]
    for _ in range(200):
        text = " ".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
        max_words = rng.randint(1, 60)
        overlap = rng.randint(0, max_words - 1)
        chunks = chunk_text(text, max_words=max_words, overlap_words=overlap)
        assert all(len(c.text.split()) <= max_words for c in chunks)
        assert bool(chunks) == bool(text.strip())
        assert_slices(text, chunks)
        assert_covers(text, chunks)


GUIDE = """# Returns guide

Items can be returned within 30 days. Keep the receipt safe.

## Refunds

Refunds reach your card in five working days. Cash refunds are paid in the shop.

## Exchanges

Exchanges are free in any of our shops. Sizes can be swapped too."""


def test_a_chunk_is_read_with_its_label_heading_and_the_documents_first_sentence() -> None:
    chunks = chunk_text(GUIDE, max_words=12, overlap_words=0)
    first = "Items can be returned within 30 days."
    assert [
        (c.text, context)
        for c, context in zip(chunks, chunk_contexts(GUIDE, chunks, "Returns"), strict=True)
    ] == [
        # The first chunk holds the first sentence already, and no heading is above it.
        ("# Returns guide\n\nItems can be returned within 30 days.", "Returns"),
        # The heading this chunk ends with is below its start: the one above counts.
        ("Keep the receipt safe.\n\n## Refunds", f"Returns\nReturns guide\n{first}"),
        ("Refunds reach your card in five working days.", f"Returns\nRefunds\n{first}"),
        ("Cash refunds are paid in the shop.\n\n## Exchanges", f"Returns\nRefunds\n{first}"),
        ("Exchanges are free in any of our shops.", f"Returns\nExchanges\n{first}"),
        ("Sizes can be swapped too.", f"Returns\nExchanges\n{first}"),
    ]


def test_no_label_means_no_label_line() -> None:
    chunks = chunk_text(GUIDE, max_words=12, overlap_words=0)
    first = "Items can be returned within 30 days."
    for label in (None, "", "   "):
        contexts = chunk_contexts(GUIDE, chunks, label)
        assert contexts[0] == ""
        assert contexts[1] == f"Returns guide\n{first}"
        assert contexts[-1] == f"Exchanges\n{first}"
    # A label is trimmed.
    assert chunk_contexts(GUIDE, chunks, "  Returns  ")[0] == "Returns"


def test_without_headings_a_later_chunk_is_read_with_the_first_sentence() -> None:
    text, written = sentences_text(seed=5, paragraphs=6)
    chunks = chunk_text(text, max_words=30, overlap_words=0)
    assert len(chunks) > 2
    contexts = chunk_contexts(text, chunks, "Greek letters")
    assert contexts[0] == "Greek letters"
    assert contexts[1:] == [f"Greek letters\n{written[0]}"] * (len(chunks) - 1)
    assert chunk_contexts(text, chunks, None)[1:] == [written[0]] * (len(chunks) - 1)


def test_a_context_is_capped() -> None:
    long_first = "Alpha " + "beta " * 200 + "gamma."
    text = f"# Heading\n\n{long_first}\n\nSecond paragraph here. " + "More words. " * 40
    chunks = chunk_text(text, max_words=60, overlap_words=0)
    assert len(chunks) > 1
    contexts = chunk_contexts(text, chunks, "A label " * 10)
    assert all(len(c) <= CONTEXT_CHARACTERS for c in contexts)
    assert contexts[-1].startswith("A label A label") and len(contexts[-1]) == CONTEXT_CHARACTERS
    assert (
        contexts[-1]
        == ("A label " * 10).strip() + "\nHeading\n" + long_first[: CONTEXT_CHARACTERS - 88]
    )


@pytest.mark.parametrize(
    ("context", "keywords", "expected"),
    [
        (
            "Returns\nRefunds",
            ["refund", "money back"],
            "Returns\nRefunds\n\nBODY\nKeywords: refund, money back",
        ),
        ("Returns", [], "Returns\n\nBODY"),
        ("", ["refund"], "BODY\nKeywords: refund"),
        ("", [], "BODY"),
    ],
)
def test_a_passage_is_context_text_and_keywords_with_the_texts_offset(
    context: str, keywords: list[str], expected: str
) -> None:
    text = "Refunds reach your card in five working days. Cash is paid in the shop."
    whole, offset = passage(context, text, keywords)
    assert whole == expected.replace("BODY", text)
    assert whole[offset : offset + len(text)] == text


def test_a_chunk_that_holds_the_first_sentence_is_not_given_it_again() -> None:
    # Extraction keeps leading blank lines, and a heading may open the text: the first
    # chunk then starts before its first sentence, and still holds it.
    for text in ("\n\n  Opening hours are nine to five. We close on Sundays.",
                 "# Hours\n\nOpening hours are nine to five. We close on Sundays."):  # fmt: skip
        chunks = chunk_text(text)
        assert len(chunks) == 1
        assert chunk_contexts(text, chunks, None) == [""]
