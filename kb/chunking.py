"""Knowledge text to overlapping chunks sized for all-MiniLM-L6-v2.

The embedder truncates at 256 tokens (``kb.embedder.MAX_TOKENS``), so a chunk that runs
past that is partly invisible to retrieval. Chunks are counted in words, not tokens, so
chunking needs no tokenizer; 120 words is ~160 tokens of English prose, which leaves room
for long words and numbers. Chunks end where sentences end, because the extractive responder
quotes sentences and a half sentence at a chunk's edge quotes badly; both split by
``engine.sentences``, so the responder finds in a chunk the very sentences it was built of.
Consecutive chunks share their edge sentences so that a fact spanning two chunks is still
found whole in one.

Every chunk is a slice of the source text (``text[start:start + len(chunk.text)]``), so a
chunk can always be traced back to where it came from.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from typing import NamedTuple

import msgspec

from engine.sentences import paragraph_spans, sentence_spans


class Chunk(msgspec.Struct, frozen=True):
    index: int
    text: str
    start: int
    """Offset of the chunk's first character in the source text."""


class _Unit(NamedTuple):
    """A sentence (or a piece of an over-long one): the smallest thing a chunk holds whole."""

    start: int
    end: int
    words: tuple[int, ...]  # offset of each word, so an overlap can start mid-sentence
    paragraph: int


# Scripts written without spaces: each character counts as a word, as the model's tokenizer
# gives each ideograph a token of its own.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# A run of non-space characters longer than 20 (a URL, a hash, base64) counts as several
# words, one per 20 characters: it costs the model several tokens, not one.
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]{{1,20}}")


def chunk_text(text: str, *, max_words: int = 120, overlap_words: int = 20) -> list[Chunk]:
    """Chunks of at most ``max_words`` words, whole sentences where a sentence fits, each
    starting with up to ``overlap_words`` words from the end of the one before."""
    if max_words < 1 or not 0 <= overlap_words < max_words:
        raise ValueError("need max_words >= 1 and 0 <= overlap_words < max_words")
    units = _units(text, max_words, overlap_words)
    if not units:
        return []
    paragraph_words: Counter[int] = Counter()
    for unit in units:
        paragraph_words[unit.paragraph] += len(unit.words)

    chunks: list[Chunk] = []
    current: list[_Unit] = []
    count = 0
    for unit in units:
        size = len(unit.words)
        if current and (
            count + size > max_words
            or _ends_at_paragraph(current, unit, count, paragraph_words, max_words)
        ):
            chunks.append(_chunk(text, len(chunks), current))
            # Room: the next unit must fit, and the overlap must not be the whole chunk.
            current = _overlap(current, overlap_words, min(max_words - size, count - 1))
            count = sum(len(u.words) for u in current)
        current.append(unit)
        count += size
    chunks.append(_chunk(text, len(chunks), current))
    return chunks


def _ends_at_paragraph(
    current: list[_Unit], unit: _Unit, count: int, paragraph_words: Counter[int], limit: int
) -> bool:
    """Close a chunk at a paragraph's start when the paragraph won't fit beside it and the
    chunk is already half full: a chunk that keeps to one paragraph keeps to one topic."""
    return (
        unit.paragraph != current[-1].paragraph
        and count + paragraph_words[unit.paragraph] > limit
        and count * 2 >= limit
    )


def _chunk(text: str, index: int, units: list[_Unit]) -> Chunk:
    start = units[0].start
    return Chunk(index=index, text=text[start : units[-1].end], start=start)


def _overlap(units: list[_Unit], want: int, room: int) -> list[_Unit]:
    """The tail of a finished chunk that the next one starts with: about ``want`` words of
    whole sentences (up to half as many again, to keep a sentence whole), never more than
    ``room``; when even the last sentence is too long, its last ``want`` words."""
    if want <= 0 or room <= 0:
        return []
    limit = min(want + want // 2, room)
    taken: list[_Unit] = []
    words = 0
    for unit in reversed(units):
        if words >= want or words + len(unit.words) > limit:
            break
        taken.append(unit)
        words += len(unit.words)
    if taken:
        return taken[::-1]
    last = units[-1]
    tail = last.words[-min(want, room) :]
    return [_Unit(tail[0], last.end, tail, last.paragraph)]


def _units(text: str, max_words: int, overlap_words: int) -> list[_Unit]:
    # A sentence too long for a chunk is cut into pieces that leave room for the overlap.
    piece = max_words - overlap_words
    units: list[_Unit] = []
    for paragraph, (start, end) in enumerate(paragraph_spans(text)):
        for s_start, s_end in sentence_spans(text, start, end):
            found = list(_WORD.finditer(text, s_start, s_end))
            words = tuple(m.start() for m in found)
            if len(words) <= max_words:
                units.append(_Unit(s_start, s_end, words, paragraph))
                continue
            for i in range(0, len(found), piece):
                part = found[i : i + piece]
                # Every non-space character is in some word, so a piece ending at its last
                # word's end drops only the whitespace before the next piece.
                units.append(
                    _Unit(part[0].start(), part[-1].end(), words[i : i + piece], paragraph)
                )
    return units


_HEADING_LINE = re.compile(r"^[ \t]*#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
CONTEXT_CHARACTERS = 300
"""The most a chunk's context may take: a label, a heading and a sentence, not a page."""


def chunk_contexts(text: str, chunks: list[Chunk], label: str | None) -> list[str]:
    """What each chunk is read with, for retrieval: the document's label, the last heading
    above the chunk (Markdown ``#`` lines, which ``.md`` documents keep), and the
    document's first sentence when the chunk does not start with it. A chunk from the
    middle of a long answer then still says what the answer is about; the chunk's own
    text, which replies quote, is left as it was."""
    found = list(_HEADING_LINE.finditer(text))
    heading_starts = [m.start() for m in found]
    prose = (
        span for span in sentence_spans(text) if not _HEADING_LINE.fullmatch(text[slice(*span)])
    )
    first_start, first_end = next(prose, (len(text), len(text)))
    first = text[first_start:first_end]
    base = [label.strip()] if label and label.strip() else []
    contexts = []
    for chunk in chunks:
        parts = list(base)
        above = bisect.bisect_left(heading_starts, chunk.start)
        if above:
            parts.append(found[above - 1].group(1))
        if chunk.start > first_start:  # the chunk does not hold the first sentence
            parts.append(first)
        contexts.append("\n".join(dict.fromkeys(parts))[:CONTEXT_CHARACTERS])
    return contexts


def passage(context: str, text: str, keywords: list[str]) -> tuple[str, int]:
    """What is embedded for a chunk, and where the chunk's own text starts in it: the
    context first, the keywords last (seed 004's tags: they help a question find the chunk,
    but the stored text, which replies quote, stays the document's own)."""
    head = f"{context}\n\n" if context else ""
    tail = f"\nKeywords: {', '.join(keywords)}" if keywords else ""
    return head + text + tail, len(head)
