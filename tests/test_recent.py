"""Per-process caches are bounded (engine.recent): a process serves any number of accounts."""

from __future__ import annotations

import pytest

from engine.recent import Recent
from kb import documents
from kb.documents import DocumentStore, new_document


def test_the_least_recently_used_entry_goes_first() -> None:
    kept: Recent[str, int] = Recent(2)
    kept.put("a", 1)
    kept.put("b", 2)
    assert kept.get("a") == 1  # "a" is now the most recently used
    kept.put("c", 3)
    assert "b" not in kept and kept.get("b") is None
    assert (kept.get("a"), kept.get("c"), len(kept)) == (1, 3, 2)
    kept.put("a", 4)  # a new value for a kept key replaces it, and counts as a use
    kept.put("d", 5)
    assert "c" not in kept and (kept.get("a"), kept.get("d")) == (4, 5)
    with pytest.raises(ValueError):
        Recent(0)


async def test_document_listings_are_kept_for_a_bounded_number_of_accounts(
    redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(documents, "LISTINGS_KEPT", 2)
    store = DocumentStore(redis)
    for account in ("acct-a", "acct-b", "acct-c"):
        await store.write(account, new_document(f"{account}-doc"), replacing=None)
        assert list((await store.listing(account)).rows) == [f"{account}-doc"]
    assert len(store._listings) == 2 and "acct-a" not in store._listings
    # A listing no longer kept is read again, whole.
    assert list((await store.listing("acct-a")).rows) == ["acct-a-doc"]
