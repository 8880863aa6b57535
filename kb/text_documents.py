"""The JSON text document: a body of the knowledge endpoints and an entry of a KB file.

Kept apart from the HTTP handlers so that ``rapport kb import`` reads KB files with the
same rules without loading the server.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from engine.errors import ValidationFailed
from kb.documents import EXTERNAL_ID
from kb.ingest import Incoming

ExternalId = Annotated[str, msgspec.Meta(pattern=EXTERNAL_ID.pattern)]
MAX_TEXT = 1_000_000
"""Characters of one text document sent as JSON; larger ones go through file upload."""
TextType = Literal["txt", "md", "html"]
Tag = Annotated[str, msgspec.Meta(max_length=128)]


class TextDocument(msgspec.Struct, forbid_unknown_fields=True):
    """One item of the batch, or the body of the single upsert.

    Also accepts seed 004's KB JSON entries (``id``, ``text``, ``category``, ``tags``):
    ``id`` is the external_id, ``category`` the label, and the tags become keywords that
    are embedded with every chunk, so questions phrased like a tag find the entry.
    """

    external_id: ExternalId | None = None
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)] | None = None
    label: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    content_type: TextType = "txt"
    id: ExternalId | None = None
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)] | None = None
    category: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    tags: Annotated[list[Tag], msgspec.Meta(max_length=64)] | None = None

    def incoming(self, external_id: str | None = None) -> Incoming:
        eid = external_id or self.external_id or self.id
        if eid is None:
            raise ValidationFailed("external_id is required.", errors={"external_id": ["required"]})
        body = self.content if self.content is not None else self.text
        if body is None:
            raise ValidationFailed("content is required.", errors={"content": ["required"]})
        return Incoming(
            external_id=eid,
            data=body.encode(),
            content_type=self.content_type,
            label=self.label if self.label is not None else self.category,
            keywords=tuple(self.tags or ()),
        )
