"""BM25 over the chunks a question is asked of: rare words win, statistics are taken over the
asked chunks only, accounts are apart, and the per-process counts stay bounded."""

from __future__ import annotations

import pytest

from engine.words import terms
from kb.lexical import LexicalIndex

CHUNKS = {
    "shop@1#0": "Our shop opens at nine every morning and closes at six in the evening.",
    "shop@1#1": "The shop is closed on public holidays and opens late on Sundays.",
    "parts@1#0": "Replacement part XK-42 fits every kettle sold since last spring.",
    "garden@1#0": "The greenhouse controller is called Zorblax and keeps the seedlings warm.",
    "pay@1#0": "Each payment is taken when the order ships, never before.",
}


def filled(account_id: str = "acct", chunks: dict[str, str] = CHUNKS) -> LexicalIndex:
    index = LexicalIndex()
    for chunk_id, text in chunks.items():
        index.add(account_id, chunk_id, text)
    return index


def ranked(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda i: -scores[i])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Where do I get an XK-42?", "parts@1#0"),
        ("What is Zorblax?", "garden@1#0"),
        ("zorblax seedlings opens", "garden@1#0"),  # two rare words beat one common one
    ],
)
def test_a_rare_word_ranks_its_chunk_first(query: str, expected: str) -> None:
    index = filled()
    scores = index.search("acct", list(CHUNKS), query)
    assert ranked(scores)[0] == expected
    assert all(score > 0 for score in scores.values())


def test_only_chunks_holding_a_query_word_score() -> None:
    scores = filled().search("acct", list(CHUNKS), "When does the shop open?")
    assert set(scores) == {"shop@1#0", "shop@1#1"}
    assert filled().search("acct", list(CHUNKS), "completely unrelated words") == {}


def test_query_words_are_stemmed_like_the_text() -> None:
    # "payments" and "payment" meet at "pay" (engine.words), and so do "ships"/"ship".
    assert terms("payments") == terms("payment") == ["pay"]
    scores = filled().search("acct", list(CHUNKS), "payments")
    assert list(scores) == ["pay@1#0"]
    assert set(filled().search("acct", list(CHUNKS), "opening")) == {"shop@1#0", "shop@1#1"}


def test_a_chunk_outside_the_asked_ids_never_scores() -> None:
    index = filled()
    asked = ["shop@1#0", "pay@1#0"]
    assert index.search("acct", asked, "Zorblax") == {}
    scores = index.search("acct", asked, "shop Zorblax XK-42 payment")
    assert set(scores) == set(asked)


def test_statistics_are_taken_over_the_asked_chunks_only() -> None:
    asked = ["shop@1#0", "shop@1#1", "parts@1#0"]
    query = "When does the shop open? And the XK-42?"
    alone = filled(chunks={i: CHUNKS[i] for i in asked})
    before = alone.search("acct", asked, query)
    assert set(before) == set(asked)
    # Many more chunks, all holding the query's words and much longer than the asked ones:
    # counted over everything, they would lower every idf and raise the average length.
    for n in range(50):
        alone.add("acct", f"noise@1#{n}", "shop opens XK-42 " * 3 + "filler words here " * 20)
    after = alone.search("acct", asked, query)
    assert after == pytest.approx(before, rel=1e-12)
    # Asked about, the same chunks do change the scores: the statistics really move.
    assert alone.search("acct", [*asked, "noise@1#0"], query)["parts@1#0"] != pytest.approx(
        before["parts@1#0"]
    )


def test_two_accounts_with_the_same_chunk_id_are_apart() -> None:
    index = LexicalIndex()
    index.add("first", "faq@1#0", "Zorblax keeps the seedlings warm.")
    index.add("second", "faq@1#0", "Parcels leave the depot at noon.")
    assert index.search("first", ["faq@1#0"], "Zorblax") != {}
    assert index.search("second", ["faq@1#0"], "Zorblax") == {}
    assert index.search("second", ["faq@1#0"], "depot") != {}
    assert index.search("first", ["faq@1#0"], "depot") == {}
    # Counted for one account is not counted for another.
    other = LexicalIndex()
    other.add("first", "faq@1#0", "Zorblax")
    assert other.missing("second", ["faq@1#0"]) == ["faq@1#0"]
    assert other.search("second", ["faq@1#0"], "Zorblax") == {}


def test_missing_lists_uncounted_ids_and_search_ignores_them() -> None:
    index = LexicalIndex()
    index.add("acct", "a@1#0", "Zorblax keeps the seedlings warm.")
    assert index.missing("acct", ["a@1#0", "b@1#0", "c@1#0"]) == ["b@1#0", "c@1#0"]
    assert index.missing("acct", ["a@1#0"]) == []
    with_unknown = index.search("acct", ["a@1#0", "b@1#0", "c@1#0"], "Zorblax seedlings")
    only_known = index.search("acct", ["a@1#0"], "Zorblax seedlings")
    # Uncounted chunks are not taken as empty chunks: they change no statistic.
    assert with_unknown == pytest.approx(only_known) and set(with_unknown) == {"a@1#0"}
    assert index.search("acct", ["b@1#0"], "Zorblax") == {}
    # Adding a counted chunk again changes nothing (a chunk id names fixed text).
    index.add("acct", "a@1#0", "Something else entirely: depot.")
    assert index.search("acct", ["a@1#0"], "depot") == {}


def test_capacity_keeps_the_most_recently_used_chunks() -> None:
    index = LexicalIndex(capacity=3)
    index.add("acct", "c1@1#0", "alpha shared")
    index.add("acct", "c2@1#0", "bravo shared")
    index.add("acct", "c3@1#0", "charlie shared")
    assert index.search("acct", ["c1@1#0"], "alpha") != {}  # c1 is now the most recent
    index.add("acct", "c4@1#0", "delta shared")
    index.add("acct", "c5@1#0", "echo shared")
    everything = [f"c{n}@1#0" for n in range(1, 6)]
    assert index.missing("acct", everything) == ["c2@1#0", "c3@1#0"]
    assert set(index.search("acct", everything, "shared")) == {"c1@1#0", "c4@1#0", "c5@1#0"}
    assert index.search("acct", everything, "bravo charlie") == {}
    # Nothing of the evicted chunks is kept: their words and postings are gone.
    postings = index._postings["acct"]
    assert "bravo" not in postings and "charlie" not in postings
    assert set(postings["shar"]) == {"c1@1#0", "c4@1#0", "c5@1#0"}
    assert all("c2@1#0" not in held and "c3@1#0" not in held for held in postings.values())


def test_an_account_whose_chunks_are_all_evicted_keeps_nothing() -> None:
    index = LexicalIndex(capacity=2)
    index.add("old", "a@1#0", "alpha")
    index.add("new", "b@1#0", "bravo")
    index.add("new", "c@1#0", "charlie")
    assert "old" not in index._postings
    assert index.missing("old", ["a@1#0"]) == ["a@1#0"]
    assert len(index._counts) == len(index._lengths) == 2


def test_stopwords_alone_score_nothing() -> None:
    assert filled().search("acct", list(CHUNKS), "What is the and of it?") == {}
    assert filled().search("acct", [], "Zorblax") == {}
