"""Where sentences begin and end: the one rule shared by chunking, the responder and memory.

Knowledge chunks end where sentences end so that the extractive responder can quote them,
and the responder splits each chunk into sentences again; unless both draw the same lines, a
quoted "sentence" is half of one, or two run together. Memory's summary keeps the first
sentence of each message by the same rule.

The rule:

- a sentence ends at ``.`` ``!`` ``?`` or ``…`` (then any closing quotes or brackets) before
  whitespace, unless a lowercase word follows ("e.g. a hammer", "approx. ten" go on). That
  holds for edited prose such as knowledge documents; in chat, where people start sentences
  in lowercase ("ok. thanks"), ``lowercase_starts=True`` lets any stop end a sentence;
- or at a CJK full stop, which takes no space after it;
- a blank line ends a paragraph, and the sentence with it;
- a single newline is a soft wrap inside a sentence, except before a line that starts a block
  (a heading, list item, quote or table row) or after a heading.

Splitting a slice of a text that starts and ends at sentence edges (a chunk) gives the
sentences the whole text has there: every rule looks ahead within the paragraph, except the
heading rule, which looks back to the start of the line, so only a slice starting inside a
heading line can differ.
"""

from __future__ import annotations

import itertools
import re

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"')\]\u2019\u201d]*(?=\s)|[\u3002\uff01\uff1f]+")
# Lines that start a new block even without a blank line before them: headings, list items,
# quotes and table rows (Markdown, and what the extractors write for tables). A marker alone
# at the end (an empty list item) counts too, so that a chunk ending with one splits as the
# whole text does, where a newline follows it.
_BLOCK_START = re.compile(r"[ \t]*(?:(?:#{1,6}|[-*+\u2022]|\d{1,3}[.)])(?:\s|$)|>|\|)")
_HEADING = re.compile(r"[ \t]*#{1,6}\s")
_NEXT_CHARACTER = re.compile(r"\s*(\S)")


def sentences(text: str, *, lowercase_starts: bool = False) -> list[str]:
    """The sentences of ``text``, in order, each trimmed of surrounding whitespace."""
    spans = sentence_spans(text, lowercase_starts=lowercase_starts)
    return [text[start:end] for start, end in spans]


def sentence_spans(
    text: str, start: int = 0, end: int | None = None, *, lowercase_starts: bool = False
) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences in ``text[start:end]``, trimmed of surrounding
    whitespace, so that ``text[start:end]`` of a span is the sentence."""
    return [
        span
        for a, b in paragraph_spans(text, start, end)
        for span in _paragraph_sentences(text, a, b, lowercase_starts)
    ]


def paragraph_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) offsets of the paragraphs in ``text[start:end]``: the pieces between blank
    lines, untrimmed; always at least one, even for empty text."""
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    position = start
    for match in _PARAGRAPH_BREAK.finditer(text, start, end):
        spans.append((position, match.start()))
        position = match.end()
    spans.append((position, end))
    return spans


def _paragraph_sentences(
    text: str, start: int, end: int, lowercase_starts: bool
) -> list[tuple[int, int]]:
    cuts = [start]
    line_start = start
    while (newline := text.find("\n", line_start, end)) != -1:
        heading = _HEADING.match(text, line_start, newline)
        if heading or _BLOCK_START.match(text, newline + 1, end):
            cuts.append(newline + 1)
        line_start = newline + 1
    for match in _SENTENCE_END.finditer(text, start, end):
        following = _NEXT_CHARACTER.match(text, match.end(), end)
        # A capital, a digit or a quote after the stop starts a new sentence; in prose a
        # lowercase word means the stop was an abbreviation's.
        if following and (lowercase_starts or not following.group(1).islower()):
            cuts.append(match.end())
    cuts.append(end)
    spans: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(sorted(set(cuts))):
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            spans.append((a, b))
    return spans
