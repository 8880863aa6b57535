"""Knowledge base benchmark (issue 4): ingest, retrieval latency, recall@5, listing.

Each Rapport figure is compared with a peer measured in the same run:

1. Ingest throughput. ``rapport serve`` (fresh temp data dir, loopback, one process,
   RAPPORT_LOG_LEVEL=warning, seed 000's /api/ rate limits raised so they count but never
   refuse) gets ``--docs`` documents of generated English prose, one
   ``PUT /api/knowledge/docs/by-external-id/{id}`` each (queued at once); the clock stops when
   the last one is ``ready``. Peer: ``Embedder(threads=2).embed`` in this process on exactly
   the same texts the worker embeds (``extract``, ``chunk_text``, each chunk with its
   context; then each sentence of the document once, shortest first), in the worker's batches (per
   document, ``EMBED_BATCH`` at a time). Runs alternate raw, pipeline, raw, ..., raw
   (``--ingest-rounds`` pipeline runs), and each pipeline run is compared with the raw runs
   on either side. The server runs with wrappers that time its worker's steps (embed,
   Chroma add and delete, both job stages), so each round also gives the pipeline's
   throughput relative to the server's own embedder at that moment.
2. Retrieval latency at ``--chunks`` sizes (10k and 100k) in one account, built directly
   through ``kb.index.VectorIndex``. ``--real-chunks`` chunks are real (embedded); the rest
   are real vectors plus Gaussian noise, renormalised, carrying the source chunk's text.
   Chunks are spread over ``--index-docs`` documents; ``--active`` of them are the
   persona's. Each chunk carries metadata of the size the worker writes (context, document
   vector, six packed sentence vectors). Timed, per query: the retriever's dense step (embed
   the query in a thread, then ``VectorIndex.query`` restricted to the active documents'
   chunk ids, for the 20 candidates ``kb.retrieval`` asks; recall is of its first 5) against the
   peer, the same Chroma query with no filter; plus the query embedding alone, each query
   alone and the id filter alone (``get(ids=...)``).
3. recall@5 of the filtered Chroma query against exact search (numpy dot products over the
   active documents' chunks), for the same queries.
4. ``GET /api/knowledge/docs`` at ``--list-docs`` staged documents (batch upserts of 100,
   tiny contents) with a few parameter mixes, against ``GET /healthz`` on the same server,
   interleaved in rounds. A second server with Python's cyclic GC disabled gets the same
   load, as a diagnostic of the latency tail (``--no-list-gc-check`` skips it).

Everything is on loopback; every loop is bounded; each server is stopped by its pid.

    .venv/bin/python -m bench.knowledge [--docs 40] [--ingest-rounds 5] [--queries 300]
        [--chunks 10000 100000] [--noise 0.5] [--list-docs 10000] [--parts ingest ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import numpy as np

from bench.harness import run_bench, spawn_ready_rapport
from bench.http_overhead import (
    Server,
    Tally,
    cpu_seconds,
    machine,
    stop,
)
from engine.config import Settings
from engine.sentences import sentences
from kb.chunking import chunk_contexts, chunk_text, passage
from kb.embedder import DIMENSIONS, Embedder
from kb.extract import extract
from kb.index import VectorIndex, pack
from kb.retrieval import DENSE_CANDIDATES
from kb.worker import EMBED_BATCH

DOCS = "/api/knowledge/docs"
DOC = DOCS + "/by-external-id/{}"
HEALTHZ = "/healthz"
ACCOUNT = "bench"
K = 5  # engine.turns.KNOWLEDGE_K
CANDIDATES = K * DENSE_CANDIDATES
"""Chunks the retriever asks Chroma for (kb.retrieval)."""
_unit_rows = np.random.default_rng(0).normal(size=(7, DIMENSIONS)).astype(np.float32)
_unit_rows /= np.linalg.norm(_unit_rows, axis=1, keepdims=True)
PAYLOAD = {
    "context": "A label\nA heading\nThe document's first sentence, as long as most are.",
    "document": pack([_unit_rows[0]], DIMENSIONS),
    "sentences": pack(list(_unit_rows[1:]), DIMENSIONS),
}
"""What the worker stores besides (kb.worker.Processor._embed), at its usual size: a chunk of
six sentences. Only the size matters to the query's time."""
ADD_BATCH = 5000  # under Chroma's max batch size (5461 for the embedded store)
LIST_BATCH = 100  # seed 000: up to 100 documents per batch call
REQUEST_TIMEOUT_S = 30.0
POLL_S = 0.1  # status polls: at most 10 a second, so they barely load the server
EMBED_THREADS = 2  # what the server's shared_embedder() uses
# Seed 000's /api/ policies stay on (every request is counted in Redis) but never refuse:
# their defaults (60 uploads, 300 requests a minute) would throttle the load itself.
NEVER_REFUSE = {f"RAPPORT_{name}_RPM": "10000000" for name in ("UPLOADS", "MUTATIONS", "GLOBAL_IP")}

# --- text ----------------------------------------------------------------------------------

NOUNS = """account address agreement airport answer apartment appliance application
appointment area argument article assistant audit balance bank battery bill birthday board
booking branch bridge budget building bundle cabinet calendar camera campaign card carrier
catalogue category certificate chair channel charge checkout city claim client clinic
coffee collection company complaint computer contract copy coupon course customer dashboard
database deadline delivery department deposit design desk device discount district doctor
document door driver engine entrance equipment estimate event exchange expense factory
feature fee file filter fleet floor form garden gift guarantee guest guide harbor helmet
holiday hotel household invoice item journey kitchen label laptop lease ledger letter
library license locker luggage machine manager manual market meeting member menu message
meter model module monitor mortgage network notice number office order owner package page
parcel partner password patient payment pension permit phone plan platform policy portal
premium price printer product profile project property receipt record refund region
register rental report request reservation restaurant review route salary sample schedule
school screen seat sensor server service session shipment shop signature subscription
supplier support surface system tariff team technician ticket timetable token tool tour
train transfer trial upgrade user vehicle vendor voucher wallet warehouse warranty website
window workshop""".split()
VERBS = """accepts adjusts allows approves arranges assigns blocks books builds calculates
cancels changes charges checks collects combines confirms connects covers creates delivers
describes displays downloads estimates exchanges explains extends fills finds fixes follows
handles holds includes installs keeps lists loads locks manages marks measures moves needs
notifies offers opens orders packs pays places prepares prints protects provides receives
records reduces registers reminds removes renews repairs replaces reports requires reserves
resets returns reviews saves schedules sends shares ships shows signs sorts starts stores
supports tracks transfers unlocks updates uploads uses validates verifies""".split()
ADJECTIVES = """active additional annual automatic available basic certain clear common
complete current daily digital direct early electronic empty extra familiar final first
flexible formal free full general green heavy important initial internal large late light
local long main manual modern monthly national new next normal official online open
optional original other personal previous primary private public quick quiet recent
regular remote safe secure separate short simple single small special standard strong
temporary total usual valid various weekly whole written""".split()
ADVERBS = """usually often always sometimes quickly carefully automatically directly
immediately later normally only also again early still already""".split()
PREPOSITIONS = """for with from about after before during under over within without
through between against near""".split()
CONNECTIVES = ["and", "but", "because", "so", "while", "although", "unless", "when", "if"]
QUESTIONS = ["How", "When", "Why", "Where", "How often", "Who says"]


def noun(rng: random.Random, topic: list[str]) -> str:
    return rng.choice(topic) if rng.random() < 0.45 else rng.choice(NOUNS)


def phrase(rng: random.Random, topic: list[str]) -> str:
    words = [rng.choice(["the", "a", "each", "every", "your", "our", "this"])]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    words.append(noun(rng, topic))
    return " ".join(words)


def clause(rng: random.Random, topic: list[str]) -> str:
    words = [phrase(rng, topic)]
    if rng.random() < 0.3:
        words.append(rng.choice(ADVERBS))
    words += [rng.choice(VERBS), phrase(rng, topic)]
    if rng.random() < 0.6:
        words += [rng.choice(PREPOSITIONS), phrase(rng, topic)]
    return " ".join(words)


def sentence(rng: random.Random, topic: list[str]) -> str:
    text = clause(rng, topic)
    if rng.random() < 0.45:
        text += f", {rng.choice(CONNECTIVES)} {clause(rng, topic)}"
    if rng.random() < 0.1:
        text += f" (about {rng.randint(2, 90)} {rng.choice(['days', 'minutes', 'euros', '%'])})"
    return text[0].upper() + text[1:] + ("?" if rng.random() < 0.05 else ".")


def document(rng: random.Random) -> str:
    """A few paragraphs (about 200-500 words) around a handful of topic nouns."""
    topic = rng.sample(NOUNS, 6)
    paragraphs = []
    for _ in range(rng.randint(3, 6)):
        paragraphs.append(" ".join(sentence(rng, topic) for _ in range(rng.randint(4, 7))))
    return "\n\n".join(paragraphs)


def base_form(verb: str) -> str:
    """'pays' -> 'pay', 'fixes' -> 'fix', 'reduces' -> 'reduce'."""
    if verb.endswith("es") and verb[:-2].endswith(("sh", "ch", "x", "ss")):
        return verb[:-2]
    return verb.removesuffix("s")


def question(rng: random.Random) -> str:
    topic = rng.sample(NOUNS, 3)
    return (
        f"{rng.choice(QUESTIONS)} {rng.choice(['does', 'can', 'will', 'should'])} "
        f"{phrase(rng, topic)} {base_form(rng.choice(VERBS))} {phrase(rng, topic)}?"
    )


def chunk_texts(text: str) -> list[str]:
    """What the worker embeds for a txt document with no label and no keywords: each chunk
    with its context (``kb.chunking.passage``)."""
    extracted = extract("txt", text.encode(), max_pages=500)
    chunks = chunk_text(extracted.text)
    contexts = chunk_contexts(extracted.text, chunks, None)
    return [passage(c, k.text, [])[0] for c, k in zip(contexts, chunks, strict=True)]


def sentence_batches(text: str) -> list[list[str]]:
    """The worker's second embedding of a document: each sentence of its chunks once, and
    a one-chunk document's own text, shortest first, EMBED_BATCH at a time
    (``kb.worker.Processor._embed``)."""
    extracted = extract("txt", text.encode(), max_pages=500)
    chunks = chunk_text(extracted.text)
    found = {s for chunk in chunks for s in sentences(chunk.text)}
    if len(chunks) == 1:
        found.add(passage("", chunks[0].text, [])[0])
    unique = sorted(found, key=len)
    return [unique[i : i + EMBED_BATCH] for i in range(0, len(unique), EMBED_BATCH)]


def batches(docs: list[list[str]]) -> list[list[str]]:
    """The worker's embedding batches: per document, EMBED_BATCH texts at a time."""
    return [d[i : i + EMBED_BATCH] for d in docs for i in range(0, len(d), EMBED_BATCH)]


# --- helpers -------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def pct(values: list[float], q: int) -> float:
    tally = Tally(latencies=values)
    return tally.p(q) / 1000  # seconds


def machine_lines() -> Iterator[str]:
    yield from machine()
    names = ("chromadb", "onnxruntime", "numpy", "tokenizers", "redis", "msgspec")
    yield "packages: " + ", ".join(f"{n} {version(n)}" for n in names)
    yield f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)


def start(
    data_dir: Path, log: Path, servers: list[Server], command: list[str] | None = None
) -> tuple[Server, str, dict[str, str]]:
    """``rapport serve`` as the harness starts it, plus NEVER_REFUSE."""
    server, base, key = spawn_ready_rapport(data_dir, log, servers, NEVER_REFUSE, command)
    return server, base, {"X-Api-Key": key}


def expect(response: httpx.Response, *codes: int) -> Any:
    if response.status_code not in codes:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: "
            f"{response.status_code} {response.text[:300]}"
        )
    return response.json()


# --- 1. ingest -----------------------------------------------------------------------------


@dataclass
class RawRun:
    seconds: float
    cpu: float


def raw_embed(embedder: Embedder, work: list[list[str]]) -> tuple[RawRun, list[np.ndarray]]:
    out: list[np.ndarray] = []
    cpu0 = time.process_time()
    started = time.perf_counter()
    for batch in work:
        out.append(embedder.embed(batch))
    return RawRun(time.perf_counter() - started, time.process_time() - cpu0), out


def wait_all_ready(
    client: httpx.Client, base: str, ids: list[str], deadline: float
) -> tuple[float, int]:
    """Walk the ids in queue order (the queue is FIFO); returns (finish time, polls)."""
    polls = 0
    position = 0
    while position < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"ingest timed out: {position}/{len(ids)} documents ready")
        doc = expect(client.get(base + DOC.format(ids[position])), 200)
        polls += 1
        status = doc["processing_status"]
        if status == "ready":
            position += 1
            continue
        if status == "failed":
            raise RuntimeError(f"{ids[position]} failed: {doc['error_message']}")
        time.sleep(POLL_S)
    return time.perf_counter(), polls


def pipeline_round(
    client: httpx.Client, base: str, ids: list[str], texts: list[str], deadline: float
) -> tuple[float, float, int]:
    """Upsert every document (each queued at once) and wait until all are ready; returns
    (seconds from the first upsert to the last ready, seconds the uploads took, polls)."""
    started = time.perf_counter()
    for eid, text in zip(ids, texts, strict=True):
        body = {"content": text, "content_type": "txt", "label": eid}
        expect(client.put(base + DOC.format(eid), json=body), 201)
    uploaded = time.perf_counter() - started
    finished, polls = wait_all_ready(client, base, ids, deadline)
    return finished - started, uploaded, polls


def indexed_chunks(data_dir: Path) -> int:
    """Chunks in the stopped server's embedded Chroma, every collection."""
    client = VectorIndex(Settings(data_dir=str(data_dir)))._open()
    return sum(c.count() for c in client.list_collections())


STEPS = ("embed", "Chroma add", "Chroma delete")


def ingest(
    args: argparse.Namespace, workdir: Path, servers: list[Server], embedder: Embedder, say: Report
) -> tuple[list[str], np.ndarray]:
    rng = random.Random(args.seed)
    texts = [document(rng) for _ in range(args.docs)]
    per_doc = [chunk_texts(t) for t in texts]
    work = batches(per_doc)
    sentence_work = [b for t in texts for b in sentence_batches(t)]
    chunks = sum(len(d) for d in per_doc)
    words = sum(len(t.split()) for t in texts)
    tokens = sum(embedder.embed_counting(batch)[1] for batch in batches(per_doc))
    warm_text = document(random.Random(-1))
    print(f"ingest: {args.docs} docs, {words} words, {chunks} chunks, {tokens} tokens", flush=True)

    data_dir = workdir / "ingest-data"
    stages_file = workdir / "stages.json"
    command = [sys.executable, "-m", "bench.knowledge", "--serve-stages", str(stages_file)]
    server, base, auth = start(data_dir, workdir / "ingest.log", servers, command)
    pids = [server.proc.pid, *server.extra_pids]
    raws: list[RawRun] = []
    rounds: list[tuple[float, float, float, int]] = []  # seconds, cpu, uploads, polls
    inside: list[dict[str, float]] = []  # per round: seconds per step in the server
    vectors: list[np.ndarray] = []
    # Warm-up, unmeasured: one document through each side.
    embedder.embed(chunk_texts(warm_text))
    with httpx.Client(headers=auth, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        deadline = time.monotonic() + args.ingest_timeout
        body = {"content": warm_text, "label": "warm-up"}
        expect(client.put(base + DOC.format("warm-up"), json=body), 201)
        wait_all_ready(client, base, ["warm-up"], deadline)
        jobs = 1
        before = stages_after(stages_file, jobs)
        # raw, pipeline, raw, pipeline, ..., raw: each pipeline round sits between two raws.
        for r in range(args.ingest_rounds + 1):
            run, vectors = raw_embed(embedder, work)
            more, _ = raw_embed(embedder, sentence_work)
            run = RawRun(run.seconds + more.seconds, run.cpu + more.cpu)
            raws.append(run)
            print(f"raw embedder: {chunks / run.seconds:.1f} chunks/s", flush=True)
            if r == args.ingest_rounds:
                break
            ids = [f"r{r}-doc-{i:05d}" for i in range(args.docs)]
            cpu0 = cpu_seconds(pids)
            seconds, uploaded, polls = pipeline_round(client, base, ids, texts, deadline)
            rounds.append((seconds, cpu_seconds(pids) - cpu0, uploaded, polls))
            jobs += args.docs
            after = stages_after(stages_file, jobs)
            inside.append(
                {k: after.get(k, (0.0, 0))[0] - before.get(k, (0.0, 0))[0] for k in after}
            )
            before = after
            print(f"pipeline: {chunks / seconds:.1f} chunks/s", flush=True)
        listed = expect(client.get(base + DOCS, params={"status": "ready", "limit": 1}), 200)
    stop(server)
    servers.remove(server)
    expected_docs = args.ingest_rounds * args.docs + 1
    if listed["total_count"] != expected_docs:
        raise RuntimeError(f"{listed['total_count']} ready documents, expected {expected_docs}")
    if before.get("settle", (0.0, 0))[1] != expected_docs:
        raise RuntimeError(f"the server settled {before.get('settle')} jobs, not {expected_docs}")
    stored = indexed_chunks(data_dir)
    expected_chunks = args.ingest_rounds * chunks + len(chunk_texts(warm_text))
    if stored != expected_chunks:
        raise RuntimeError(f"Chroma holds {stored} chunks, expected {expected_chunks}")

    say("### Ingest throughput")
    say()
    say(
        f"{args.docs} documents, {words} words, {chunks} chunks ({chunks / args.docs:.1f} a "
        f"document), {tokens} tokens. Order: raw, pipeline, raw, ... raw "
        f"({args.ingest_rounds} pipeline rounds, new external_ids each round); each pipeline "
        f"round is compared with the mean of the raw runs on either side. Chroma held "
        f"{stored} chunks afterwards, as expected."
    )
    say()
    say("| run | seconds | chunks/s | CPU s/chunk | pipeline / raw |")
    say("|---|---:|---:|---:|---:|")
    ratios: list[float] = []
    for r, raw in enumerate(raws):
        say(
            f"| raw Embedder(threads=2) #{r + 1} | {raw.seconds:.2f} "
            f"| {chunks / raw.seconds:.1f} | {raw.cpu / chunks:.4f} | |"
        )
        if r < len(rounds):
            seconds, cpu, uploaded, polls = rounds[r]
            around = statistics.mean(chunks / x.seconds for x in raws[r : r + 2])
            ratios.append(chunks / seconds / around)
            say(
                f"| rapport pipeline #{r + 1} (uploads {uploaded:.2f} s, {polls} polls) "
                f"| {seconds:.2f} | {chunks / seconds:.1f} | {cpu / chunks:.4f} "
                f"| {ratios[-1]:.3f} |"
            )
    say()
    raw_rate = statistics.mean(chunks / x.seconds for x in raws)
    rate = statistics.mean(chunks / x[0] for x in rounds)
    cpu_ratio = statistics.mean(x[1] for x in rounds) / statistics.mean(x.cpu for x in raws)
    ratio = statistics.median(ratios)
    say(
        f"Pipeline / raw throughput: median {ratio:.3f} over the rounds "
        f"({min(ratios):.3f}-{max(ratios):.3f}); means {rate:.1f} against {raw_rate:.1f} "
        f"chunks/s. CPU per chunk: pipeline (server process plus its redis-server) "
        f"{cpu_ratio:.2f}x raw."
    )
    say()
    say(
        "Inside the server, per round (its worker's steps timed by wrappers; seconds). A job "
        "has two stages, 'prepare' (read, extract, chunk, embed: one document) and 'commit' "
        "(one Chroma add for a group of documents, flip each to ready, one delete of older "
        "chunks); a group's commit overlaps the next group's prepares, so the stages add "
        "up to more than the wall time. "
        "'embedding share' is embed time over the round's wall "
        "time: the pipeline's throughput relative to the server's own embedder at that moment."
    )
    say()
    say(
        "| round | wall | prepare | commit | embed | Chroma add | Chroma delete | embedding share |"
    )
    say("|---:|---:|---:|---:|---:|---:|---:|---:|")
    shares: list[float] = []
    for r, (step, (seconds, *_)) in enumerate(zip(inside, rounds, strict=True)):
        shares.append(step.get("embed", 0.0) / seconds)
        say(
            f"| {r + 1} | {seconds:.2f} | "
            + " | ".join(f"{step.get(k, 0.0):.2f}" for k in ("prepare", "commit", *STEPS))
            + f" | {shares[-1]:.3f} |"
        )
    say()
    share = statistics.median(shares)
    say(
        f"**Target ingest >= 85 % of raw: {verdict(ratio >= 0.85)}** against the raw peer "
        f"({ratio * 100:.1f} %, median of the rounds). Against the server's own embedding "
        f"speed in the same rounds: {share * 100:.1f} % (median; "
        f"{min(shares) * 100:.1f}-{max(shares) * 100:.1f} %)."
    )
    say()
    flat = [c for d in per_doc for c in d]
    return flat, np.concatenate(vectors, axis=0)


# --- 2 and 3. retrieval --------------------------------------------------------------------


def real_pool(
    args: argparse.Namespace, embedder: Embedder, texts: list[str], vectors: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """At least --real-chunks embedded chunks: the ingest's, then more documents."""
    rng = random.Random(args.seed + 1)
    extra: list[list[str]] = []
    have = len(texts)
    for _ in range(args.real_chunks):  # bounded: each document adds at least one chunk
        if have >= args.real_chunks:
            break
        extra.append(chunk_texts(document(rng)))
        have += len(extra[-1])
    work = batches(extra)
    started = time.perf_counter()
    more = [embedder.embed(batch) for batch in work]
    if work:
        print(
            f"embedded {have - len(texts)} more real chunks in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
    all_texts = texts + [c for d in extra for c in d]
    return all_texts[: args.real_chunks], np.concatenate([vectors, *more])[: args.real_chunks]


def synthesise(
    args: argparse.Namespace, texts: list[str], real: np.ndarray, total: int
) -> tuple[list[str], np.ndarray, float]:
    """Real vectors first, then noisy renormalised copies of random real ones."""
    rng = np.random.default_rng(args.seed)
    count = total - len(real)
    if count <= 0:
        return texts[:total], real[:total], 1.0
    source = rng.integers(0, len(real), size=count)
    sigma = args.noise / np.sqrt(DIMENSIONS)
    noisy = real[source] + rng.normal(0.0, sigma, size=(count, DIMENSIONS)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    similarity = float(np.mean(np.sum(noisy * real[source], axis=1)))
    vectors = np.concatenate([real, noisy]).astype(np.float32)
    return texts + [texts[s] for s in source], vectors, similarity


def chunk_id(j: int, docs: int) -> tuple[str, str, int]:
    """Chunk j belongs to document j % docs: (external_id, doc_gen tag, chunk index)."""
    eid = f"kb-doc-{j % docs:05d}"
    return eid, f"{eid}@1", j // docs


@dataclass
class Timings:
    retriever: list[float] = field(default_factory=list)  # embed + filtered query
    peer: list[float] = field(default_factory=list)  # embed + unfiltered query
    embed: list[float] = field(default_factory=list)
    filtered: list[float] = field(default_factory=list)  # VectorIndex.query alone
    unfiltered: list[float] = field(default_factory=list)
    metadata: list[float] = field(default_factory=list)  # the id filter alone: get()
    recall: list[float] = field(default_factory=list)
    short: int = 0  # filtered queries that returned fewer than K chunks


async def measure_queries(
    args: argparse.Namespace,
    index: VectorIndex,
    embedder: Embedder,
    queries: list[str],
    active_ids: list[str],
    active_rows: np.ndarray,
    vectors: np.ndarray,
    warmup: int,
) -> Timings:
    collection = index._collection(ACCOUNT)  # the very collection VectorIndex.query searches
    active = vectors[active_rows]

    def unfiltered(vector: np.ndarray) -> int:
        # VectorIndex.query less the id filter: same include, same result handling.
        found = collection.query(
            query_embeddings=[vector],  # type: ignore[list-item]
            n_results=K,
            include=["documents", "metadatas", "distances"],
        )
        documents = (found["documents"] or [[]])[0]
        metadatas = (found["metadatas"] or [[]])[0]
        distances = (found["distances"] or [[]])[0]
        hits = [
            (str(meta["external_id"]), text, 1.0 - float(dist))
            for text, meta, dist in zip(documents, metadatas, distances, strict=True)
        ]
        return len(hits)

    def filtered_ids(vector: np.ndarray) -> list[str]:
        found = collection.query(
            query_embeddings=[vector],  # type: ignore[list-item]
            n_results=K,
            ids=active_ids,
            include=["distances"],
        )
        return list(found["ids"][0])

    timings = Timings()
    for n, query in enumerate(queries):
        measured = n >= warmup
        t0 = time.perf_counter()
        vector = (await anyio.to_thread.run_sync(embedder.embed, [query]))[0]
        hits = await index.query(ACCOUNT, vector, CANDIDATES, active_ids)
        t1 = time.perf_counter()
        vector = (await anyio.to_thread.run_sync(embedder.embed, [query]))[0]
        await anyio.to_thread.run_sync(unfiltered, vector)
        t2 = time.perf_counter()
        vector = embedder.embed([query])[0]
        t3 = time.perf_counter()
        await index.query(ACCOUNT, vector, CANDIDATES, active_ids)
        t4 = time.perf_counter()
        await anyio.to_thread.run_sync(unfiltered, vector)
        t5 = time.perf_counter()
        await anyio.to_thread.run_sync(lambda: collection.get(ids=active_ids, include=[]))
        t6 = time.perf_counter()
        if not measured:
            continue
        timings.short += len(hits) < K  # len(active_rows) >= K: K chunks do match
        timings.retriever.append(t1 - t0)
        timings.peer.append(t2 - t1)
        timings.embed.append(t3 - t2)
        timings.filtered.append(t4 - t3)
        timings.unfiltered.append(t5 - t4)
        timings.metadata.append(t6 - t5)
        got = set(await anyio.to_thread.run_sync(filtered_ids, vector))
        best = np.argpartition(-(active @ vector), K)[:K]
        exact = {"{}#{}".format(*chunk_id(int(active_rows[b]), args.index_docs)[1:]) for b in best}
        timings.recall.append(len(got & exact) / K)
    return timings


async def retrieval(
    args: argparse.Namespace,
    workdir: Path,
    embedder: Embedder,
    texts: list[str],
    vectors: np.ndarray,
    say: Report,
) -> None:
    real_texts, real = real_pool(args, embedder, texts, vectors)
    top = max(args.chunks)
    all_texts, all_vectors, similarity = synthesise(args, real_texts, real, top)
    pairs = np.random.default_rng(args.seed + 2).integers(0, len(real), size=(2000, 2))
    pair_similarity = float(np.mean(np.sum(real[pairs[:, 0]] * real[pairs[:, 1]], axis=1)))
    rng = random.Random(args.seed + 3)
    active_docs = sorted(rng.sample(range(args.index_docs), args.active))
    active_set = set(active_docs)
    queries = [question(rng) for _ in range(args.queries + args.warmup_queries)]

    index = VectorIndex(Settings(data_dir=str(workdir / "retrieval-data")))
    say("### Retrieval latency and recall@5")
    say()
    say(
        f"{len(real)} real chunks (generated prose, embedded); the rest are real vectors plus "
        f"Gaussian noise (norm {args.noise}), renormalised, with the source chunk's text: mean "
        f"cosine to their source {similarity:.3f} (two random real chunks: "
        f"{pair_similarity:.3f}). Chunks spread round robin over {args.index_docs} documents; "
        f"{args.active} active. {args.queries} generated questions (after "
        f"{args.warmup_queries} warm-up), k={K}. Times are per query, in ms."
    )
    say()
    rows: list[tuple[int, float, Timings, int]] = []
    built = 0
    for size in sorted(args.chunks):
        started = time.perf_counter()
        for lo in range(built, size, ADD_BATCH):  # bounded by size
            hi = min(lo + ADD_BATCH, size)
            meta = [chunk_id(j, args.index_docs) for j in range(lo, hi)]
            await index.add(
                ACCOUNT,
                ids=[f"{tag}#{c}" for _, tag, c in meta],
                vectors=all_vectors[lo:hi],
                texts=all_texts[lo:hi],
                metadatas=[
                    {"external_id": e, "doc_gen": t, "chunk": c, **PAYLOAD} for e, t, c in meta
                ],
            )
        rate = (size - built) / (time.perf_counter() - started)
        built = size
        print(f"index at {size} chunks ({rate:.0f} chunks/s to add)", flush=True)
        active_rows = np.array(
            [j for j in range(size) if j % args.index_docs in active_set], dtype=np.int64
        )
        active_ids = ["{}#{}".format(*chunk_id(int(j), args.index_docs)[1:]) for j in active_rows]
        timings = await measure_queries(
            args,
            index,
            embedder,
            queries,
            active_ids,
            active_rows,
            all_vectors,
            args.warmup_queries,
        )
        rows.append((size, rate, timings, len(active_rows)))

    say(
        "| chunks | active chunks | what | p50 ms | p95 ms | p99 ms | mean ms |\n"
        "|---:|---:|---|---:|---:|---:|---:|"
    )
    for size, _, t, active_count in rows:
        for name, values in (
            ("retriever: embed + filtered query", t.retriever),
            ("peer: embed + unfiltered query", t.peer),
            ("query embedding alone", t.embed),
            ("filtered VectorIndex.query alone", t.filtered),
            ("unfiltered query alone", t.unfiltered),
            ("id filter alone: get(ids=...)", t.metadata),
        ):
            say(
                f"| {size} | {active_count} | {name} | {ms(pct(values, 50))} "
                f"| {ms(pct(values, 95))} | {ms(pct(values, 99))} "
                f"| {ms(statistics.mean(values))} |"
            )
    say()
    say("| chunks | add chunks/s | p50 ratio | p95 ratio | p50 diff ms | mean recall@5 |")
    say("|---:|---:|---:|---:|---:|---:|")
    for size, rate, t, _ in rows:
        say(
            f"| {size} | {rate:.0f} | {pct(t.retriever, 50) / pct(t.peer, 50):.2f} "
            f"| {pct(t.retriever, 95) / pct(t.peer, 95):.2f} "
            f"| {ms(pct(t.retriever, 50) - pct(t.peer, 50))} | {statistics.mean(t.recall):.3f} |"
        )
    say()
    say("Ratios: retriever over peer, both including the query embedding. Verdicts:")
    for size, _, t, _ in rows:
        p50, p95 = pct(t.retriever, 50), pct(t.retriever, 95)
        worst = min(t.recall)
        say(
            f"- At {size} chunks: p50 {ms(p50)} ms, p95 {ms(p95)} ms"
            + (
                f"; **p50 <= 15 ms: {verdict(p50 <= 0.015)}, p95 <= 30 ms: "
                f"{verdict(p95 <= 0.030)}**"
                if size == 10_000
                else " (no target)"
            )
            + f"; mean recall@5 {statistics.mean(t.recall):.3f} (lowest {worst:.1f}); "
            f"{t.short} of {len(t.recall)} filtered queries returned fewer than {K} chunks."
        )
    say()


# --- 4. listing ----------------------------------------------------------------------------


# The same server with Python's cyclic garbage collector off: a diagnostic, not a peer.
GC_OFF_COMMAND = [sys.executable, "-m", "bench.knowledge", "--serve-gc-off"]


@dataclass
class ListTarget:
    server: str
    name: str
    url: str
    params: dict[str, str]
    headers: dict[str, str]
    total: int  # expected total_count; -1: not a list call
    pids: list[int]
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0


def fill(client: httpx.Client, base: str, auth: dict[str, str], labels: list[str]) -> float:
    """Stage one document per label with batch upserts; returns the seconds it took."""
    rng = random.Random(len(labels))
    started = time.perf_counter()
    for lo in range(0, len(labels), LIST_BATCH):
        items = [
            {
                "external_id": f"list-{i:05d}",
                "content": f"Note {i}: {sentence(rng, NOUNS)}",
                "label": labels[i],
            }
            for i in range(lo, min(lo + LIST_BATCH, len(labels)))
        ]
        result = expect(client.put(base + DOCS, json={"items": items}, headers=auth), 200)
        if result["created"] != len(items):
            raise RuntimeError(f"batch at {lo}: {result}")
    return time.perf_counter() - started


def list_docs(args: argparse.Namespace, workdir: Path, servers: list[Server], say: Report) -> None:
    rng = random.Random(args.seed + 4)
    labels = [
        " ".join([rng.choice(ADJECTIVES), rng.choice(NOUNS), str(rng.randint(1, 999))])
        for _ in range(args.list_docs)
    ]
    needle = "invoice"
    matches = sum(needle in label for label in labels)
    mixes: list[tuple[str, str, dict[str, str], bool, int]] = [
        ("default", DOCS, {}, True, args.list_docs),
        ("sort_by=label asc", DOCS, {"sort_by": "label", "sort_dir": "asc"}, True, args.list_docs),
        ("status=staged", DOCS, {"status": "staged"}, True, args.list_docs),
        (f"search={needle}", DOCS, {"search": needle}, True, matches),
        ("peer: /healthz", HEALTHZ, {}, False, -1),
    ]
    variants = [("rapport", None)]
    if args.list_gc_check:
        variants.append(("rapport, gc disabled", GC_OFF_COMMAND))
    targets: list[ListTarget] = []
    created: dict[str, tuple[float, float]] = {}
    rounds = 3
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        for variant, command in variants:
            slug = variant.replace(", ", "-").replace(" ", "-")
            server, base, auth = start(
                workdir / f"{slug}-data", workdir / f"{slug}.log", servers, command
            )
            create_s = fill(client, base, auth, labels)
            t0 = time.perf_counter()
            expect(client.get(base + DOCS, headers=auth), 200)
            created[variant] = (create_s, time.perf_counter() - t0)
            pids = [server.proc.pid, *server.extra_pids]
            for name, path, params, authed, total in mixes:
                headers = auth if authed else {}
                targets.append(ListTarget(variant, name, base + path, params, headers, total, pids))
        for t in targets:
            for _ in range(args.list_warmup):
                page = expect(client.get(t.url, params=t.params, headers=t.headers), 200)
            if t.total >= 0 and page["total_count"] != t.total:
                raise RuntimeError(f"{t.name}: total_count {page['total_count']}, not {t.total}")
        for r in range(rounds):
            share = args.list_requests // rounds + (r < args.list_requests % rounds)
            for t in targets:
                cpu0 = cpu_seconds(t.pids)
                for _ in range(share):
                    t0 = time.perf_counter()
                    response = client.get(t.url, params=t.params, headers=t.headers)
                    t.latencies.append(time.perf_counter() - t0)
                    expect(response, 200)
                t.cpu += cpu_seconds(t.pids) - cpu0
    for server in list(servers):
        stop(server)
        servers.remove(server)

    create_s, cold = created["rapport"]
    say("### List endpoint")
    say()
    say(
        f"{args.list_docs} staged documents made with {args.list_docs // LIST_BATCH} batch "
        f"upserts of {LIST_BATCH} ({create_s:.1f} s, {args.list_docs / create_s:.0f} docs/s). "
        f"The first list call after the last write (row cache reload): {ms(cold)} ms. "
        f"{args.list_requests} measured requests per target, after {args.list_warmup} warm-up, "
        f"in {rounds} interleaved rounds; one keep-alive httpx client; limit 50 (default). "
        f"`search={needle}` matches {matches} labels. "
        + (
            "`rapport, gc disabled` is the same server started with `gc.disable()` (a "
            "diagnostic, not a target), with the same documents, interleaved with the rest."
            if args.list_gc_check
            else ""
        )
    )
    say()
    say("| server | request | p50 ms | p95 ms | p99 ms | server CPU ms/req | p95 / peer p95 |")
    say("|---|---|---:|---:|---:|---:|---:|")
    for t in targets:
        peer = next(x for x in targets if x.server == t.server and x.total < 0)
        say(
            f"| {t.server} | {t.name} | {ms(pct(t.latencies, 50))} | {ms(pct(t.latencies, 95))} "
            f"| {ms(pct(t.latencies, 99))} | {t.cpu / len(t.latencies) * 1000:.2f} "
            f"| {pct(t.latencies, 95) / pct(peer.latencies, 95):.2f} |"
        )
    say()
    mine = [t for t in targets if t.server == "rapport"]
    peer95 = pct(mine[-1].latencies, 95)
    worst = max((pct(t.latencies, 95), t.name) for t in mine if t.total >= 0)
    say(
        f"**Target list p95 <= 20 ms at {args.list_docs} documents: "
        f"{verdict(worst[0] <= 0.020)}** (worst mix: {worst[1]}, p95 {ms(worst[0])} ms; "
        f"peer /healthz p95 {ms(peer95)} ms)."
    )
    say()


# --- server modes (run as `rapport serve` in a child process) -------------------------------


def serve(*, gc_off: bool = False, stages: Path | None = None) -> None:
    """``rapport serve``, optionally with the cyclic GC off, or with the worker's steps timed:
    after each job, the running totals (seconds and calls per step) go to ``stages`` as JSON.
    A timing wrapper costs about a microsecond a call, a few calls a document."""
    import gc
    import json
    import runpy
    import threading
    from collections.abc import Callable

    from kb.worker import Processor

    if gc_off:
        gc.disable()
    if stages is not None:
        totals: dict[str, list[float]] = {}
        lock = threading.Lock()

        def count(step: str, seconds: float) -> None:
            with lock:
                entry = totals.setdefault(step, [0.0, 0])
                entry[0] += seconds
                entry[1] += 1
                if step == "commit":  # a few hundred bytes, once a group of documents
                    stages.write_text(json.dumps(totals))

        def timed(owner: type, name: str, step: str) -> None:
            original: Callable[..., Any] = getattr(owner, name)

            def sync(*a: Any, **k: Any) -> Any:
                started = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    count(step, time.perf_counter() - started)

            setattr(owner, name, sync)

        def timed_async(owner: type, name: str, step: str) -> None:
            original: Callable[..., Any] = getattr(owner, name)

            async def wrapper(*a: Any, **k: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await original(*a, **k)
                finally:
                    count(step, time.perf_counter() - started)

            setattr(owner, name, wrapper)

        timed(Embedder, "embed_counting", "embed")
        timed_async(VectorIndex, "add", "Chroma add")
        timed_async(VectorIndex, "delete", "Chroma delete")
        timed_async(Processor, "prepare", "prepare")
        timed_async(Processor, "commit", "commit")
        timed_async(Processor, "_settle", "settle")
    sys.argv = ["rapport", "serve"]
    runpy.run_module("api.cli", run_name="__main__", alter_sys=True)


def read_stages(path: Path) -> dict[str, tuple[float, int]]:
    """The totals a --serve-stages server wrote: step -> (seconds, calls)."""
    import json

    if not path.exists():
        return {}
    return {step: (float(v[0]), int(v[1])) for step, v in json.loads(path.read_text()).items()}


def stages_after(path: Path, jobs: int, timeout: float = 10.0) -> dict[str, tuple[float, int]]:
    """The totals once ``jobs`` jobs have finished (the last flips to ready just before)."""
    deadline = time.monotonic() + timeout
    found: dict[str, tuple[float, int]] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(ValueError):  # caught mid-write
            found = read_stages(path)
        if found.get("settle", (0.0, 0))[1] >= jobs:
            break
        time.sleep(0.02)
    return found


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--docs", type=int, default=40, help="documents to ingest over HTTP")
    parser.add_argument("--ingest-rounds", type=int, default=5, help="pipeline runs")
    parser.add_argument("--ingest-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument("--real-chunks", type=int, default=1500, help="embedded chunks")
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--index-docs", type=int, default=2000, help="documents in the index")
    parser.add_argument("--active", type=int, default=50, help="active documents")
    parser.add_argument("--noise", type=float, default=0.5, help="norm of the added noise")
    parser.add_argument("--queries", type=int, default=250, help="measured, per size")
    parser.add_argument("--warmup-queries", type=int, default=20)
    parser.add_argument("--list-docs", type=int, default=10_000)
    parser.add_argument("--list-requests", type=int, default=300, help="measured, per mix")
    parser.add_argument("--list-warmup", type=int, default=20)
    parser.add_argument(
        "--no-list-gc-check", dest="list_gc_check", action="store_false",
        help="skip the diagnostic server with the cyclic GC off",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--parts", nargs="+", choices=["ingest", "retrieval", "list"],
        default=["ingest", "retrieval", "list"],
    )  # fmt: skip
    parser.add_argument("--serve-gc-off", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-stages", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_gc_off or args.serve_stages is not None:
        return args
    if (
        min(
            args.docs,
            args.ingest_rounds,
            args.real_chunks,
            args.queries,
            args.list_requests,
            args.active,
        )
        < 1
    ):
        parser.error(
            "--docs, --ingest-rounds, --real-chunks, --queries, --list-requests and --active "
            "must be at least 1"
        )
    if not K <= args.active <= args.index_docs <= min(args.chunks):
        parser.error(f"need {K} <= --active <= --index-docs <= every --chunks")
    if args.list_warmup < 1 or args.warmup_queries < 0 or args.list_docs < 1:
        parser.error("need --list-warmup >= 1, --warmup-queries >= 0, --list-docs >= 1")
    return args


def run(args: argparse.Namespace, workdir: Path, servers: list[Server], say: Report) -> None:
    embedder = Embedder(threads=EMBED_THREADS)
    say("## Knowledge base")
    say()
    say(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine_lines():
        say(line)
    say()
    texts: list[str] = []
    vectors = np.zeros((0, DIMENSIONS), dtype=np.float32)
    if "ingest" in args.parts:
        texts, vectors = ingest(args, workdir, servers, embedder, say)
    if "retrieval" in args.parts:
        asyncio.run(retrieval(args, workdir, embedder, texts, vectors, say))
    if "list" in args.parts:
        list_docs(args, workdir, servers, say)
    say(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_gc_off or args.serve_stages is not None:
        serve(gc_off=args.serve_gc_off, stages=args.serve_stages)
        return 0
    started = time.perf_counter()
    status = run_bench(
        lambda workdir, servers: run(args, workdir, servers, Report()), prefix="rapport-bench-kb-"
    )
    print(f"took {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
