"""Knowledge documents: records, content, listing and usage, all in Redis.

A document is keyed by its ``external_id`` (seed 000). Its content is kept (base64, so any
worker on any node can read it) only until a worker has processed it. Each content change
starts a new *generation*; chunks in Chroma carry ``<external_id>@<generation>``, and
retrieval asks only for each document's *live* generation, the last one fully indexed. A
document being re-embedded is therefore seen whole, old content until the new is ready,
then the new, never a mix.

Writes to one document are compare-and-set on its revision, which every write bumps (a Lua
script), so of two writers that read the same record only the first wins: two upserts of
one external_id, or a PATCH and the worker flipping the document to ready. The loser reads
again and decides anew (:meth:`DocumentStore.update`, the one retry loop every writer
uses). Usage counters move with every charge and refund in the same script, so
``GET /api/subscription/limits`` stays exact.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from engine import keyspace
from engine.accounts import BYTES_PER_STORAGE_UNIT
from engine.config import DEFAULT_EMBEDDING_MODEL
from engine.errors import Conflict
from engine.recent import Recent
from engine.state import Client, redis_boundary
from kb.listing import Listing, ListingRow, Status

EXTERNAL_ID = re.compile(r"\A[A-Za-z0-9._:\-]{1,128}\Z")
"""Seed 000: 1-128 characters of letters, digits, '.', '_', ':' and '-'."""
LISTINGS_KEPT = 256
"""Accounts whose document listing a process keeps (:meth:`DocumentStore.listing`): a
listing of 10,000 documents is a few MB; one not kept costs a reload of its rows."""
TOKENS_PER_KNOWLEDGE_UNIT = 1000
"""A knowledge unit is 1,000 embedded tokens, rounded up per document (at least 1)."""
WRITE_TRIES = 5
"""Tries of one read-change-write before it gives up. A lost try means another write won,
and a document has four kinds of writer: an upsert, the queueing of staged documents, a
PATCH and the worker's flip to ready. Five tries outlast one winning write of each of the
others; only a client that writes one document in a loop exhausts them (409, or for the
worker a retry when its lease runs out)."""

DocumentType = Literal["txt", "md", "html", "pdf", "docx"]
"""Seed 001's ``content_type`` of a document: a kind of document, not a mime (kb/extract.py
reads each)."""
Source = Literal["client", "extractor"]


class ImageEntry(msgspec.Struct, kw_only=True):
    url: str
    description: str = ""
    is_primary: bool = False
    width: int = 0
    height: int = 0
    source: Source = "client"


class LinkEntry(msgspec.Struct, kw_only=True):
    url: str
    description: str = ""
    is_primary: bool = False
    source: Source = "client"


class DocWarning(msgspec.Struct, kw_only=True):
    code: str
    message: str
    field: str | None = None


class Document(msgspec.Struct, kw_only=True):
    """The stored record: seed 001's DTO fields, plus what processing needs."""

    external_id: str
    label: str | None = None
    original_file_name: str | None = None
    content_type: DocumentType = "txt"
    content_size_bytes: int = 0
    estimated_knowledge_units: float = 0
    estimated_storage_units: float = 0
    knowledge_units: float | None = None
    storage_units: float | None = None
    processing_status: Status = "staged"
    processed_at: datetime | None = None
    created_at: datetime
    error_message: str | None = None
    estimated_pages: int | None = None
    actual_pages: int | None = None
    has_extracted_text: bool = False
    preview_image_url: str | None = None
    image_library: list[ImageEntry] = msgspec.field(default_factory=list)
    link_library: list[LinkEntry] = msgspec.field(default_factory=list)
    warnings: list[DocWarning] = msgspec.field(default_factory=list)
    # Not part of the DTO:
    content_hash: str = ""
    keywords: list[str] = msgspec.field(default_factory=list)
    """Seed 004's tags: embedded with every chunk, never shown or quoted."""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    """Seed 002's page metadata (and a review's notes): kept and returned, never embedded."""
    generation: int = 0
    """Bumped by every content change; the newest content's number."""
    live_generation: int = 0
    """The generation whose chunks retrieval reads; 0 when none is indexed."""
    live_chunks: int = 0
    """How many chunks the live generation has in the index."""
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    """The model the live generation was embedded with (``RAPPORT_EMBEDDING_MODEL``);
    records from before there was a choice were embedded with the default."""
    charged_units: float = 0
    """Knowledge units counted in the account's usage for this document right now."""
    revision: int = 0
    """Bumped by every write; writes are compare-and-set on it."""

    def chunk_tag(self, generation: int) -> str:
        return f"{self.external_id}@{generation}"

    def chunk_id(self, generation: int, index: int) -> str:
        return f"{self.chunk_tag(generation)}#{index}"

    def live_chunk_ids(self) -> list[str]:
        """The index ids retrieval searches for this document; none before it is ready."""
        if not self.live_generation:
            return []
        return [self.chunk_id(self.live_generation, i) for i in range(self.live_chunks)]


def chunk_owner(chunk_id: str) -> str:
    """The external_id of the document a chunk id (:meth:`Document.chunk_id`) belongs to;
    external_ids hold no "@"."""
    return chunk_id.split("@", 1)[0]


_encode = msgspec.json.Encoder().encode
_decode_doc = msgspec.json.Decoder(Document).decode
_decode_row = msgspec.json.Decoder(ListingRow).decode

# KEYS: doc, docs, version, usage, content. ARGV: expected revision ('' = must not
# exist), record, row, knowledge-unit delta, storage-byte delta, content ('' = delete it,
# '-' = leave it). Returns 1, or 0 when another write came first.
_WRITE = """
local current = redis.call('GET', KEYS[1])
local revision = ''
if current then revision = tostring(cjson.decode(current)['revision'] or 0) end
if revision ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], cjson.decode(ARGV[2])['external_id'], ARGV[3])
redis.call('INCR', KEYS[3])
redis.call('HINCRBYFLOAT', KEYS[4], 'knowledge_units', ARGV[4])
redis.call('HINCRBY', KEYS[4], 'storage_bytes', ARGV[5])
if ARGV[6] == '' then redis.call('DEL', KEYS[5])
elseif ARGV[6] ~= '-' then redis.call('SET', KEYS[5], ARGV[6]) end
return 1
"""
# KEYS: doc, docs, version, usage, content, personas. ARGV: external_id, ku, bytes.
_DELETE = """
redis.call('DEL', KEYS[1], KEYS[5])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
redis.call('HINCRBYFLOAT', KEYS[4], 'knowledge_units', '-' .. ARGV[2])
redis.call('HINCRBY', KEYS[4], 'storage_bytes', -tonumber(ARGV[3]))
local personas = redis.call('SMEMBERS', KEYS[6])
redis.call('DEL', KEYS[6])
return personas
"""


class WriteConflict(Conflict):
    """Another write to the same document came first. :meth:`DocumentStore.update` reads
    again and retries; when its tries run out, the request that asked is a 409."""

    def __init__(self, external_id: str) -> None:
        super().__init__(f"Document {external_id!r} kept changing while this request ran; retry.")


class DocWrite(msgspec.Struct, frozen=True, kw_only=True):
    """One write of a document: the record to store, and what moves with it."""

    document: Document
    units_delta: float = 0
    bytes_delta: int = 0
    content: bytes | None = None
    """New content to keep for the worker; None leaves the stored content as it is."""
    drop_content: bool = False
    """Delete the stored content (the worker has processed it)."""


Change = Callable[[Document | None], DocWrite | None]
"""What to write on top of the record as it is now (None: it is gone); None to write
nothing. Raising gives up."""


def content_hash(content_type: str, data: bytes) -> str:
    return hashlib.sha256(content_type.encode() + b"\x00" + data).hexdigest()


def knowledge_units(tokens: int) -> float:
    return float(max(1, math.ceil(tokens / TOKENS_PER_KNOWLEDGE_UNIT)))


def storage_units(size: int) -> float:
    return round(size / BYTES_PER_STORAGE_UNIT, 2)


def estimate_tokens(content_type: str, size: int) -> int:
    """At accept time, before extraction: ~4 bytes a token for text, ~40 for pdf/docx."""
    return math.ceil(size / (4 if content_type in ("txt", "md", "html") else 40))


def row_of(doc: Document) -> ListingRow:
    return ListingRow(
        label=(doc.label or "").casefold(),
        file_name=(doc.original_file_name or doc.label or doc.external_id).casefold(),
        original_file_name=(doc.original_file_name or "").casefold(),
        status=doc.processing_status,
        knowledge_units=doc.knowledge_units or doc.estimated_knowledge_units,
        storage_units=doc.storage_units or doc.estimated_storage_units,
        created_at=doc.created_at.timestamp(),
    )


class DocumentStore:
    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._write = redis.register_script(_WRITE)
        self._delete = redis.register_script(_DELETE)
        self._listings: Recent[str, Listing] = Recent(LISTINGS_KEPT)

    @redis_boundary
    async def get(self, account_id: str, external_id: str) -> Document | None:
        raw = await self._redis.get(keyspace.AccountKeys(account_id).doc(external_id))
        return None if raw is None else _decode_doc(raw)

    @redis_boundary
    async def get_many(self, account_id: str, external_ids: list[str]) -> list[Document | None]:
        if not external_ids:
            return []
        keys = keyspace.AccountKeys(account_id)
        raws = await self._redis.mget([keys.doc(e) for e in external_ids])
        return [None if raw is None else _decode_doc(raw) for raw in raws]

    @redis_boundary
    async def content(self, account_id: str, external_id: str) -> bytes | None:
        raw = await self._redis.get(keyspace.AccountKeys(account_id).doc_content(external_id))
        return None if raw is None else base64.b64decode(raw)

    @redis_boundary
    async def write(
        self,
        account_id: str,
        doc: Document,
        *,
        replacing: Document | None,
        units_delta: float = 0,
        bytes_delta: int = 0,
        content: bytes | None = None,
        drop_content: bool = False,
    ) -> Document:
        """Store ``doc`` in place of ``replacing``, the record as the caller read it (None:
        the document must be new), moving usage by the deltas in the same step. Raises
        WriteConflict when another write came in between. Returns what was stored."""
        keys = keyspace.AccountKeys(account_id)
        doc = msgspec.structs.replace(
            doc, revision=0 if replacing is None else replacing.revision + 1
        )
        if drop_content:
            content_arg = ""
        elif content is not None:
            content_arg = base64.b64encode(content).decode()
        else:
            content_arg = "-"
        written = await self._write(
            keys=[keys.doc(doc.external_id), keys.docs, keys.docs_version, keys.usage,
                  keys.doc_content(doc.external_id)],
            args=["" if replacing is None else str(replacing.revision),
                  _encode(doc), _encode(row_of(doc)), repr(units_delta), bytes_delta,
                  content_arg],
        )  # fmt: skip
        if not written:
            raise WriteConflict(doc.external_id)
        return doc

    async def update(
        self, account_id: str, external_id: str, change: Change, *, read: Document | None
    ) -> Document | None:
        """Write ``change(current)`` in place of ``current``, starting from the record as the
        caller ``read`` it. When another write came first, read the record again and apply
        ``change`` to that, up to WRITE_TRIES times in all. Returns what was stored, None
        when ``change`` chose to write nothing; raises WriteConflict when every try lost."""
        current = read
        for _ in range(WRITE_TRIES):
            edit = change(current)
            if edit is None:
                return None
            try:
                return await self.write(
                    account_id,
                    edit.document,
                    replacing=current,
                    units_delta=edit.units_delta,
                    bytes_delta=edit.bytes_delta,
                    content=edit.content,
                    drop_content=edit.drop_content,
                )
            except WriteConflict:
                current = await self.get(account_id, external_id)
        raise WriteConflict(external_id)

    @redis_boundary
    async def delete(self, account_id: str, doc: Document) -> list[str]:
        """Remove a document and its activations; returns the personas it was active for."""
        keys = keyspace.AccountKeys(account_id)
        eid = doc.external_id
        personas: list[str] = await self._delete(
            keys=[keys.doc(eid), keys.docs, keys.docs_version, keys.usage,
                  keys.doc_content(eid), keys.doc_personas(eid)],
            args=[eid, repr(doc.charged_units), doc.content_size_bytes],
        )  # fmt: skip
        if personas:
            pipe = self._redis.pipeline(transaction=True)
            for persona_id in personas:
                pipe.srem(keys.persona_docs(persona_id), eid)
            await pipe.execute()
        return personas

    @redis_boundary
    async def listing(self, account_id: str) -> Listing:
        """Every document's listing row. Cached per process and reloaded only when the
        account's documents version has moved, so a list call usually costs one GET."""
        keys = keyspace.AccountKeys(account_id)
        version = int(await self._redis.get(keys.docs_version) or 0)
        cached = self._listings.get(account_id)
        if cached is not None and cached.version == version:
            return cached
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(keys.docs_version)
        pipe.hgetall(keys.docs)
        version_raw, raw_rows = await pipe.execute()
        rows = {eid: _decode_row(raw) for eid, raw in raw_rows.items()}
        listing = Listing(int(version_raw or 0), rows)
        self._listings.put(account_id, listing)
        return listing

    @redis_boundary
    async def persona_counts(self, account_id: str, external_ids: list[str]) -> list[int]:
        keys = keyspace.AccountKeys(account_id)
        pipe = self._redis.pipeline(transaction=False)
        for eid in external_ids:
            pipe.scard(keys.doc_personas(eid))
        return list(await pipe.execute())


def new_document(external_id: str, now: datetime | None = None) -> Document:
    return Document(external_id=external_id, created_at=now or datetime.now(UTC))
