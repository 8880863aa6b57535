"""Every evaluation set (``bench/evalsets.py``) measured through the server, with its peers,
in one run (issue 25): what the defaults do on each set, against what a plain dense, BM25 or
fused ranking does on the same documents.

Per set, a fresh ``rapport serve`` (as ``bench/grounding.py``: temp data dir, no LLM, rate
limits out of the way) gets the set's documents and is asked its questions and off-topic
questions once through ``POST /api/v1/conversation`` (a fresh ``user_id`` each); Rapport's
ranking is each reply's ordered ``sources``. Then the same server is started again on the
same data with an LLM (the fake OpenAI-compatible server, ``loadtest.fake_llm``) and asked
the questions again: a reply's ``sources`` are then the documents put into the model's
prompt, best first (none when no document is about the question:
:func:`engine.replies.on_topic`), and recall@5 is the answering document among them.

Peers over the same whole documents, in this process: dense MiniLM (the project's
embedder, cosine), BM25 (``bench.grounding.BM25``) and two readings of "dense + 0.2 x
z-scored BM25": the cosine plus 0.2 x BM25 z-scored over the set's documents per question
(``fusion``), and the same with the cosines z-scored too (``z-fusion``). The best peer on
each set is the best of the four at each k.

The defaults were chosen on every set (``bench/tuning.py``), so these are in-sample figures;
``bench/tuning.py`` reports each set out of sample, with the weights chosen on the others.

    .venv/bin/python -m bench.generalisation [--sets a,b] [--limit N]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench import evalsets
from bench.grounding import (
    BM25,
    HIGH_RPM,
    LIMITS,
    MAX_CITED,
    REQUEST_TIMEOUT_S,
    ask,
    ingest,
    words,
)
from bench.harness import refill, run_bench, spawn_ready_rapport, start_fake_openai
from bench.http_overhead import Server, machine, package_versions, stop

FUSION_BM25_WEIGHT = 0.2


def _bm25_scores(bm25: BM25, query: str) -> np.ndarray:
    terms = [t for t in set(words(query)) if t in bm25.idf]
    out = []
    for tf, length in zip(bm25.tfs, bm25.lengths, strict=True):
        norm = bm25.k1 * (1 - bm25.b + bm25.b * length / bm25.avgdl)
        out.append(
            sum(bm25.idf[t] * tf[t] * (bm25.k1 + 1) / (tf[t] + norm) for t in terms if t in tf)
        )
    return np.asarray(out, dtype=np.float64)


def _z(scores: np.ndarray) -> np.ndarray:
    spread = float(scores.std())
    return (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)


PEERS = ("dense", "bm25", "fusion", "z-fusion")


def peers(documents: list[str], questions: list[str]) -> dict[str, list[list[int]]]:
    """Whole-document rankings (indices) of the peers for every question."""
    from kb.embedder import shared_embedder

    embedder = shared_embedder()
    dense = np.asarray(embedder.embed(questions) @ embedder.embed(documents).T, dtype=np.float64)
    bm25 = BM25(documents)
    out: dict[str, list[list[int]]] = {name: [] for name in PEERS}
    for row, question in zip(dense, questions, strict=True):
        lexical = _bm25_scores(bm25, question)
        scored = {
            "dense": row,
            "bm25": lexical,
            "fusion": row + FUSION_BM25_WEIGHT * _z(lexical),
            "z-fusion": _z(row) + FUSION_BM25_WEIGHT * _z(lexical),
        }
        for name, scores in scored.items():
            out[name].append([int(i) for i in np.argsort(-scores, kind="stable")])
    return out


def top(ranked: list[list[int]], truth: list[int], k: int) -> float:
    return sum(t in r[:k] for r, t in zip(ranked, truth, strict=True)) / len(truth)


def measure(
    evalset: evalsets.EvalSet, workdir: Path, servers: list[Server], llm_url: str
) -> dict[str, float | int | str]:
    entries = evalset.entries
    questions = [e.question for e in entries]
    ids = [e.external_id for e in entries]
    n = len(entries)
    ranked = peers([e.answer for e in entries], questions)
    truth = list(range(n))

    data_dir = workdir / evalset.name / "data"
    data_dir.parent.mkdir(parents=True)
    limits = {f"RAPPORT_{name}_RPM": str(HIGH_RPM) for name in LIMITS}
    asked = questions + list(evalset.off_topic)
    replies: dict[str, list[tuple[list[str], float, str]]] = {}
    llm = {
        "RAPPORT_LLM_BASE_URL": f"{llm_url}/v1",
        "RAPPORT_LLM_MODEL": "fake-model",
        "RAPPORT_LLM_API_KEY": "sk-bench",
    }
    for path, env in (("embedded", limits), ("llm", {**limits, **llm})):
        server, base, key = spawn_ready_rapport(
            data_dir, workdir / evalset.name / f"rapport-{path}.log", servers, env
        )
        refill(data_dir, len(asked) + 100)
        with httpx.Client(
            base_url=base, trust_env=False, timeout=REQUEST_TIMEOUT_S, headers={"X-Api-Key": key}
        ) as client:
            if path == "embedded":
                ingest_s = ingest(client, server, entries)
            replies[path] = [ask(client, f"{path}-{i:04d}", q) for i, q in enumerate(asked)]
        servers.remove(server)
        stop(server)
    sources = [s for s, _, _ in replies["embedded"][:n]]
    off = [s for s, _, _ in replies["embedded"][n:]]
    prompts = [s for s, _, _ in replies["llm"][:n]]
    llm_off = [s for s, _, _ in replies["llm"][n:]]
    row: dict[str, float | int | str] = {
        "set": evalset.name,
        "shape": evalset.shape,
        "documents": n,
        "off_topic_n": len(off),
        "first": sum(bool(s) and s[0] == t for s, t in zip(sources, ids, strict=True)) / n,
        "cited": sum(t in s and len(s) <= MAX_CITED for s, t in zip(sources, ids, strict=True)) / n,
        "no_source": sum(not s for s in sources) / n,
        "llm5": sum(t in s[:5] for s, t in zip(prompts, ids, strict=True)) / n,
        "off_clean": sum(not s for s in off) / len(off),
        "llm_off_clean": sum(not s for s in llm_off) / len(llm_off),
        "ingest_s": ingest_s,
        "p50_ms": statistics.median(e for _, e, _ in replies["embedded"]) * 1000,
    }
    for name in PEERS:
        for k in (1, 3):
            row[f"{name}{k}"] = top(ranked[name], truth, k)
    for k in (1, 3):
        row[f"best{k}"] = max(float(row[f"{name}{k}"]) for name in PEERS)
    return row


def run(args: argparse.Namespace, workdir: Path, servers: list[Server]) -> None:
    wall = time.monotonic()
    names = args.sets.split(",") if args.sets else list(evalsets.SETS)
    loaded = []
    for name in names:
        evalset = evalsets.SETS[name]()
        if args.limit:
            evalset = evalsets.EvalSet(
                evalset.name,
                evalset.shape,
                evalset.source,
                evalset.licence,
                evalset.entries[: args.limit],
                evalset.off_topic,
            )
        loaded.append(evalset)
    _, llm_url = start_fake_openai(workdir, servers)
    rows = []
    for evalset in loaded:
        rows.append(measure(evalset, workdir, servers, llm_url))
        print(f"measured {evalset.name} ({time.monotonic() - wall:.0f} s)", file=sys.stderr)

    say = print
    say("## Generalisation over the evaluation sets (bench/generalisation.py)")
    say()
    say(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine():
        say(line)
    say(package_versions("onnxruntime", "chromadb", "tokenizers"))
    say()
    say(
        "| set | shape | docs | Rapport first | cited among <= 3 | dense top-1 / top-3 | "
        "BM25 | fusion | z-fusion | best peer top-1 / top-3 | LLM prompt recall@5 | "
        "off-topic, no source | LLM: off-topic, no source | questions with no source |"
    )
    say("|---|---|--:|" + "--:|" * 11)
    for row in rows:
        peer_cells = " | ".join(
            f"{float(row[f'{name}1']):.3f} / {float(row[f'{name}3']):.3f}" for name in PEERS
        )
        say(
            f"| {row['set']} | {row['shape']} | {row['documents']} | **{row['first']:.3f}** | "
            f"**{row['cited']:.3f}** | {peer_cells} | {row['best1']:.3f} / {row['best3']:.3f} | "
            f"{row['llm5']:.3f} | {row['off_clean']:.3f} | {row['llm_off_clean']:.3f} | "
            f"{row['no_source']:.3f} |"
        )
    keys = ("first", "cited", "dense1", "dense3", "best1", "best3", "llm5")
    keys += ("off_clean", "llm_off_clean")
    mean = {k: statistics.fmean(float(r[k]) for r in rows) for k in keys}
    say(
        f"| mean of {len(rows)} | | | **{mean['first']:.3f}** | **{mean['cited']:.3f}** | "
        f"{mean['dense1']:.3f} / {mean['dense3']:.3f} | | | | "
        f"{mean['best1']:.3f} / {mean['best3']:.3f} | {mean['llm5']:.3f} | "
        f"{mean['off_clean']:.3f} | {mean['llm_off_clean']:.3f} | |"
    )
    say()
    for evalset, row in zip(loaded, rows, strict=True):
        say(
            f"- {evalset.name}: {evalset.source}; licence: {evalset.licence}; ingest "
            f"{row['ingest_s']:.1f} s, reply p50 {row['p50_ms']:.0f} ms"
        )
    say()
    say(f"total time: {time.monotonic() - wall:.0f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sets", help="comma-separated set names (default: all)")
    parser.add_argument("--limit", type=int, default=0, help="first N questions of each set")
    args = parser.parse_args(argv)
    unknown = set(args.sets.split(",")) - set(evalsets.SETS) if args.sets else set()
    if unknown:
        parser.error(f"unknown sets {sorted(unknown)}; known: {sorted(evalsets.SETS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda workdir, servers: run(args, workdir, servers))


if __name__ == "__main__":
    sys.exit(main())
