"""Seed 002's pages and articles as knowledge documents.

A page (``title``, ``content``, ``metadata``) is a text document labelled with its title. Its
external_id is made from the title, so that storing the same page again finds the same
document: unchanged, it is a no-op (``kb.ingest``); with new content, an update; with new
metadata only, the record changes and nothing is embedded again. A title is the page's
identity: a page whose title changes is another page.

An article sent for review (``review_data``) is staged, not queued, with the notes that came
with it in its metadata, until an operator processes it (``POST /api/knowledge/docs/process``
or the dashboard); its external_id is made from its text.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import msgspec

from engine.errors import ValidationFailed
from kb.ingest import Incoming
from kb.text_documents import MAX_TEXT

MAX_METADATA_BYTES = 16 * 1024
"""A page's metadata, as JSON: what a page's author and date need, not a second document."""
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]


class Page(msgspec.Struct, forbid_unknown_fields=True):
    """Seed 002's page object."""

    title: Title
    content: Text
    metadata: dict[str, Any] | None = None

    def incoming(self, stream_id: str | None = None) -> Incoming:
        metadata = dict(self.metadata or {})
        if stream_id is not None:
            metadata["stream_id"] = stream_id
        return Incoming(
            external_id=page_id(self.title),
            data=self.content.encode(),
            content_type="txt",
            label=self.title,
            metadata=bounded(metadata),
        )


def page_id(title: str) -> str:
    """The external_id of the page with this title: spacing and case do not count."""
    said = " ".join(title.split()).casefold()
    return "page-" + hashlib.sha256(said.encode()).hexdigest()[:40]


def article(text: str, notes: list[str]) -> Incoming:
    """An article for review, with the submission's notes; labelled with its first line."""
    first = text.strip().splitlines()[0] if text.strip() else "Article"
    digest = hashlib.sha256(text.encode()).hexdigest()[:40]
    return Incoming(
        external_id=f"review-{digest}",
        data=text.encode(),
        content_type="txt",
        label=first[:120],
        metadata=bounded({"review_notes": notes}),
    )


def bounded(metadata: dict[str, Any]) -> dict[str, Any]:
    if len(msgspec.json.encode(metadata)) > MAX_METADATA_BYTES:
        raise ValidationFailed(
            f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON.",
            errors={"metadata": [f"at most {MAX_METADATA_BYTES} bytes"]},
        )
    return metadata
