"""Seed 002's knowledge endpoints (``/api/kb/...``), onto Rapport's knowledge base.

What each is in Rapport (``kb/pages.py`` holds the rules):

- ``store-pages``: each page a text document labelled with its title, keyed by its title, its
  metadata kept; queued for processing. Storing a page again is a no-op.
- ``stream-pages``: the same, under a ``stream_id`` recorded in each page's metadata, each
  page queued as it arrives. A JSON body carries a batch; an NDJSON body
  (``Content-Type: application/x-ndjson``, ``stream_id`` in the query) carries any number of
  pages, one a line, read and stored one at a time, so the server holds one line at a time
  whatever the length; the answer is NDJSON too, a result line per page as it is stored,
  then a summary line. A client that sends a long stream should read the answer as it
  sends, as for any full-duplex HTTP exchange. The route's body limit is the NDJSON
  stream's (none); a JSON body is held to ``store-pages``' (``BODY_LIMIT``), and the
  stream's pages count against KnowledgeUploadsRate as batches of them would (``streamed``).
- ``training-data``: the account's documents by external_id (GET pages them with their
  text; PUT upserts one text document; DELETE removes one with its chunks).
- ``review-data``: each article a staged document with the submission's notes in its
  metadata, for an operator to review and process.
- ``auto-generate-prompts``: questions a user could ask about the topics, from the default
  persona's active knowledge. With an LLM configured, the model writes them from the passages
  retrieved for the topics; without one (or when the model writes none), they are picked
  (``kb.prompts``): the questions the documents ask themselves (an FAQ's headings), else their
  labels and headings asked about. Topics nothing active is about get what the knowledge
  does cover, the persona's starter prompts (issue 24: a suggestion never refuses for want
  of a match), and a persona with no active knowledge ``[]``.

Responses are seed 002's ``{"status": "success", ...}``, with the per-document results the
knowledge API gives added; errors and limits are the ``/api/`` family's (problem+json,
``validation.failed`` naming the field; page, training data and review writes count against
``KnowledgeUploadsRate`` a request, as the knowledge API's upserts do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.auditing import actor_from, audit, audit_upserts
from api.bodylimit import read_within
from api.knowledge import MAX_BATCH, external_id_of, remove_document
from api.operations import Operation
from api.problems import decode_body
from api.queries import Paging, parse_query
from api.responses import JSON, Duplex
from api.services import Services
from engine.apikeys import Principal
from engine.audit import Actor, AuditLog
from engine.errors import Failure, NotFound, RapportError, RateLimited, ValidationFailed
from engine.llm import OpenAICompatible
from engine.replies import RELATED
from kb.documents import Document
from kb.ingest import Incoming, UpsertResult
from kb.pages import Page, Text, article
from kb.prompts import questions
from kb.text_documents import ExternalId

StreamId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Note = Annotated[str, msgspec.Meta(max_length=4000)]
MAX_LINE = 1_100_000
"""The longest NDJSON line: a page of the largest text a JSON document may have."""
BODY_LIMIT = 16 * 1024 * 1024
"""A JSON body of up to 100 pages (the knowledge API's batch); stream-pages' JSON body too,
though its route takes an NDJSON body of any length."""
NDJSON = "application/x-ndjson"
PROMPTS_PER_TOPIC = 3
SUCCESS = "success"


class PagesIn(msgspec.Struct, forbid_unknown_fields=True):
    pages: Annotated[list[Page], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class StreamData(msgspec.Struct, forbid_unknown_fields=True):
    stream_id: StreamId
    pages: Annotated[list[Page], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class StreamIn(msgspec.Struct, forbid_unknown_fields=True):
    stream_data: StreamData


class StreamQuery(msgspec.Struct, forbid_unknown_fields=True):
    stream_id: StreamId


class TrainingItem(msgspec.Struct, forbid_unknown_fields=True):
    id: ExternalId
    content: Text


class TrainingIn(msgspec.Struct, forbid_unknown_fields=True):
    training_data: TrainingItem


class ReviewData(msgspec.Struct, forbid_unknown_fields=True):
    articles: Annotated[list[Text], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]
    notes: Annotated[list[Note], msgspec.Meta(max_length=MAX_BATCH)]


class ReviewIn(msgspec.Struct, forbid_unknown_fields=True):
    review_data: ReviewData


class PromptData(msgspec.Struct, forbid_unknown_fields=True):
    topics: Annotated[list[Topic], msgspec.Meta(min_length=1, max_length=20)]
    context: Annotated[str, msgspec.Meta(max_length=4000)] | None = None


class PromptsIn(msgspec.Struct, forbid_unknown_fields=True):
    data: PromptData


class PageResult(msgspec.Struct, omit_defaults=True):
    id: str
    title: str
    status: str
    """created, updated, no_op or failed."""
    error: str | None = None


class Stored(msgspec.Struct):
    status: str
    message: str
    results: list[PageResult]


class Streamed(msgspec.Struct, omit_defaults=True):
    status: str
    message: str
    stream_id: str
    results: list[PageResult] | None = None
    pages: int | None = None
    failed: int | None = None


class TrainingData(msgspec.Struct):
    id: str
    content: str
    title: str | None
    metadata: dict[str, Any]
    processing_status: str


class TrainingList(msgspec.Struct):
    status: str
    training_data: list[TrainingData]
    total_count: int


class Done(msgspec.Struct, omit_defaults=True):
    status: str
    message: str
    id: str | None = None
    result: str | None = None
    ids: list[str] | None = None


class Prompts(msgspec.Struct):
    status: str
    prompts: list[str]


def caller(request: Request) -> tuple[Services, str]:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    return services, principal.account_id


async def store(services: Services, account_id: str, items: list[Incoming]) -> list[UpsertResult]:
    # A batch that names one page twice stores its last version.
    last = {item.external_id: item for item in items}
    return await services.ingest.upsert(account_id, list(last.values()), enqueue=True)


def results(pages: list[Page], outcomes: list[UpsertResult]) -> list[PageResult]:
    by_id = {o.external_id: o.status for o in outcomes}
    return [
        PageResult(p.incoming().external_id, p.title, by_id[p.incoming().external_id])
        for p in pages
    ]


async def store_pages(request: Request) -> Response:
    services, account_id = caller(request)
    given = decode_body(await request.body(), PagesIn)
    outcomes = await store(services, account_id, [p.incoming() for p in given.pages])
    await audit_upserts(request, outcomes)
    return JSON(Stored(SUCCESS, "Pages stored successfully", results(given.pages, outcomes)))


async def stream_pages(request: Request) -> Response:
    services, account_id = caller(request)
    if request.headers.get("content-type", "").split(";")[0].strip() == NDJSON:
        stream_id = parse_query(request.query_params, StreamQuery).stream_id
        by = actor_from(request)
        return Duplex(streamed(services, by, stream_id, request.stream()), NDJSON)
    data = decode_body(await read_within(request, BODY_LIMIT), StreamIn).stream_data
    outcomes = await store(services, account_id, [p.incoming(data.stream_id) for p in data.pages])
    await audit_upserts(request, outcomes)
    return JSON(
        Streamed(
            SUCCESS,
            "Pages streamed successfully",
            data.stream_id,
            results=results(data.pages, outcomes),
        )
    )


async def streamed(
    services: Services, by: Actor, stream_id: str, body: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """One result line per page line, as each is stored, then the summary. The request
    counted once against KnowledgeUploadsRate (api.ratelimits), as a JSON batch of up to
    ``MAX_BATCH`` pages does; each further ``MAX_BATCH`` pages count once more, so a stream
    costs what its pages sent as batches would. Once the policy refuses, every further
    page fails with its 429 message, unstored; a page over the account's quota fails too.
    ``by`` is the caller, for the audit log."""
    account_id = by.account_id
    uploads = services.api_policies.uploads
    stored = failed = pages = 0
    refused: str | None = None
    async for number, line in numbered_lines(body):
        try:
            if line is None:
                raise ValidationFailed(f"The line is longer than {MAX_LINE} bytes.")
            page = decode_body(line, Page)
            pages += 1
            if refused is None and pages > MAX_BATCH and pages % MAX_BATCH == 1:
                try:
                    await services.rate_limits.enforce(uploads, account_id)
                except RateLimited as error:
                    refused = error.message
            if refused is not None:
                raise RateLimited(refused)
            (outcome,) = await services.ingest.upsert(
                account_id, [page.incoming(stream_id)], enqueue=True
            )
            await AuditLog(services.redis).upserted(by, [outcome])
            result = PageResult(outcome.external_id, page.title, outcome.status)
        except RapportError as error:
            if error.failure not in PAGE_FAILURES:
                raise  # Redis down or the like: the stream ends; what was stored stays
            result = PageResult("", "", "failed", f"line {number}: {error.message}")
        stored += result.status != "failed"
        failed += result.status == "failed"
        yield msgspec.json.encode(result) + b"\n"
    summary = Streamed(
        SUCCESS, "Pages streamed successfully", stream_id, pages=stored, failed=failed
    )
    yield msgspec.json.encode(summary) + b"\n"


PAGE_FAILURES = (
    Failure.VALIDATION_FAILED, Failure.KNOWLEDGE_QUOTA_EXCEEDED, Failure.RATE_LIMITED
)  # fmt: skip
"""What fails one page of a stream; anything else ends it."""


async def numbered_lines(body: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes | None]]:
    """The non-blank lines of a streamed body, numbered from 1; None for a line longer than
    ``MAX_LINE``, which is dropped as it is read, so that no more than that is ever held."""
    held = bytearray()
    number = 0
    too_long = False
    async for chunk in body:
        held += chunk
        while (end := held.find(b"\n")) != -1:
            line = bytes(held[:end])
            del held[: end + 1]
            number += 1
            if too_long or line.strip():
                yield number, None if too_long else line
            too_long = False
        if len(held) > MAX_LINE:
            too_long = True
            held.clear()
    if too_long or held.strip():
        yield number + 1, None if too_long else bytes(held)


async def training_data(request: Request) -> Response:
    services, account_id = caller(request)
    paging = parse_query(request.query_params, Paging)
    listing = await services.docs.listing(account_id)
    ordered = sorted(listing.rows, key=lambda eid: (listing.rows[eid].created_at, eid))
    chosen = ordered[paging.offset : paging.offset + paging.limit]
    docs = await services.docs.get_many(account_id, chosen)
    items = [await training_view(services, account_id, d) for d in docs if d is not None]
    return JSON(TrainingList(SUCCESS, items, len(ordered)))


async def training_view(services: Services, account_id: str, doc: Document) -> TrainingData:
    return TrainingData(
        id=doc.external_id,
        content=await document_text(services, account_id, doc),
        title=doc.label,
        metadata=doc.metadata,
        processing_status=doc.processing_status,
    )


async def document_text(services: Services, account_id: str, doc: Document) -> str:
    """The document's text: as sent, while it waits to be processed; once processed (its
    content is not kept), as indexed, rebuilt from its chunks."""
    if doc.content_type == "txt":
        content = await services.docs.content(account_id, doc.external_id)
        if content is not None:
            return content.decode("utf-8", errors="replace")
    chunks = await services.index.chunks(account_id, doc.live_chunk_ids())
    chunks.sort(key=lambda hit: int(hit.chunk_id.rsplit("#", 1)[1]))
    return joined([hit.text for hit in chunks])


def joined(texts: list[str]) -> str:
    """Consecutive chunks, each starting with the end of the one before (``kb.chunking``),
    as one text: each overlap kept once; chunks that do not overlap meet at a paragraph."""
    whole = ""
    for text in texts:
        overlap = next((n for n in range(min(len(whole), len(text)), 0, -1)
                        if whole.endswith(text[:n])), 0)  # fmt: skip
        whole += text[overlap:] if overlap else ("\n\n" if whole else "") + text
    return whole


async def put_training_data(request: Request) -> Response:
    services, account_id = caller(request)
    item = decode_body(await request.body(), TrainingIn).training_data
    incoming = Incoming(external_id=item.id, data=item.content.encode(), content_type="txt")
    (outcome,) = await services.ingest.upsert(account_id, [incoming], enqueue=True)
    await audit_upserts(request, [outcome])
    return JSON(
        Done(SUCCESS, "Training data updated successfully", id=item.id, result=outcome.status)
    )


async def delete_training_data(request: Request) -> Response:
    services, account_id = caller(request)
    external_id = external_id_of(request)
    doc = await services.docs.get(account_id, external_id)
    if doc is None:
        raise NotFound(f"No training data {external_id!r}.")
    await remove_document(services, account_id, doc)
    await audit(request, "document.deleted", external_id)
    return JSON(Done(SUCCESS, "Training data deleted successfully", id=external_id))


async def review_data(request: Request) -> Response:
    services, account_id = caller(request)
    data = decode_body(await request.body(), ReviewIn).review_data
    items = {i.external_id: i for i in (article(text, data.notes) for text in data.articles)}
    await audit_upserts(
        request, await services.ingest.upsert(account_id, list(items.values()), enqueue=False)
    )
    return JSON(Done(SUCCESS, "Data submitted for review", ids=list(items)))


async def auto_generate_prompts(request: Request) -> Response:
    services, account_id = caller(request)
    data = decode_body(await request.body(), PromptsIn).data
    persona_id = (await services.accounts.get(account_id)).default_persona_id
    active = await services.activations.active(account_id, persona_id) if persona_id else []
    picked: dict[str, None] = {}
    passages: dict[str, None] = {}
    for topic in data.topics:
        query = f"{topic}. {data.context}" if data.context else topic
        found = await services.retriever.retrieve(account_id, active, query, PROMPTS_PER_TOPIC)
        about = [s for s in found.snippets if s.score >= RELATED]
        passages.update(dict.fromkeys(s.text for s in about))
        for prompt in questions(about)[:PROMPTS_PER_TOPIC]:
            picked.setdefault(prompt)
    if not passages:
        # Nothing is about the topics: what the knowledge covers instead, never a guess.
        starters = await services.starters.of(account_id, persona_id) if persona_id else []
        return JSON(Prompts(SUCCESS, starters))
    prompts = list(picked)
    if isinstance(services.backend, OpenAICompatible):
        count = PROMPTS_PER_TOPIC * len(data.topics)
        written = await services.backend.questions(data.topics, data.context, list(passages), count)
        prompts = written or prompts  # a model that wrote no question: the documents' own
    return JSON(Prompts(SUCCESS, prompts))


WRITES = (Failure.VALIDATION_FAILED, Failure.KNOWLEDGE_QUOTA_EXCEEDED)
OPERATIONS = [
    Operation("POST", "/api/kb/store-pages", store_pages,
              "Store pages (title, content, metadata) as documents keyed by title; storing "
              "one again is a no-op; queued for processing.", "digital clone", Stored,
              request=PagesIn, failures=WRITES,
              body_limit=BODY_LIMIT),
    Operation("POST", "/api/kb/stream-pages", stream_pages,
              "Pages under a stream_id, each queued as it arrives: a JSON batch, or an NDJSON "
              "body of any length (stream_id in the query) answered in NDJSON, a line a page.",
              "digital clone", Streamed, request=StreamIn, other_bodies=(NDJSON,),
              failures=WRITES,
              body_limit=2**62),
    Operation("GET", "/api/kb/training-data", training_data,
              "The account's documents with their text, oldest first; `limit`, `offset`.",
              "digital clone", TrainingList, failures=(Failure.VALIDATION_FAILED,)),
    Operation("PUT", "/api/kb/training-data", put_training_data,
              "Create or update one text document by id; queued for processing.",
              "digital clone", Done, request=TrainingIn,
              failures=WRITES),
    Operation("DELETE", "/api/kb/training-data/{external_id}", delete_training_data,
              "Delete one document and its chunks.", "digital clone", Done),
    Operation("POST", "/api/kb/review-data", review_data,
              "Articles staged for an operator's review, with the notes in their metadata.",
              "digital clone", Done, request=ReviewIn,
              failures=WRITES,
              body_limit=BODY_LIMIT),
    Operation("POST", "/api/kb/auto-generate-prompts", auto_generate_prompts,
              "Questions a user could ask about the topics, from the default persona's active "
              "knowledge; topics it is not about get what it does cover, no knowledge [].",
              "digital clone", Prompts, request=PromptsIn,
              failures=(Failure.VALIDATION_FAILED,)),
]  # fmt: skip
