"""Retrieval as the turn pipeline runs it: a real redis-server, the embedded Chroma and the
real embedder, documents processed by the real worker. Dense search, BM25 and document vectors
are fused into one snippet per document; other accounts' and inactive documents never show."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
import pytest
import redis.asyncio as aioredis

from engine.accounts import AccountStore
from engine.config import Settings
from engine.replies import Snippet
from engine.sentences import sentences
from kb.chunking import chunk_contexts, chunk_text
from kb.documents import Document, DocumentStore, new_document
from kb.embedder import shared_embedder
from kb.index import Hit, VectorIndex
from kb.ingest import Incoming, Ingest
from kb.queue import ProcessingQueue
from kb.retrieval import (
    CHUNKS_PER_DOCUMENT,
    DENSE_CANDIDATES,
    KnowledgeRetriever,
    fuse,
    topics,
)
from kb.worker import Processor


class KB:
    """What one process holds: the stores, the worker and the retriever."""

    def __init__(self, redis: aioredis.Redis, data: Path) -> None:
        self.accounts = AccountStore(redis)
        self.docs = DocumentStore(redis)
        self.queue = ProcessingQueue(redis)
        self.ingest = Ingest(self.docs, self.accounts, self.queue)
        self.index = VectorIndex(Settings(data_dir=str(data)))
        self.embedder = shared_embedder()
        self.processor = Processor(
            docs=self.docs, queue=self.queue, index=self.index, embedder=self.embedder, max_pages=10
        )
        self.retriever = KnowledgeRetriever(
            docs=self.docs, index=self.index, embedder=self.embedder
        )

    async def load(
        self,
        account_id: str,
        texts: dict[str, str],
        labels: dict[str, str] | None = None,
        content_type: str = "txt",
    ) -> list[Document]:
        """Upload and process ``texts``; the documents as stored, ready."""
        items = [
            Incoming(
                external_id=eid,
                data=body.encode(),
                content_type=content_type,  # type: ignore[arg-type]
                label=(labels or {}).get(eid),
            )
            for eid, body in texts.items()
        ]
        await self.ingest.upsert(account_id, items, enqueue=True)
        while (job := await self.queue.claim()) is not None:
            prepared = await self.processor.prepare(job)
            if prepared is not None:
                await self.processor.commit([prepared])
        found = await self.docs.get_many(account_id, list(texts))
        assert all(d is not None and d.processing_status == "ready" for d in found), found
        return [d for d in found if d is not None]

    def embed(self, query: str) -> np.ndarray:
        return self.embedder.embed([query])[0]

    async def dense(self, account_id: str, docs: Sequence[Document], query: str) -> list[Hit]:
        """Every chunk of ``docs``, nearest the query first: dense search alone."""
        ids = [i for d in docs for i in d.live_chunk_ids()]
        return await self.index.query(account_id, self.embed(query), len(ids), ids)


def repeated(sentences_: list[str], words: int) -> str:
    """The sentences, over and over, until the text holds ``words`` words."""
    out: list[str] = []
    while sum(len(s.split()) for s in out) < words:
        out.append(sentences_[len(out) % len(sentences_)])
    return " ".join(out)


ESPRESSO = [
    "The Aurora espresso machine is our flagship model.",
    "It brews a double shot in twenty seconds.",
    "The steam wand froths milk for lattes and cappuccinos.",
    "Its steel boiler heats up in three minutes.",
    "The water tank holds two litres and lifts out for filling.",
    "A pressure gauge on the front shows nine bars while it brews.",
    "The drip tray slides out for cleaning.",
    "It comes with two portafilters and a tamper.",
]
GRINDER = [
    "The Ember grinder is a burr grinder with forty settings.",
    "It grinds fine for espresso or coarse for a French press.",
    "The hopper holds half a kilo of beans.",
    "A timer doses the same amount of coffee every time.",
    "The burrs are made of hardened steel and last for years.",
    "It is quiet enough to use early in the morning.",
    "Cleaning brushes come in the box.",
    "The motor stops on its own when the hopper is empty.",
]
PICNIC = [
    "Every June the staff picnic takes place in Riverside Park.",
    "Families are welcome and lunch is served at one o'clock.",
    "There are games for the children, a raffle and a tug of war between departments.",
    "Parking is free on the east side of the park.",
    "Bring sun cream and a hat, as there is little shade.",
    "Vegetarian dishes are marked with a green flag.",
    "The raffle prizes are donated by local shops.",
    "Buses leave the office at noon and return at five.",
]
SHOP = {
    # Two long product documents that sound like the answer to a question about a model...
    "espresso": repeated(ESPRESSO, 300),
    "grinder": repeated(GRINDER, 300),
    # ...and a long one about something else, which holds the part number once, mid-text.
    "picnic": repeated(PICNIC, 110)
    + "\n\nPlease bring your XK-42 badge to get through the park gate. "
    + repeated(PICNIC[3:] + PICNIC[:3], 110),
}


async def test_a_rare_word_finds_a_document_dense_search_ranks_last(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    kb = KB(redis, tmp_path)
    account = await kb.accounts.create("shop")
    docs = await kb.load(account.id, SHOP)
    assert [d.live_chunks for d in docs] == [4, 4, 3]
    query = "Is the XK-42 any good?"

    # Dense search alone: the picnic's chunks are not among the chunks asked of Chroma for
    # one snippet, and by meaning (chunk and document vectors) the picnic comes last.
    dense = await kb.dense(account.id, docs, query)
    assert "picnic" not in {h.external_id for h in dense[:DENSE_CANDIDATES]}
    by_meaning = fuse(dense, {}, kb.embed(query), {}, lexical_weight=0)
    assert [found[0].external_id for found in by_meaning] == ["grinder", "espresso", "picnic"]

    # Its rare word brings it in, first, as its best chunk by meaning: the one with the word.
    for k in (1, 2):
        found = await kb.retriever.retrieve(account.id, list(SHOP), query, k)
        assert found.snippets[0].external_id == "picnic"
        assert len({s.external_id for s in found.snippets}) == k
    snippet = (await kb.retriever.retrieve(account.id, list(SHOP), query, 1)).snippets[0]
    assert "XK-42" in snippet.text
    picnic = [h for h in dense if h.external_id == "picnic"]
    assert snippet.score == pytest.approx(max(h.score for h in picnic), abs=1e-5)
    assert snippet.score < dense[0].score  # the score stays the chunk's cosine


async def test_a_document_comes_as_its_best_chunks_together_best_first(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    kb = KB(redis, tmp_path)
    account = await kb.accounts.create("shop")
    docs = await kb.load(account.id, SHOP)
    query = "How long does the espresso machine take to heat up and brew?"
    dense = await kb.dense(account.id, docs, query)
    # Several chunks of each product document match; the espresso's fill the top of the list.
    assert [h.external_id for h in dense[:4]] == ["espresso"] * 4
    for k in (1, 2, 3, 10):
        found = await kb.retriever.retrieve(account.id, list(SHOP), query, k)
        ids = [s.external_id for s in found.snippets]
        documents = list(dict.fromkeys(ids))
        assert len(documents) == min(k, 3) and documents[0] == "espresso"
        for document in documents:
            chunks = [s for s in found.snippets if s.external_id == document]
            # Together, best first, at most CHUNKS_PER_DOCUMENT, each once.
            start = ids.index(document)
            assert ids[start : start + len(chunks)] == [document] * len(chunks)
            assert 1 <= len(chunks) <= CHUNKS_PER_DOCUMENT
            assert len({c.text for c in chunks}) == len(chunks)
            assert [c.score for c in chunks] == sorted((c.score for c in chunks), reverse=True)
            best = max((h for h in dense if h.external_id == document), key=lambda h: h.score)
            assert chunks[0].text == best.text
            assert chunks[0].score == pytest.approx(best.score, abs=1e-5)
        assert ids.count("espresso") == CHUNKS_PER_DOCUMENT


HOURS = (
    "Our shop opens at nine in the morning from Monday to Saturday. "
    "On Sundays we open at eleven and close at four. "
    "During the summer holidays the shop stays open until eight in the evening. "
    "On public holidays the shop is closed all day. "
    "The cafe inside the shop opens half an hour earlier than the shop itself. "
    "Late opening on Thursdays lasts until nine at night. "
    "The car park opens at the same time as the shop. "
    "Staff arrive an hour before opening to stock the shelves."
)
RETURNS = (
    "Items can be returned within thirty days of purchase with the receipt. "
    "Refunds go back to the card you paid with within five working days. "
    "Sale items can be exchanged but not refunded. "
    "Returned items must be unused and in their original packaging. "
    "Online orders can be sent back by post free of charge. "
    "Gift receipts allow an exchange or store credit. "
    "Damaged goods are refunded in full whenever they are returned. "
    "Ask at the service desk for a returns form."
)
GUIDE = {
    # Each chunk of the guide holds one half of a two-part answer.
    "guide": f"This guide answers the questions we hear most. {HOURS}\n\n{RETURNS}",
    "hours": "Our shop opens at nine in the morning from Monday to Saturday. "
    "On Sundays we open at eleven.",
    "returns": "Items can be returned within thirty days of purchase with the receipt.",
    "delivery": "We deliver to your door within three days. "
    "Delivery is free for orders over fifty euros.",
}


async def test_every_chunk_carries_its_documents_vector(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    kb = KB(redis, tmp_path)
    account = await kb.accounts.create("shop")
    docs = await kb.load(account.id, GUIDE)
    guide = docs[0]
    assert guide.live_chunks == 2
    stored = kb.index._collection(account.id).get(
        ids=guide.live_chunk_ids(), include=["embeddings"]
    )
    mean = np.mean(stored["embeddings"], axis=0)
    mean /= np.linalg.norm(mean)
    query = "When do you open, and can I return things?"
    asked = kb.embed(query)
    hits = await kb.index.chunks(account.id, guide.live_chunk_ids(), asked)
    assert len(hits) == 2
    for hit in hits:
        # The mean of the document's chunk vectors, as a unit vector, at float16 precision.
        assert hit.document is not None
        assert float(hit.document @ mean) > 1 - 1e-3
        assert abs(float(np.linalg.norm(hit.document)) - 1) < 1e-3
    # A question on both halves is nearer the whole document than either of its chunks.
    whole = float(hits[0].document @ asked)  # type: ignore[operator]
    assert whole > max(h.score for h in hits) + 0.03
    found = await kb.retriever.retrieve(account.id, list(GUIDE), query, 4)
    assert found.snippets[0].external_id == "guide"
    # A single-chunk document's vector is its chunk's.
    (single,) = await kb.index.chunks(account.id, docs[1].live_chunk_ids(), asked)
    assert single.document is not None
    assert float(single.document @ asked) == pytest.approx(single.score, abs=2e-3)


def hit(external_id: str, score: float, document: float | None, index: int = 0) -> Hit:
    """A hit whose chunk scores ``score`` and whose document vector scores ``document``
    against the question ``QUESTION``."""

    def along(cosine: float) -> np.ndarray:
        return np.array([cosine, np.sqrt(1 - cosine**2), 0.0], dtype=np.float32)

    return Hit(
        chunk_id=f"{external_id}@1#{index}",
        external_id=external_id,
        text=f"{external_id} {index}",
        score=score,
        document=None if document is None else along(document),
    )


QUESTION = np.array([1.0, 0.0, 0.0], dtype=np.float32)


def firsts(ranked: list[list[Snippet]]) -> list[str]:
    return [found[0].external_id for found in ranked]


def test_fuse_counts_the_document_vector_and_the_words() -> None:
    # "whole": two chunks, each a part of the answer; "part": one chunk, a closer match.
    hits = [hit("whole", 0.50, 0.80, 0), hit("whole", 0.45, 0.80, 1), hit("part", 0.55, 0.55)]
    ranked = fuse(hits, {}, QUESTION, {})
    assert firsts(ranked) == ["whole", "part"]
    # Each document as its chunks, best first.
    assert [[s.text for s in found] for found in ranked] == [["whole 0", "whole 1"], ["part 0"]]
    assert ranked[0][0].score == 0.50  # the chunk's cosine, not the fused score
    # Every chunk also carries its whole document's cosine, so that "is this about the
    # question" can look at the document (engine.replies.on_topic).
    assert [[s.document_score for s in found] for found in ranked] == [
        [pytest.approx(0.80), pytest.approx(0.80)],
        [pytest.approx(0.55)],
    ]
    chunks_only = fuse(hits, {}, QUESTION, {}, document_weight=0)
    assert firsts(chunks_only) == ["part", "whole"]
    # A chunk indexed before documents had vectors counts its own cosine for its document.
    legacy = fuse([hit("whole", 0.50, None), hit("part", 0.55, 0.55)], {}, QUESTION, {})
    assert firsts(legacy) == ["part", "whole"]
    assert legacy[1][0].document_score is None and legacy[1][0].closeness == 0.50
    # Words count as a share of the best BM25 score, up to the lexical weight.
    tied = [hit("a", 0.50, 0.50), hit("b", 0.55, 0.55)]
    assert firsts(fuse(tied, {"a@1#0": 4.0}, QUESTION, {})) == ["a", "b"]
    both = {"a@1#0": 4.0, "b@1#0": 3.0}
    assert firsts(fuse(tied, both, QUESTION, {})) == ["b", "a"]
    # A document's best BM25 chunk counts for it even when another is its best snippet.
    split = [*tied, hit("a", 0.30, 0.50, 1)]
    ranked = fuse(split, {"a@1#1": 4.0}, QUESTION, {"b": "Beans"})
    assert [[(s.external_id, s.text, s.label) for s in found] for found in ranked] == [
        [("a", "a 0", ""), ("a", "a 1", "")],
        [("b", "b 0", "Beans")],
    ]
    # Its best BM25 chunk, not whichever of its chunks came last.
    ranked = fuse(split, {"a@1#1": 4.0, "a@1#0": 0.5}, QUESTION, {})
    assert firsts(ranked) == ["a", "b"]
    # The same chunk found twice (by meaning and by its words) is handed on once.
    twice = fuse([*tied, hit("a", 0.50, 0.50)], {}, QUESTION, {})
    assert [len(found) for found in twice] == [1, 1]


async def test_a_snippet_carries_its_label_context_and_sentence_vectors(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    kb = KB(redis, tmp_path)
    account = await kb.accounts.create("shop")
    guide = f"# Shop guide\n\n{HOURS}\n\n## Returns\n\n{RETURNS}"
    texts = {"guide": guide, "delivery": GUIDE["delivery"]}
    docs = await kb.load(account.id, texts, labels={"guide": "Store FAQ"}, content_type="md")
    assert docs[0].live_chunks == 2
    query = "Can I get a refund on a sale item?"
    found = await kb.retriever.retrieve(account.id, list(texts), query, 2)
    first = found.snippets[0]
    second = next(s for s in found.snippets if s.external_id != "guide")
    assert first.external_id == "guide" and first.label == "Store FAQ"
    assert second.external_id == "delivery" and second.label == ""
    # The chunk on returns, which starts with the overlap from the chunk before and holds its
    # own heading, is read with the label, the heading above its start and the document's
    # first sentence.
    assert "\n\n## Returns\n\n" in first.text
    assert "Sale items can be exchanged but not refunded." in first.text
    chunks = chunk_text(guide)
    (index,) = [c.index for c in chunks if c.text == first.text]
    assert index > 0
    assert first.context == chunk_contexts(guide, chunks, "Store FAQ")[index]
    assert first.context == f"Store FAQ\nShop guide\n{HOURS.split('. ')[0]}."
    assert second.context == ""
    # The question's vector goes on with the snippets, for the responder to compare
    # sentences with (engine.responder.SentenceVectors): the one embedding of it in a turn.
    (asked,) = found.embedded.values()
    assert list(found.embedded) == [query]
    assert float(asked @ kb.embedder.embed([query])[0]) > 0.999
    for snippet in found.snippets:
        assert len(snippet.sentence_vectors) == len(sentences(snippet.text)) > 1
        for vector in snippet.sentence_vectors:
            assert vector is not None and vector.shape == (384,)
            assert abs(float(np.linalg.norm(vector)) - 1) < 2e-3
        # Each vector is its own sentence's (read in its chunk, after the context): nearer a
        # fresh embedding of that sentence than any other sentence's vector is.
        fresh = kb.embedder.embed(sentences(snippet.text))
        similar = fresh @ np.array(snippet.sentence_vectors).T
        assert list(similar.argmax(axis=1)) == list(range(len(fresh)))

    # The label is the document's as it is now: a PATCH shows without embedding again.
    current = await kb.docs.get(account.id, "guide")
    assert current is not None
    await kb.docs.write(
        account.id, msgspec.structs.replace(current, label="Guide #2"), replacing=current
    )
    again = await kb.retriever.retrieve(account.id, list(texts), query, 1)
    assert again.snippets[0].label == "Guide #2" and again.topics == ["Guide"]
    assert again.snippets[0].context == first.context


def doc(external_id: str, label: str | None = None, file_name: str | None = None) -> Document:
    return msgspec.structs.replace(
        new_document(external_id), label=label, original_file_name=file_name
    )


def test_topics_are_labels_without_running_numbers_each_once() -> None:
    found = topics(
        [
            doc("a", "Shipping"),
            doc("b", "Shipping #2"),
            doc("c", "shipping (3)"),
            doc("d", "SHIPPING [4]"),
            doc("e", "Returns"),
            doc("f", "Windows 11"),  # a number that names stays
            doc("g", file_name="opening_hours.txt"),
            doc("h", None, "Opening Hours.pdf"),
            doc("i", "  Gift cards  ", "ignored.txt"),
            doc("j"),  # neither label nor file name: no topic
            doc("k", "#7", "price-list.pdf"),  # only a running number: the file name
            doc("l", "2024"),
        ]
    )
    assert found == ["Shipping", "Returns", "Windows 11", "opening hours", "Gift cards",
                     "price list", "2024"]  # fmt: skip
    # In the persona's order: the first spelling of a topic is kept.
    assert topics([doc("b", "Shipping #2"), doc("a", "shipping")]) == ["Shipping"]
    assert topics([]) == []


async def test_topics_come_back_for_any_message_and_only_from_live_documents(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    kb = KB(redis, tmp_path)
    account = await kb.accounts.create("shop")
    labels = {"hours": "Opening hours #1", "returns": "Returns", "delivery": "opening HOURS (2)"}
    await kb.load(account.id, {e: GUIDE[e] for e in labels}, labels=labels)
    staged = Incoming(external_id="draft", data=b"Draft text.", content_type="txt", label="Drafts")
    await kb.ingest.upsert(account.id, [staged], enqueue=False)
    active = [*labels, "draft", "no-such-document"]
    for query in ("", "   ", "When do you open?"):
        found = await kb.retriever.retrieve(account.id, active, query, 3)
        assert found.topics == ["Opening hours", "Returns"]
        assert bool(found.snippets) == bool(query.strip())
    assert await kb.retriever.retrieve(account.id, [], "When do you open?", 3) == (
        await kb.retriever.retrieve(account.id, ["draft"], "When do you open?", 3)
    )
    assert (await kb.retriever.retrieve(account.id, ["draft"], "Draft", 3)).snippets == []


async def test_inactive_and_other_accounts_documents_never_show(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    kb = KB(redis, tmp_path)
    first = await kb.accounts.create("first")
    second = await kb.accounts.create("second")
    secret = "The Zorblax controller code is 7731. Zorblax keeps the seedlings warm."
    await kb.load(second.id, {"faq": secret, "zorblax": secret})
    await kb.load(
        first.id,
        {
            "faq": "Parcels leave the depot at noon. Delivery takes three days.",
            "hidden": secret,
            "hours": GUIDE["hours"],
        },
    )
    query = "What is the Zorblax controller code?"
    # The other account finds its own, so its chunks are counted in the shared lexical index.
    theirs = await kb.retriever.retrieve(second.id, ["faq", "zorblax"], query, 5)
    assert {s.external_id for s in theirs.snippets} == {"faq", "zorblax"}
    assert all(s.text == secret for s in theirs.snippets)
    # The same account, with "hidden" active once, so that its chunks are counted too.
    shown = await kb.retriever.retrieve(first.id, ["faq", "hidden", "hours"], query, 5)
    assert shown.snippets[0].external_id == "hidden"

    for active in (["faq", "hours"], ["faq", "hours", "zorblax"], ["faq"]):
        found = await kb.retriever.retrieve(first.id, active, query, 5)
        ids = [s.external_id for s in found.snippets]
        assert ids and set(ids) <= set(active) - {"zorblax"}, ids
        assert all("Zorblax" not in s.text and "Zorblax" not in s.context for s in found.snippets)
    # Another account's external_id alone finds nothing in this one.
    assert (await kb.retriever.retrieve(first.id, ["zorblax"], query, 5)).snippets == []


async def test_a_document_of_one_chunk_is_known_by_its_own_text_a_longer_one_by_its_chunks(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    # A one-chunk document's vector is its text embedded without the label-and-heading
    # context its chunk is embedded after (kb.retrieval.document_vector); a longer one's is
    # the mean of its chunks'.
    kb = KB(redis, tmp_path)
    account = await kb.accounts.create("shop")
    short = "Orders ship from Lisbon within two working days."
    docs = await kb.load(
        account.id,
        {"short": short, "long": repeated(GRINDER, 300)},
        labels={"short": "Shipping FAQ #3", "long": "Grinder"},
    )
    by_id = {d.external_id: d for d in docs}
    held = {
        eid: await kb.index.chunks(account.id, by_id[eid].live_chunk_ids())
        for eid in ("short", "long")
    }
    (only,) = held["short"]
    assert only.document is not None
    assert float(only.document @ kb.embed(short)) == pytest.approx(1.0, abs=1e-3)
    assert float(only.document @ kb.embed(f"{only.context}\n\n{short}")) < 0.99
    vectors = np.stack([kb.embed(f"{h.context}\n\n{h.text}") for h in held["long"]])
    mean = vectors.mean(axis=0)
    assert len(held["long"]) > 1 and held["long"][0].document is not None
    assert held["long"][0].document @ (mean / np.linalg.norm(mean)) == pytest.approx(1.0, abs=1e-3)


async def test_a_question_asked_again_is_not_embedded_again(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    # A widget's starter prompts come back word for word from every visitor who taps one.
    kb = KB(redis, tmp_path)
    account = await kb.accounts.create("again")
    await kb.load(account.id, {"returns": "Returns are free for 30 days. Keep the receipt."})
    asked: list[str] = []
    counting = copy.copy(kb.embedder)  # the same model and session, its calls counted

    def embed(texts: list[str]) -> np.ndarray:
        asked.extend(texts)
        return kb.embedder.embed(texts)

    counting.embed = embed  # type: ignore[method-assign]
    retriever = KnowledgeRetriever(docs=kb.docs, index=kb.index, embedder=counting)
    first = await retriever.retrieve(account.id, ["returns"], "Can I return shoes?", 1)
    again = await retriever.retrieve(account.id, ["returns"], "Can I return shoes?", 1)
    other = await retriever.retrieve(account.id, ["returns"], "Do I need the receipt?", 1)
    assert asked == ["Can I return shoes?", "Do I need the receipt?"]
    vector = first.embedded["Can I return shoes?"]
    assert np.array_equal(vector, again.embedded["Can I return shoes?"])
    assert [(s.external_id, s.text, s.score) for s in first.snippets] == [
        (s.external_id, s.text, s.score) for s in again.snippets
    ]
    assert other.snippets and not np.array_equal(vector, other.embedded["Do I need the receipt?"])
