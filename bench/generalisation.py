"""Every evaluation set (``bench/evalsets.py``: the Python FAQ, SQLite's FAQ, the Git User
Manual's how-do-I sections, a catalogue of Debian's games packages) measured the same way in
one run, so that what was tuned on one set can be judged on the others (issue 25).

Per set, a fresh ``rapport serve`` (as ``bench/grounding.py``: temp data dir, no LLM, rate
limits out of the way) gets the set's documents and is asked its questions and off-topic
questions once through ``POST /api/v1/conversation`` (a fresh ``user_id`` each); Rapport's
ranking is each reply's ordered ``sources``. Peers over the same whole documents, in this
process: dense MiniLM (the project's embedder, cosine), BM25 (``bench.grounding.BM25``) and
their fusion, dense cosine + 0.2 x BM25 z-scored over the set's documents per question.

The "tuned on" column says which sets the current defaults were chosen on
(``evalsets.TUNED_ON``); a figure on any other set is out of sample. Nothing is tuned here:
when later work chooses weights on some sets, it fills in in-sample against out-of-sample.

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
from bench.harness import refill, run_bench, spawn_ready_rapport
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


def peers(documents: list[str], questions: list[str]) -> dict[str, list[list[int]]]:
    """Whole-document rankings (indices) of the three peers for every question."""
    from kb.embedder import shared_embedder

    embedder = shared_embedder()
    dense = np.asarray(embedder.embed(questions) @ embedder.embed(documents).T, dtype=np.float64)
    bm25 = BM25(documents)
    out: dict[str, list[list[int]]] = {"dense": [], "bm25": [], "fusion": []}
    for row, question in zip(dense, questions, strict=True):
        lexical = _bm25_scores(bm25, question)
        spread = float(lexical.std())
        z = (lexical - lexical.mean()) / spread if spread > 0 else np.zeros_like(lexical)
        fused = row + FUSION_BM25_WEIGHT * z
        for name, scores in (("dense", row), ("bm25", lexical), ("fusion", fused)):
            out[name].append([int(i) for i in np.argsort(-scores, kind="stable")])
    return out


def top(ranked: list[list[int]], truth: list[int], k: int) -> float:
    return sum(t in r[:k] for r, t in zip(ranked, truth, strict=True)) / len(truth)


def measure(
    evalset: evalsets.EvalSet, workdir: Path, servers: list[Server]
) -> dict[str, float | int | str]:
    entries = evalset.entries
    questions = [e.question for e in entries]
    ids = [e.external_id for e in entries]
    n = len(entries)
    ranked = peers([e.answer for e in entries], questions)
    truth = list(range(n))

    data_dir = workdir / evalset.name / "data"
    data_dir.parent.mkdir(parents=True)
    server, base, key = spawn_ready_rapport(
        data_dir,
        workdir / evalset.name / "rapport.log",
        servers,
        {f"RAPPORT_{name}_RPM": str(HIGH_RPM) for name in LIMITS},
    )
    asked = questions + list(evalset.off_topic)
    refill(data_dir, len(asked) + 100)
    with httpx.Client(
        base_url=base, trust_env=False, timeout=REQUEST_TIMEOUT_S, headers={"X-Api-Key": key}
    ) as client:
        ingest_s = ingest(client, server, entries)
        replies = [ask(client, f"gen-{i:04d}", q) for i, q in enumerate(asked)]
    servers.remove(server)
    stop(server)
    sources = [s for s, _, _ in replies[:n]]
    off = [s for s, _, _ in replies[n:]]
    return {
        "set": evalset.name,
        "shape": evalset.shape,
        "documents": n,
        "off_topic_n": len(off),
        "tuned_on": "yes (in sample)"
        if evalset.name in evalsets.TUNED_ON
        else "no (out of sample)",
        "first": sum(bool(s) and s[0] == t for s, t in zip(sources, ids, strict=True)) / n,
        "cited": sum(t in s and len(s) <= MAX_CITED for s, t in zip(sources, ids, strict=True)) / n,
        "no_source": sum(not s for s in sources) / n,
        "dense1": top(ranked["dense"], truth, 1),
        "dense3": top(ranked["dense"], truth, 3),
        "bm251": top(ranked["bm25"], truth, 1),
        "bm253": top(ranked["bm25"], truth, 3),
        "fusion1": top(ranked["fusion"], truth, 1),
        "fusion3": top(ranked["fusion"], truth, 3),
        "off_clean": sum(not s for s in off) / len(off),
        "ingest_s": ingest_s,
        "p50_ms": statistics.median(e for _, e, _ in replies) * 1000,
    }


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
    rows = []
    for evalset in loaded:
        rows.append(measure(evalset, workdir, servers))
        print(f"measured {evalset.name} ({time.monotonic() - wall:.0f} s)", file=sys.stderr)

    say = print
    say("## Generalisation over the evaluation sets")
    say()
    say(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine():
        say(line)
    say(package_versions("onnxruntime", "chromadb", "tokenizers"))
    say()
    say("| set | shape | docs = questions | off-topic | defaults chosen on it |")
    say("|---|---|--:|--:|---|")
    for row in rows:
        say(
            f"| {row['set']} | {row['shape']} | {row['documents']} | {row['off_topic_n']} | "
            f"{row['tuned_on']} |"
        )
    say()
    say(
        "| set | defaults chosen on it | Rapport first | Rapport cited among <= 3 | "
        "dense top-1 | dense top-3 | BM25 top-1 | BM25 top-3 | dense + 0.2 z-BM25 top-1 | "
        "top-3 | off-topic, no source | questions with no source |"
    )
    say("|---|---|" + "--:|" * 10)
    for row in rows:
        say(
            f"| {row['set']} | {row['tuned_on']} | **{row['first']:.3f}** | **{row['cited']:.3f}** "
            f"| {row['dense1']:.3f} | {row['dense3']:.3f} | {row['bm251']:.3f} | "
            f"{row['bm253']:.3f} | {row['fusion1']:.3f} | {row['fusion3']:.3f} | "
            f"{row['off_clean']:.3f} | {row['no_source']:.3f} |"
        )
    out_rows = [r for r in rows if r["set"] not in evalsets.TUNED_ON]
    if out_rows:
        mean = {
            k: statistics.fmean(float(r[k]) for r in out_rows)
            for k in ("first", "cited", "dense1", "dense3", "fusion1", "fusion3", "off_clean")
        }
        say(
            f"| mean of the {len(out_rows)} out-of-sample sets | no | **{mean['first']:.3f}** | "
            f"**{mean['cited']:.3f}** | {mean['dense1']:.3f} | {mean['dense3']:.3f} | | | "
            f"{mean['fusion1']:.3f} | {mean['fusion3']:.3f} | {mean['off_clean']:.3f} | |"
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
