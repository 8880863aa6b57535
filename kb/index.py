"""The Chroma vector index: embedded under the data dir, or a Chroma server.

chromadb's client is synchronous, so every call runs in a worker thread. A Chroma server
that is down when Rapport starts is not fatal: the client is (re)made on the next use, and
until then the index reports :class:`~engine.errors.IndexUnavailable`.

A search asks Chroma for the nearest chunks' ids and distances; what a chunk holds (text,
metadata, packed vectors) is read once per process and kept (``CHUNKS_KEPT``): a chunk id
names one generation of one document, so it never changes.

Only Chroma failing, or the way to it, is IndexUnavailable (a 503 that says "retry later");
the errors that mean so are listed below by cause, and mapped once, in ``VectorIndex._call``.
Anything else (a ValueError for an id that is not a string, a TypeError) is a bug of ours
and surfaces as one, a 500 with its traceback in the log, not as "Chroma is down".
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
import chromadb
import chromadb.errors
import httpx
import msgspec
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings

from engine.config import DEFAULT_EMBEDDING_MODEL, Settings
from engine.errors import IndexUnavailable
from engine.recent import Recent
from kb.embedder import MiniLMEmbeddingFunction

T = TypeVar("T")

CHUNKS_KEPT = 4096
"""Chunks kept decoded per process (text, metadata and sentence vectors, ~13 KB each),
least recently used out first. A chunk id names one generation of one document, so what
it holds never changes (as :mod:`kb.lexical` relies on); a search then asks Chroma only for
ids and distances, half the time of a search that brings the chunks back (BENCHMARKS.md,
"Speed after issue 25")."""
COLLECTIONS_KEPT = 1024
"""Collection handles kept open, least recently used out first: one per account and model
searched or written lately. A process serves any number of accounts; a handle dropped is
opened again (one ``get_or_create_collection``) when its account comes back."""


# What chromadb 1.5.9 raises when Chroma, or the way to it, failed, by cause.
STORE_FAILED: tuple[type[Exception], ...] = (chromadb.errors.InternalError,)
"""The store itself. The embedded store is Rust (sqlx over SQLite, HNSW files): its disk and
SQLite errors reach Python as InternalError ("File exists (os error 17)" for a data dir
that is a file), never as sqlite3 errors. A server's 500s come back as the same class."""
SERVER_BUSY: tuple[type[Exception], ...] = (chromadb.errors.RateLimitError,)
"""A Chroma server shedding load (429)."""
TRANSPORT_FAILED: tuple[type[Exception], ...] = (httpx.TransportError, httpx.HTTPStatusError)
"""The HTTP client only: no connection, a timeout, a broken exchange, or an error response
that is not one of Chroma's own."""
CHROMA_FAILED = STORE_FAILED + SERVER_BUSY + TRANSPORT_FAILED
_REWRAPPED: tuple[type[Exception], ...] = (ValueError, Exception)
"""chromadb's HTTP client re-raises some of those as a plain ValueError or Exception from
inside its ``except`` block, so the cause is the exception being handled: a refused
connection while the client is made is ``ValueError("Could not connect to a Chroma
server...")`` (api/client.py), an error response it cannot name is ``Exception(body)``
(api/base_http_client.py)."""


def chroma_failed(exc: BaseException) -> bool:
    """Whether ``exc`` means Chroma, or the way to it, failed (not that our call was wrong)."""
    while not isinstance(exc, CHROMA_FAILED):
        if type(exc) not in _REWRAPPED or exc.__context__ is None:
            return False
        exc = exc.__context__
    return True


class VectorIndex:
    def __init__(
        self,
        settings: Settings,
        before_add: Callable[[], Awaitable[None]] | None = None,
        *,
        collections_kept: int = COLLECTIONS_KEPT,
        chunks_kept: int = CHUNKS_KEPT,
    ) -> None:
        self._settings = settings
        self._before_add = before_add
        """Awaited before vectors are written: the deployment records which store holds
        its documents (:meth:`engine.nodes.Nodes.claim`)."""
        self._client: ClientAPI | None = None
        self._kept = collections_kept
        self._collections: Recent[tuple[str, str], Collection] = Recent(collections_kept)
        self._chunks: Recent[tuple[str, str, str], Hit] = Recent(chunks_kept)
        """(account, model, chunk id) -> the chunk, scored 0."""
        self._lock = threading.Lock()
        """Guards the client, the handles and the chunks: Chroma is called from worker
        threads."""

    def _open(self) -> ClientAPI:
        with self._lock:
            if self._client is None:
                # Telemetry would try to reach the internet, which neither we nor many users
                # have. Settings of their own for each client: chromadb writes the path, host
                # and port into the object it is given, and refuses a second client whose
                # host or port differ from those it wrote there.
                chroma_settings = ChromaSettings(anonymized_telemetry=False)
                url = self._settings.chroma_url
                if url is None:
                    self._client = chromadb.PersistentClient(
                        path=str(self._settings.chroma_path), settings=chroma_settings
                    )
                else:
                    parts = urlsplit(url)
                    self._client = chromadb.HttpClient(
                        host=parts.hostname or "127.0.0.1",
                        port=parts.port or (443 if parts.scheme == "https" else 80),
                        ssl=parts.scheme == "https",
                        settings=chroma_settings,
                    )
            return self._client

    def _heartbeat(self) -> int:
        return self._open().heartbeat()

    async def ping(self) -> None:
        """Raise IndexUnavailable unless Chroma answers a heartbeat."""
        await self._call(self._heartbeat)

    async def _call(self, work: Callable[[], T]) -> T:
        """Run a Chroma call in a thread; Chroma failing becomes IndexUnavailable."""
        try:
            return await anyio.to_thread.run_sync(work)
        except Exception as exc:
            if not chroma_failed(exc):
                raise
            if self._settings.chroma_url is not None:
                # Rebound, not changed in place: a worker thread may hold the lock while it
                # dials, and the event loop must not wait for it.
                self._client = None  # dial again next time
                self._collections = Recent(self._kept)
            raise IndexUnavailable() from exc

    def _collection(self, account_id: str, model: str | None = None) -> Collection:
        # One collection per account and embedding model (docs/architecture.md, "Data
        # model"): vectors of two models never meet in one search. Naming our embedding
        # function stores it in the collection's configuration, so the collection reopens
        # with it offline.
        model = model or self._settings.embedding_model
        with self._lock:
            found = self._collections.get((account_id, model))
        if found is None:
            found = self._open().get_or_create_collection(
                collection_name(account_id, model),
                embedding_function=MiniLMEmbeddingFunction(model=model),  # type: ignore[arg-type]
                configuration={"hnsw": {"space": "cosine"}},
            )
            with self._lock:
                self._collections.put((account_id, model), found)
        return found

    async def add(
        self,
        account_id: str,
        ids: list[str],
        vectors: np.ndarray,
        texts: list[str],
        metadatas: list[dict[str, Any]],
    ) -> None:
        if self._before_add is not None:
            await self._before_add()

        def work() -> None:
            collection = self._collection(account_id)
            # Chroma refuses larger upserts (5,461 records for its SQLite store); a big
            # document or a group of documents may hold more chunks than that.
            step = self._open().get_max_batch_size()
            for start in range(0, len(ids), step):
                end = start + step
                collection.upsert(
                    ids=ids[start:end],
                    embeddings=vectors[start:end],
                    documents=texts[start:end],
                    metadatas=metadatas[start:end],  # type: ignore[arg-type]
                )

        await self._call(work)

    async def delete(
        self, account_id: str, where: dict[str, Any], model: str | None = None
    ) -> None:
        """Delete the chunks ``where`` matches, in the current model's collection or
        ``model``'s."""
        await self._call(lambda: self._collection(account_id, model).delete(where=where))  # type: ignore[arg-type]

    async def query(
        self, account_id: str, vector: np.ndarray, k: int, chunk_ids: list[str]
    ) -> list[Hit]:
        """The ``k`` nearest chunks among ``chunk_ids``.

        Chroma restricts the search by id (its primary key) in about half the time a
        metadata filter takes for the same chunks (BENCHMARKS.md, "Retrieval latency").
        """

        def search(ids: list[str]) -> list[Hit]:
            collection = self._collection(account_id)
            found = collection.query(
                query_embeddings=[vector],  # type: ignore[list-item]
                n_results=k,
                ids=ids,
                include=["distances"],
            )
            nearest = dict(zip(found["ids"][0], (found["distances"] or [[]])[0], strict=True))
            held = self._decoded(account_id, collection, list(nearest))
            # A chunk deleted between the two reads (its document replaced) is left out.
            return [
                msgspec.structs.replace(held[chunk_id], score=1.0 - float(distance))
                for chunk_id, distance in nearest.items()
                if chunk_id in held
            ]

        def work() -> list[Hit]:
            try:
                return search(chunk_ids)
            except chromadb.errors.InternalError:
                # Chroma refuses a query naming an id it does not hold: a replaced
                # document's old chunks, deleted after this request read the document.
                held = self._collection(account_id).get(ids=chunk_ids, include=[])["ids"]
                return search(held) if held else []

        return await self._call(work)

    def _decoded(self, account_id: str, collection: Collection, ids: list[str]) -> dict[str, Hit]:
        """The chunks among ``ids`` the collection holds, scored 0: kept ones from memory,
        the others read (in the calling worker thread) and kept."""
        model = self._settings.embedding_model
        with self._lock:
            kept = {i: self._chunks.get((account_id, model, i)) for i in ids}
        held = {i: hit for i, hit in kept.items() if hit is not None}
        missing = [i for i in ids if i not in held]
        if missing:
            read = {hit.chunk_id: hit for hit in _read(collection, missing)}
            with self._lock:
                for chunk_id, hit in read.items():
                    self._chunks.put((account_id, model, chunk_id), hit)
            held |= read
        return held

    async def chunks(
        self,
        account_id: str,
        chunk_ids: Sequence[str],
        vector: np.ndarray | None = None,
        model: str | None = None,
    ) -> list[Hit]:
        """The chunks among ``chunk_ids`` that the index holds, scored against ``vector``
        (0 without one, and then their vectors are not read); in the current model's
        collection, or ``model``'s."""

        if not chunk_ids:
            return []
        return await self._call(
            lambda: _read(self._collection(account_id, model), list(chunk_ids), vector)
        )


class Hit(msgspec.Struct, frozen=True, kw_only=True):
    chunk_id: str
    external_id: str
    text: str
    score: float
    """Cosine similarity of the chunk to the query, 1 = same direction."""
    context: str = ""
    """What the chunk was embedded with (``kb.chunking.chunk_context``)."""
    document: np.ndarray | None = None
    """The document's vector: the mean of its chunks' (None for chunks indexed before
    documents had one)."""
    sentences: list[np.ndarray | None] = msgspec.field(default_factory=list)
    """A vector for each sentence of ``text`` (``engine.sentences``), pooled from the chunk's
    own pass; None for one past the model's truncation."""


def _read(collection: Collection, ids: list[str], vector: np.ndarray | None = None) -> list[Hit]:
    """The chunks among ``ids`` that ``collection`` holds, scored against ``vector`` (0
    without one, and then their vectors are not read). Runs in a worker thread."""
    include = ["documents", "metadatas"] + (["embeddings"] if vector is not None else [])
    found = collection.get(ids=ids, include=include)  # type: ignore[arg-type]
    embeddings = found["embeddings"] if vector is not None else None
    scores = [0.0] * len(found["ids"]) if embeddings is None else embeddings @ vector
    return [
        _hit(chunk_id, text, meta, float(score))
        for chunk_id, text, meta, score in zip(
            found["ids"], found["documents"] or [], found["metadatas"] or [], scores, strict=True
        )
    ]


def _hit(chunk_id: str, text: str, meta: Any, score: float) -> Hit:
    sentences = unpack(meta.get("sentences", ""))
    return Hit(
        chunk_id=chunk_id,
        external_id=str(meta["external_id"]),
        text=text,
        score=score,
        context=str(meta.get("context", "")),
        document=unpack(meta["document"])[0] if meta.get("document") else None,
        # A sentence with no vector was packed as zeros.
        sentences=[v if v.any() else None for v in sentences],
    )


def pack(vectors: Sequence[np.ndarray | None], dimensions: int) -> str:
    """Vectors as one metadata string, ``<rows>:<base64 of float16 rows>``. Chroma's
    metadata holds scalars only, and a chunk's sentence vectors must come back with the
    chunk in the same query, not in a second lookup; float16 keeps a cosine to ~1e-3, far
    below what tells two sentences apart. A missing vector is a row of zeros."""
    rows = np.zeros((len(vectors), dimensions), dtype=np.float16)
    for row, vector in enumerate(vectors):
        if vector is not None:
            rows[row] = vector
    return f"{len(vectors)}:{base64.b64encode(rows.tobytes()).decode()}"


def unpack(packed: str) -> list[np.ndarray]:
    if not packed:
        return []
    count, _, data = packed.partition(":")
    if not int(count):
        return []
    rows = np.frombuffer(base64.b64decode(data), dtype=np.float16).astype(np.float32)
    return list(rows.reshape(int(count), -1))


def collection_name(account_id: str, model: str = DEFAULT_EMBEDDING_MODEL) -> str:
    # The default model's keeps the name collections had before there was a choice.
    suffix = "" if model == DEFAULT_EMBEDDING_MODEL else f"--{model}"
    return f"acct-{account_id}{suffix}"
