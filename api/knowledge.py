"""The knowledge documents API (seeds 000 and 001), keyed by external_id."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.auditing import audit, audit_upserts
from api.forms import read_upload
from api.operations import Operation
from api.problems import invalid_input, nested_too_deeply
from api.queries import DEFAULT_LIMIT, Limit, parse_query
from api.responses import JSON
from api.services import Services
from engine.apikeys import Principal
from engine.audit import given_fields
from engine.errors import (
    Failure,
    FileTooLarge,
    NotFound,
    PageLimitExceeded,
    ValidationFailed,
)
from engine.ids import uuid7
from kb.curation import DocEdit
from kb.documents import (
    EXTERNAL_ID,
    Document,
    DocumentType,
    DocWarning,
    ImageEntry,
    LinkEntry,
)
from kb.extract import content_type_of, estimate_pages
from kb.ingest import Incoming, UpsertResult
from kb.listing import SortBy, Status
from kb.text_documents import ExternalId, TextDocument

MAX_BATCH = 100  # seed 000: "Accepts up to 100 documents per call"
BATCH_BODY_LIMIT = 16 * 1024 * 1024
UPLOAD_BODY_LIMIT = 64 * 1024 * 1024
"""The multipart body; the file inside is held to RAPPORT_KB_MAX_FILE_BYTES."""


class Batch(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class ItemResult(msgspec.Struct, omit_defaults=True):
    external_id: str | None
    status: Literal["created", "updated", "no_op", "failed"]
    error: str | None = None
    """Addition to seed 000: why an item failed."""


class BatchResult(msgspec.Struct):
    created: int
    updated: int
    no_op: int
    failed: int
    results: list[ItemResult]


class SingleResult(msgspec.Struct):
    external_id: str
    status: Literal["created", "updated", "no_op"]
    re_embedded: bool


class DocView(msgspec.Struct):
    """Seed 001's KnowledgeDocPublicDto, field for field."""

    external_id: str | None
    label: str | None
    original_file_name: str | None
    content_type: DocumentType | None
    content_size_bytes: int
    estimated_knowledge_units: float
    estimated_storage_units: float
    knowledge_units: float | None
    storage_units: float | None
    processing_status: Status | None
    processed_at: datetime | None
    created_at: datetime
    error_message: str | None
    estimated_pages: int | None
    actual_pages: int | None
    has_extracted_text: bool
    active_persona_count: int
    preview_image_url: str | None
    image_library: list[ImageEntry] | None
    link_library: list[LinkEntry] | None
    warnings: list[DocWarning] | None


class DocPage(msgspec.Struct):
    items: list[DocView] | None
    total_count: int


class Queued(msgspec.Struct):
    queued: int


_decode_batch = msgspec.json.Decoder(Batch).decode
_decode_text = msgspec.json.Decoder(TextDocument).decode


def view(doc: Document, active_personas: int) -> DocView:
    return DocView(
        external_id=doc.external_id,
        label=doc.label,
        original_file_name=doc.original_file_name,
        content_type=doc.content_type,
        content_size_bytes=doc.content_size_bytes,
        estimated_knowledge_units=doc.estimated_knowledge_units,
        estimated_storage_units=doc.estimated_storage_units,
        knowledge_units=doc.knowledge_units,
        storage_units=doc.storage_units,
        processing_status=doc.processing_status,
        processed_at=doc.processed_at,
        created_at=doc.created_at,
        error_message=doc.error_message,
        estimated_pages=doc.estimated_pages,
        actual_pages=doc.actual_pages,
        has_extracted_text=doc.has_extracted_text,
        active_persona_count=active_personas,
        preview_image_url=doc.preview_image_url,
        image_library=doc.image_library,
        link_library=doc.link_library,
        warnings=doc.warnings,
    )


def external_id_of(request: Request) -> str:
    external_id: str = request.path_params["external_id"]
    if not EXTERNAL_ID.match(external_id):
        raise ValidationFailed(
            "external_id must be 1 to 128 letters, digits, '.', '_', ':' or '-'.",
            errors={"external_id": ["1 to 128 letters, digits, '.', '_', ':' or '-'"]},
        )
    return external_id


async def upsert_batch(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    try:
        batch = _decode_batch(await request.body())
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise invalid_input(exc) from None
    except RecursionError:  # skipping a value thousands deep runs out of stack
        raise nested_too_deeply() from None
    accepted: list[Incoming] = []
    results: list[ItemResult | None] = []
    seen: set[str] = set()
    for position, raw in enumerate(batch.items):
        try:
            item = _decode_text(raw).incoming()
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            results.append(
                ItemResult(None, "failed", invalid_input(exc, f"items[{position}].").message)
            )
            continue
        except ValidationFailed as exc:
            results.append(ItemResult(None, "failed", exc.message))
            continue
        if item.external_id in seen:
            results.append(ItemResult(item.external_id, "failed", "Duplicate in this batch."))
            continue
        seen.add(item.external_id)
        accepted.append(item)
        results.append(None)
    upserted = await services.ingest.upsert(principal.account_id, accepted, enqueue=False)
    await audit_upserts(request, upserted)
    outcomes = iter(upserted)
    merged = [r if r is not None else _result(next(outcomes)) for r in results]
    counts = {s: sum(1 for r in merged if r.status == s) for s in ("created", "updated", "no_op")}
    return JSON(
        BatchResult(
            created=counts["created"],
            updated=counts["updated"],
            no_op=counts["no_op"],
            failed=sum(1 for r in merged if r.status == "failed"),
            results=merged,
        )
    )


def _result(outcome: UpsertResult) -> ItemResult:
    return ItemResult(outcome.external_id, outcome.status)


async def upsert_one(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    external_id = external_id_of(request)
    try:
        document = _decode_text(await request.body())
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise invalid_input(exc) from None
    (outcome,) = await services.ingest.upsert(
        principal.account_id, [document.incoming(external_id)], enqueue=True
    )
    await audit_upserts(request, [outcome])
    return JSON(
        SingleResult(external_id, outcome.status, outcome.re_embedded),
        status_code=201 if outcome.status == "created" else 200,
    )


async def upload_file(request: Request) -> Response:
    """Multipart upload: ``file`` (txt, md, html, pdf, docx), optional ``external_id`` (else a
    UUIDv7) and ``label``. The bytes must be the type the name or mime declares."""
    services: Services = request.state.services
    principal: Principal = request.state.principal
    settings = services.settings
    upload = await read_upload(request, max_file_bytes=settings.kb_max_file_bytes, max_fields=8)
    try:
        meta = msgspec.convert(upload.fields, UploadFields)
    except msgspec.ValidationError as exc:
        raise invalid_input(exc) from None
    content_type = content_type_of(upload.file_name, upload.mime)
    pages = await anyio.to_thread.run_sync(estimate_pages, content_type, upload.data)
    if pages is not None and pages > settings.kb_max_pages:
        raise PageLimitExceeded(
            f"The document has {pages} pages; at most {settings.kb_max_pages} are accepted."
        )
    external_id = meta.external_id or uuid7()
    (outcome,) = await services.ingest.upsert(
        principal.account_id,
        [
            Incoming(
                external_id=external_id,
                data=upload.data,
                content_type=content_type,
                label=meta.label,
                original_file_name=upload.file_name,
                estimated_pages=pages,
            )
        ],
        enqueue=True,
    )
    await audit_upserts(request, [outcome])
    doc = await _existing(services, principal.account_id, external_id)
    (count,) = await services.docs.persona_counts(principal.account_id, [external_id])
    return JSON(view(doc, count), status_code=201 if outcome.status == "created" else 200)


class UploadFields(msgspec.Struct):
    external_id: ExternalId | None = None
    label: Annotated[str, msgspec.Meta(max_length=256)] | None = None


Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Caption = Annotated[str, msgspec.Meta(max_length=360)]


class ImageIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    description: Caption = ""
    is_primary: bool = False
    width: Annotated[int, msgspec.Meta(ge=0)] = 0
    height: Annotated[int, msgspec.Meta(ge=0)] = 0

    def entry(self) -> ImageEntry:
        return ImageEntry(**msgspec.structs.asdict(self))


class LinkIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    description: Caption = ""
    is_primary: bool = False

    def entry(self) -> LinkEntry:
        return LinkEntry(**msgspec.structs.asdict(self))


class DocPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out stay as they are; ``label: null`` clears the label."""

    label: Annotated[str, msgspec.Meta(max_length=256)] | msgspec.UnsetType | None = msgspec.UNSET
    image_library: list[ImageIn] | msgspec.UnsetType = msgspec.UNSET
    link_library: list[LinkIn] | msgspec.UnsetType = msgspec.UNSET

    def edit(self) -> DocEdit:
        images, links = self.image_library, self.link_library
        return DocEdit(
            label=self.label,
            image_library=images if images is msgspec.UNSET else [i.entry() for i in images],
            link_library=links if links is msgspec.UNSET else [link.entry() for link in links],
        )


_decode_patch = msgspec.json.Decoder(DocPatch).decode


async def patch_one(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    external_id = external_id_of(request)
    doc = await _existing(services, principal.account_id, external_id)
    try:
        edit = _decode_patch(await request.body()).edit()
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise invalid_input(exc) from None
    updated = await services.docs.update(principal.account_id, external_id, edit.applied, read=doc)
    if updated is None:  # deleted meanwhile
        raise _missing(external_id)
    await audit(request, "document.updated", external_id, {"fields": given_fields(edit)})
    (count,) = await services.docs.persona_counts(principal.account_id, [external_id])
    return JSON(view(updated, count))


async def _existing(services: Services, account_id: str, external_id: str) -> Document:
    doc = await services.docs.get(account_id, external_id)
    if doc is None:
        raise _missing(external_id)
    return doc


def _missing(external_id: str) -> NotFound:
    return NotFound(f"No document with external_id {external_id!r}.")


async def get_one(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    doc = await _existing(services, principal.account_id, external_id_of(request))
    (count,) = await services.docs.persona_counts(principal.account_id, [doc.external_id])
    return JSON(view(doc, count))


async def delete_one(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    doc = await _existing(services, principal.account_id, external_id_of(request))
    await remove_document(services, principal.account_id, doc)
    await audit(request, "document.deleted", doc.external_id)
    return Response(status_code=204)


async def retry_one(request: Request) -> Response:
    """Queue a failed document again (issue 23's Knowledge page); 409 unless it failed."""
    services: Services = request.state.services
    principal: Principal = request.state.principal
    failed = await _existing(services, principal.account_id, external_id_of(request))
    doc = await services.ingest.retry(principal.account_id, failed)
    await audit(request, "document.retried", doc.external_id)
    (count,) = await services.docs.persona_counts(principal.account_id, [doc.external_id])
    return JSON(view(doc, count))


async def remove_document(services: Services, account_id: str, doc: Document) -> None:
    """A document gone: its record, content and activations, then its chunks."""
    await services.docs.delete(account_id, doc)
    await services.index.delete(account_id, {"external_id": doc.external_id})


async def process(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    queued = await services.ingest.process_staged(principal.account_id)
    await audit(request, "documents.processed", "staged", {"queued": queued})
    return JSON(Queued(queued))


class ListQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = DEFAULT_LIMIT
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    sort_by: SortBy = "created_at"
    sort_dir: Literal["asc", "desc"] = "desc"
    search: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    status: Status | None = None
    external_id: str | None = None


async def list_docs(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    query = parse_query(request.query_params, ListQuery)
    listing = await services.docs.listing(principal.account_id)
    chosen = listing.select(
        query.sort_by,
        descending=query.sort_dir == "desc",
        status=query.status,
        search=query.search,
        external_id=query.external_id,
    )
    page = list(chosen[query.offset : query.offset + query.limit])
    docs = await services.docs.get_many(principal.account_id, page)
    counts = await services.docs.persona_counts(principal.account_id, page)
    items = [view(d, c) for d, c in zip(docs, counts, strict=True) if d is not None]
    return JSON(DocPage(items=items, total_count=len(chosen)))


DOC = "/api/knowledge/docs/by-external-id/{external_id}"
COMMON = (Failure.VALIDATION_FAILED,)
OPERATIONS = [
    Operation(
        "GET", "/api/knowledge/docs", list_docs,
        "List documents: paging, sorting, filters and search (seed 001).", "knowledge",
        DocPage, failures=COMMON,
    ),
    Operation(
        "PUT", "/api/knowledge/docs", upsert_batch,
        "Upsert up to 100 documents by external_id; they land staged (seed 000).", "knowledge",
        BatchResult, request=Batch,
        failures=(*COMMON, Failure.KNOWLEDGE_QUOTA_EXCEEDED, Failure.CONFLICT),
        body_limit=BATCH_BODY_LIMIT,
    ),
    Operation(
        "POST", "/api/knowledge/docs/process", process,
        "Queue every staged document for embedding; returns how many.", "knowledge", Queued,
    ),
    Operation(
        "PUT", DOC, upsert_one,
        "Upsert one document and queue it at once: 201 created, 200 updated or unchanged.",
        "knowledge", SingleResult, request=TextDocument,
        failures=(*COMMON, Failure.KNOWLEDGE_QUOTA_EXCEEDED, Failure.CONFLICT),
        body_limit=BATCH_BODY_LIMIT,
    ),
    Operation(
        "POST", "/api/knowledge/files", upload_file,
        "Upload a txt, md, html, pdf or docx file (multipart: file, external_id?, label?); "
        "queued at once. 201 created, 200 replaced or unchanged.", "knowledge", DocView,
        failures=(*COMMON, Failure.INVALID_SIGNATURE, Failure.UNSUPPORTED_TYPE,
                  Failure.FILE_TOO_LARGE, Failure.PAGE_LIMIT_EXCEEDED,
                  Failure.KNOWLEDGE_QUOTA_EXCEEDED),
        body_limit=UPLOAD_BODY_LIMIT, too_large=FileTooLarge,
    ),
    Operation("GET", DOC, get_one, "One document (seed 001 DTO).", "knowledge", DocView,
              failures=COMMON),
    Operation(
        "PATCH", DOC, patch_one,
        "Change label, image_library, link_library (<= 10 entries, one primary, https; "
        "what is dropped comes back in warnings).", "knowledge", DocView, request=DocPatch,
        failures=(*COMMON, Failure.CONFLICT),
    ),
    Operation(
        "POST", f"{DOC}/retry", retry_one,
        "Queue a failed document again: pending, its estimate charged again; 409 unless it "
        "failed.", "knowledge", DocView,
        failures=(*COMMON, Failure.CONFLICT, Failure.KNOWLEDGE_QUOTA_EXCEEDED),
    ),
    Operation(
        "DELETE", DOC, delete_one,
        "Delete a document, its chunks and its activations (204).", "knowledge", status=204,
        failures=COMMON,
    ),
]  # fmt: skip
