"""Which vector should stand for a whole document? In process, on every evaluation set
(issue 25, item 2: "whole-document vectors where a document fits the model's window").

Each set's documents are chunked, given contexts and embedded exactly as the worker does
(:mod:`kb.chunking`, :mod:`kb.embedder`), every chunk is scored against each question (no
Chroma: every chunk, not its top candidates), and :func:`kb.retrieval.fuse` ranks the
documents with each variant of the document's own vector and its weight:

- ``mean``: what the worker stores today, the normalised mean of the chunks' vectors;
- ``whole``: the document's bare text embedded in one pass (truncated at the model's
  window, as the dense peer of bench/grounding.py is);
- ``whole if one chunk``: ``whole`` for a document that is a single chunk (it fits the
  window with room to spare), ``mean`` otherwise;
- ``blend``: the normalised sum of ``mean`` and ``whole``.

Prints recall@1 and recall@3 of the fused ranking per set and variant, the sets the current
defaults were chosen on marked, and the mean over the others. Loopback only: nothing is
served; the model runs in this process. Bounded by the sets' sizes.

    .venv/bin/python -m bench.document_vectors
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable

import msgspec
import numpy as np

from bench.evalsets import SETS, TUNED_ON, EvalSet
from kb.chunking import chunk_contexts, chunk_text, passage
from kb.embedder import shared_embedder
from kb.index import Hit
from kb.lexical import LexicalIndex
from kb.retrieval import DOCUMENT_WEIGHT, LEXICAL_WEIGHT, fuse

Vectors = dict[str, np.ndarray]


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


KINDS: dict[str, Callable[[np.ndarray, np.ndarray, bool], np.ndarray]] = {
    "mean": lambda mean, whole, one_chunk: mean,
    "whole": lambda mean, whole, one_chunk: whole,
    "whole if one chunk": lambda mean, whole, one_chunk: whole if one_chunk else mean,
    "blend": lambda mean, whole, one_chunk: unit(mean + whole),
}
VARIANTS: list[tuple[str, float]] = [
    ("mean", DOCUMENT_WEIGHT),
    ("whole if one chunk", DOCUMENT_WEIGHT),
    ("whole if one chunk", 1.0),
    ("whole", DOCUMENT_WEIGHT),
    ("whole", 1.0),
    ("blend", 1.0),
]
"""(document vector, document weight); the lexical weight stays the default's."""


def measure(evaluation: EvalSet) -> dict[tuple[str, float], tuple[float, float]]:
    """Recall@1 and recall@3 of each variant on one set."""
    embedder = shared_embedder()
    entries = evaluation.entries
    lexical = LexicalIndex()
    hits: list[Hit] = []
    chunk_vectors: list[np.ndarray] = []
    documents: dict[str, Vectors] = {kind: {} for kind in KINDS}
    wholes = embedder.embed([e.answer for e in entries])
    for entry, whole in zip(entries, wholes, strict=True):
        chunks = chunk_text(entry.answer)
        contexts = chunk_contexts(entry.answer, chunks, entry.label)
        vectors = embedder.embed(
            [passage(context, c.text, [])[0] for context, c in zip(contexts, chunks, strict=True)]
        )
        mean = unit(vectors.mean(axis=0))
        for kind, choose in KINDS.items():
            documents[kind][entry.external_id] = choose(mean, whole, len(chunks) == 1)
        for chunk, context, vector in zip(chunks, contexts, vectors, strict=True):
            chunk_id = f"{entry.external_id}@1#{chunk.index}"
            lexical.add("bench", chunk_id, f"{context}\n{chunk.text}")
            chunk_vectors.append(vector)
            hits.append(
                Hit(
                    chunk_id=chunk_id,
                    external_id=entry.external_id,
                    text=chunk.text,
                    score=0.0,
                    context=context,
                )
            )
    ids = [h.chunk_id for h in hits]
    labels = {e.external_id: e.label for e in entries}
    found = {variant: [0, 0] for variant in VARIANTS}
    for entry, asked in zip(entries, embedder.embed([e.question for e in entries]), strict=True):
        lexical_scores = lexical.search("bench", ids, entry.question)
        for kind, weight in VARIANTS:
            scored = [
                msgspec.structs.replace(
                    h, score=float(v @ asked), document=documents[kind][h.external_id]
                )
                for h, v in zip(hits, chunk_vectors, strict=True)
            ]
            ranked = fuse(
                scored, lexical_scores, asked, labels,
                document_weight=weight, lexical_weight=LEXICAL_WEIGHT,
            )  # fmt: skip
            first = [f[0].external_id for f in ranked[:3]]
            found[(kind, weight)][0] += first[0] == entry.external_id
            found[(kind, weight)][1] += entry.external_id in first
    n = len(entries)
    return {variant: (one / n, three / n) for variant, (one, three) in found.items()}


def main() -> int:
    print("command: " + shlex.join([".venv/bin/python", "-m", "bench.document_vectors"]))
    results = {name: measure(load()) for name, load in SETS.items()}
    names = list(results)
    print()
    print("| document vector, weight | " + " | ".join(
        f"{n}{' (in sample)' if n in TUNED_ON else ''} R@1 / R@3" for n in names
    ) + " | mean out of sample R@1 / R@3 |")  # fmt: skip
    print("|---|" + "---:|" * (len(names) + 1))
    outside = [n for n in names if n not in TUNED_ON]
    for variant in VARIANTS:
        cells = [f"{results[n][variant][0]:.3f} / {results[n][variant][1]:.3f}" for n in names]
        mean_one = sum(results[n][variant][0] for n in outside) / len(outside)
        mean_three = sum(results[n][variant][1] for n in outside) / len(outside)
        print(
            f"| {variant[0]}, {variant[1]:g} | " + " | ".join(cells)
            + f" | {mean_one:.3f} / {mean_three:.3f} |"
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
