"""Follow-up questions ("How heavy is it?" after a reply about the Lumen tent), asked as the
turn pipeline asks them without and with :func:`kb.retrieval.follow_up`.

Each set is built in this process as ``bench/tuning.py`` builds it, with the defaults. A
conversation is two turns: a first question whose reply is grounded, then a second that
points back at it. Its earlier documents are the first reply's sources, as
:meth:`engine.memory.Memory.grounded_on` finds them: the embedded responder's reply's, and
for an LLM the documents it was handed (``engine.replies.on_topic``). Per set:

- follow-ups: the first turn asks about one document, the second points back at it
  (product bench: "How heavy is it?", "And the price?" and seven more after "Tell me about
  the <product>.",
  the fact checked as ``bench/replies.py`` checks it; the evaluation sets: "Can you tell me
  more about that?" and the like after the set's own question). Counted: the reply's first
  source is that document (and says the fact), and an LLM's prompt holds it.
- new questions: the second turn names another document of its own and points back too
  ("How much does the Boulder headlamp cost? I might buy it.", "And how much does the
  Boulder headlamp cost?"; the sets: another of their questions). Counted as above: the
  follow-up rule must not pull them back.
- off-topic follow-ups ("Is it going to rain tomorrow?" after an answered question):
  replies with no source, and LLM prompts left empty.

Then the rule's own cost on a persona of ``--documents`` documents (each with its own
label): :func:`kb.retrieval.follow_up` with every live document's topic, per call, against
:func:`kb.retrieval.topics`, which every turn with knowledge already runs over the same
documents (the peer), both in this process after a first pass.

    .venv/bin/python -m bench.followups [--sets a,b] [--documents 10000]

In process, nothing served; bounded by the sets (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import statistics
import sys
import time
from collections import Counter

import msgspec

from bench import evalsets, faq, replies, tuning
from engine.replies import Reply, TurnContext, on_topic
from engine.responder import EmbeddedResponder
from engine.smalltalk import social
from engine.turns import KNOWLEDGE_K
from kb.documents import new_document
from kb.retrieval import follow_up, topic, topics

GENERIC = (
    "Can you tell me more about that?",
    "Why is that?",
    "Could you give me an example of it?",
    "Is that always the case?",
    "How do I do that?",
    "What does that mean?",
)
OFF_TOPIC = (
    "Is it going to rain tomorrow?",
    "What time is it in Tokyo right now?",
    "Who won that football match last night?",
    "Is it true that cats can see in the dark?",
)
_FACT = dict(replies.ANSWERABLE)
PRODUCT = tuple(
    (asked, _FACT[named])
    for asked, named in (
        # Each follow-up beside the product bench's question that asks the same, whose fact
        # (``bench.replies.ANSWERABLE``) answers it.
        ("How much does it cost?", "How much does the {} cost?"),
        ("How heavy is it?", "How heavy is the {}?"),
        ("What is the warranty on it?", "What is the warranty on the {}?"),
        ("Which colours does it come in?", "Which colours does the {} come in?"),
        ("How do I clean it?", "How do I clean my {}?"),
        ("Can I send it back if I don't like it?", "Can I send back the {} if I don't like it?"),
        ("And the price?", "What's the price of the {}?"),
        ("What about the warranty?", "What is the warranty on the {}?"),
        ("How about the colours?", "Which colours does the {} come in?"),
    )
)
FOLLOW_UPS = 120
NEW = 30
OFF_TOPIC_EACH = 5
SEED = 25


class Case(msgspec.Struct, frozen=True):
    kind: str  # "follow-up", "new question", "off-topic"
    first: str
    then: str
    truth: str | None = None
    fact: str = ""


class Turns:
    """One set's documents, asked a turn at a time with or without the follow-up rule."""

    def __init__(self, built: tuning.Built, vectors: tuning.Vectors) -> None:
        self._built = built
        self._vectors = vectors
        self._named = {e.external_id: topic(e.label, None) for e in built.entries}
        self._topics = sorted({e.title for e in built.entries})
        self._responder = EmbeddedResponder(vectors.embed)

    def ask(self, message: str, earlier: list[str], rule: bool) -> tuple[Reply, list[str]]:
        """The embedded responder's reply and the documents an LLM is handed."""
        built = self._built
        question = social(message, tuning.PERSONA, tuning.MEMORY).rest
        if rule:
            question = follow_up(question, earlier, self._named)
        asked = self._vectors.embed([question])[0]
        ranked = tuning.rank(built, question, asked)
        given = on_topic([s for found in ranked[:KNOWLEDGE_K] for s in found])
        context = TurnContext(
            persona=tuning.PERSONA, memory=tuning.MEMORY, message=message, snippets=given,
            topics=self._topics,
        )  # fmt: skip
        reply = asyncio.run(self._responder.reply(context))
        return reply, list(dict.fromkeys(s.external_id for s in given))


def cases(name: str, evalset: evalsets.EvalSet | None, entries: list[faq.Entry]) -> list[Case]:
    rng = random.Random(SEED)
    found: list[Case] = []
    if evalset is None:  # the product bench
        products, _ = replies.knowledge_base(tuning.PRODUCTS, tuning.PRODUCT_CHUNKS)
        ids = {p.external_id: e.external_id for p, e in zip(products, entries, strict=True)}
        for _ in range(FOLLOW_UPS):
            product = rng.choice(products)
            then, fact = rng.choice(PRODUCT)
            found.append(Case("follow-up", f"Tell me about the {product.title}.", then,
                              ids[product.external_id], fact(product)))  # fmt: skip
        for n in range(NEW):
            product, other = rng.sample(products, 2)
            template, fact = rng.choice(replies.ANSWERABLE)
            asked = template.format(other.title)
            # Pointing back and going on, as follow-ups do, but naming its own product.
            then = f"{asked} I might buy it." if n % 2 else f"And {asked[0].lower()}{asked[1:]}"
            found.append(Case("new question", f"Tell me about the {product.title}.", then,
                              ids[other.external_id], fact(other)))  # fmt: skip
        firsts = [f"Tell me about the {p.title}." for p in products]
    else:
        for entry in entries:
            found.append(Case("follow-up", entry.question, rng.choice(GENERIC), entry.external_id))
        for entry in rng.sample(entries, min(NEW, len(entries))):
            other = rng.choice([e for e in entries if e is not entry])
            found.append(Case("new question", entry.question, other.question, other.external_id))
        firsts = [e.question for e in entries]
    for then in OFF_TOPIC:
        for first in rng.sample(firsts, OFF_TOPIC_EACH):
            found.append(Case("off-topic", first, then))
    return found


def measure(turns: Turns, asked: list[Case], rule: bool) -> Counter[str]:
    tally: Counter[str] = Counter()
    for case in asked:
        first, handed = turns.ask(case.first, [], rule)
        reply, _ = turns.ask(case.then, first.sources, rule)
        _, given = turns.ask(case.then, handed, rule)
        tally[f"{case.kind}: asked"] += 1
        if case.truth is None:
            tally[f"{case.kind}: no source"] += not reply.sources
            tally[f"{case.kind}: LLM given nothing"] += not given
        else:
            right = reply.sources[:1] == [case.truth] and case.fact in reply.text
            tally[f"{case.kind}: first source"] += right
            tally[f"{case.kind}: LLM given it"] += case.truth in given
    return tally


def share(before: Counter[str], after: Counter[str], kind: str, what: str) -> str:
    n = before[f"{kind}: asked"]
    return f"{before[f'{kind}: {what}'] / n:.3f} → **{after[f'{kind}: {what}'] / n:.3f}**"


def cost(documents: int, calls: int = 20) -> None:
    """ms per call of the rule and of its peer, median of ``calls``."""
    docs = [
        msgspec.structs.replace(new_document(f"p{n}"), label=f"Trail product {n} #{n}")
        for n in range(documents)
    ]
    earlier = [docs[documents // 2].external_id]

    def rule() -> str:
        named = {d.external_id: topic(d.label, d.original_file_name) for d in docs}
        return follow_up("How heavy is it?", earlier, named)

    timings: dict[str, list[float]] = {"follow_up": [], "topics (peer)": []}
    for _ in range(calls + 1):  # the first pass fills what is remembered
        for name, call in (("follow_up", rule), ("topics (peer)", lambda: topics(docs))):
            start = time.perf_counter()
            call()
            timings[name].append((time.perf_counter() - start) * 1000)
    median = {name: statistics.median(t[1:]) for name, t in timings.items()}
    print(f"\n{documents} documents: follow_up {median['follow_up']:.2f} ms per call, "
          f"topics (peer) {median['topics (peer)']:.2f} ms; ratio "
          f"{median['follow_up'] / median['topics (peer)']:.2f}")  # fmt: skip


def run(names: list[str], documents: int) -> None:
    wall = time.monotonic()
    vectors = tuning.Vectors()
    print("| set | follow-ups: first source (before → with the rule) | LLM prompt holds it | "
          "new questions: first source | LLM | off-topic follow-ups: no source | "
          "LLM given nothing |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name in names:
        if name == "products":
            products, texts = replies.knowledge_base(tuning.PRODUCTS, tuning.PRODUCT_CHUNKS)
            entries = [
                faq.Entry(p.external_id, p.title, number, p.title, text)
                for number, (p, text) in enumerate(zip(products, texts, strict=True), start=1)
            ]
            evalset = None
        else:
            evalset = evalsets.SETS[name]()
            entries = evalset.entries
        turns = Turns(tuning.build(entries, vectors), vectors)
        asked = cases(name, evalset, entries)
        before, after = measure(turns, asked, False), measure(turns, asked, True)

        cells = [
            share(before, after, kind, what)
            for kind, what in (
                ("follow-up", "first source"), ("follow-up", "LLM given it"),
                ("new question", "first source"), ("new question", "LLM given it"),
                ("off-topic", "no source"), ("off-topic", "LLM given nothing"),
            )
        ]  # fmt: skip
        print(f"| {name} | {' | '.join(cells)} |", flush=True)
        print(f"measured {name} ({time.monotonic() - wall:.0f} s)", file=sys.stderr)
    cost(documents)
    print(f"\n{shlex.join(['.venv/bin/python', '-m', 'bench.followups', *sys.argv[1:]])}: "
          f"{time.monotonic() - wall:.0f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(["products", *evalsets.SETS]))
    parser.add_argument("--documents", type=int, default=10_000)
    args = parser.parse_args()
    names = [n for n in args.sets.split(",") if n]
    if args.documents < 1:
        parser.error("--documents: 1 or more")
    unknown = [n for n in names if n != "products" and n not in evalsets.SETS]
    if unknown:
        parser.error(f"unknown sets: {unknown}")
    run(names, args.documents)


if __name__ == "__main__":
    main()
