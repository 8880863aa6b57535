"""The embedded responder's CPU per reply, given retrieval's question vector and not.

Retrieval embeds the question (:mod:`kb.retrieval`), and the responder compares the question
and what is asked of the top snippet with each sentence (:class:`engine.responder.
SentenceVectors`). Given retrieval's vector (``TurnContext.embedded``), the responder embeds
only what is asked; the peer is the same responder embedding both, as it did before and
still does for a caller that hands no vector over. The Python FAQ (``bench/evalsets.py``) is
built in process as the worker builds it (``bench/tuning.py``), each question ranked by
:func:`kb.retrieval.fuse`, and each reply timed both ways, interleaved, ``--rounds`` times;
the replies must be the same. Each reply is timed on a responder of its own, whose remembered
vectors are empty: what is asked is a text new to the process, as a new question's is
(a responder that had answered it before remembers it and embeds nothing either way).

    .venv/bin/python -m bench.responder_cost [--rounds 3]

In process, nothing served; bounded by the set and the rounds (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import time

import msgspec

from bench import evalsets, tuning
from bench.http_overhead import machine
from engine.replies import TurnContext
from engine.responder import EmbeddedResponder
from engine.smalltalk import social
from engine.turns import KNOWLEDGE_K
from kb.embedder import shared_embedder

SET = "python_faq"


def contexts() -> list[tuple[TurnContext, TurnContext]]:
    """Per question: its turn context without and with retrieval's question vector."""
    vectors = tuning.Vectors()
    evalset = evalsets.SETS[SET]()
    built = tuning.build(evalset.entries, vectors)
    topics = sorted({e.title for e in built.entries})
    pairs = []
    for entry in evalset.entries:
        question = social(entry.question, tuning.PERSONA, tuning.MEMORY).rest
        asked = vectors.embed([question])[0]
        ranked = tuning.rank(built, question, asked)
        plain = TurnContext(
            persona=tuning.PERSONA, memory=tuning.MEMORY, message=entry.question,
            snippets=[s for found in ranked[:KNOWLEDGE_K] for s in found], topics=topics,
        )  # fmt: skip
        pairs.append((plain, msgspec.structs.replace(plain, embedded={question: asked})))
    return pairs


async def measure(pairs: list[tuple[TurnContext, TurnContext]], rounds: int) -> None:
    embed = shared_embedder().embed
    for plain, _ in pairs[:10]:  # warm: the ONNX session
        await EmbeddedResponder(embed).reply(plain)
    names = ("embeds the question again (peer)", "given it")
    times: dict[str, list[float]] = {name: [] for name in names}
    walls: dict[str, list[float]] = {name: [] for name in names}
    differ = 0
    for _ in range(rounds):
        for plain, given in pairs:
            replies = []
            for name, context in zip(names, (plain, given), strict=True):
                responder = EmbeddedResponder(embed)  # nothing remembered (docstring)
                start, wall = time.process_time(), time.perf_counter()
                replies.append(await responder.reply(context))
                walls[name].append((time.perf_counter() - wall) * 1000)
                times[name].append((time.process_time() - start) * 1000)
            differ += replies[0] != replies[1]
    print("| responder | CPU ms per reply: mean | p50 | p95 | wall ms: p50 | p95 |")
    print("|---|--:|--:|--:|--:|--:|")
    for name in names:
        cpu, wall = sorted(times[name]), sorted(walls[name])
        print(
            f"| {name} | {statistics.fmean(cpu):.2f} | {cpu[len(cpu) // 2]:.2f} | "
            f"{cpu[int(len(cpu) * 0.95)]:.2f} | {wall[len(wall) // 2]:.2f} | "
            f"{wall[int(len(wall) * 0.95)]:.2f} |"
        )
    peer, given = (statistics.fmean(t) for t in times.values())
    print()
    print(f"given / peer: {given / peer:.2f} (mean CPU); replies that differ: {differ}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: 1 or more")
    print(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine():
        print(line)
    pairs = contexts()
    print(f"{SET}: {len(pairs)} questions x {args.rounds} rounds, interleaved")
    print()
    asyncio.run(measure(pairs, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
