"""What a client sets on a stored document (seed 001's PATCH): its label and its image and
link libraries, held to seed 001's library rules.

A library has at most 10 entries, absolute ``https://`` URLs only, and at most one primary
entry. A PATCH that breaks a rule is not refused: what is dropped or changed is reported in
the document's ``warnings``, so a client can show why. Links found in the document itself
seed an empty link library (the worker sets them when the document becomes ready); a
library the client set is never overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import msgspec

from kb.documents import Document, DocWarning, DocWrite, ImageEntry, LinkEntry

MAX_ENTRIES = 10  # seed 001: "max 10 entries"
Entry = TypeVar("Entry", ImageEntry, LinkEntry)


class DocEdit(msgspec.Struct, frozen=True, kw_only=True):
    """A PATCH of a document; what it leaves UNSET stays as it is (``label=None`` clears)."""

    label: str | msgspec.UnsetType | None = msgspec.UNSET
    image_library: list[ImageEntry] | msgspec.UnsetType = msgspec.UNSET
    link_library: list[LinkEntry] | msgspec.UnsetType = msgspec.UNSET

    def applied(self, current: Document | None) -> DocWrite | None:
        """This edit on the record as it is now (often the worker flipped it to ready since
        the client read it); nothing when the document is gone. The record's ``warnings``
        then say what this edit dropped or altered, and nothing older."""
        if current is None:
            return None
        warnings: list[DocWarning] = []
        doc = current
        if self.label is not msgspec.UNSET:
            doc = msgspec.structs.replace(doc, label=self.label)
        if self.image_library is not msgspec.UNSET:
            images, dropped = curate("image_library", self.image_library, current.image_library)
            warnings += dropped
            primary = next((i.url for i in images if i.is_primary), None)
            doc = msgspec.structs.replace(
                doc,
                image_library=images,
                preview_image_url=primary or (images[0].url if images else None),
            )
        if self.link_library is not msgspec.UNSET:
            links, dropped = curate("link_library", self.link_library, current.link_library)
            warnings += dropped
            doc = msgspec.structs.replace(doc, link_library=links)
        return DocWrite(document=msgspec.structs.replace(doc, warnings=warnings))


def curate(
    field: str, entries: Sequence[Entry], previous: Sequence[Entry]
) -> tuple[list[Entry], list[DocWarning]]:
    """The entries seed 001's rules keep, and a warning for each one dropped or changed. An
    entry whose URL was already in the library (``previous``) keeps its source."""
    sources = {entry.url: entry.source for entry in previous}
    kept: list[Entry] = []
    warnings: list[DocWarning] = []
    primary_seen = False
    for position, entry in enumerate(entries):
        if not entry.url.lower().startswith("https://"):
            warnings.append(DocWarning(
                code="library.entry_dropped", field=f"{field}[{position}]",
                message=f"Dropped {entry.url!r}: only absolute https:// URLs are kept.",
            ))  # fmt: skip
            continue
        if len(kept) == MAX_ENTRIES:
            warnings.append(DocWarning(
                code="library.truncated", field=field,
                message=f"Only {MAX_ENTRIES} entries are kept; {entry.url!r} was dropped.",
            ))  # fmt: skip
            continue
        if entry.is_primary and primary_seen:
            entry = msgspec.structs.replace(entry, is_primary=False)
            warnings.append(DocWarning(
                code="library.primary_reassigned", field=f"{field}[{position}]",
                message="Only one entry may be primary; the first one marked primary was kept.",
            ))  # fmt: skip
        primary_seen = primary_seen or entry.is_primary
        kept.append(msgspec.structs.replace(entry, source=sources.get(entry.url, "client")))
    return kept, warnings


def extracted_links(urls: Sequence[str]) -> list[LinkEntry]:
    """Links found in a document, as the library they seed when the client set none."""
    return [LinkEntry(url=url, source="extractor") for url in urls[:MAX_ENTRIES]]
