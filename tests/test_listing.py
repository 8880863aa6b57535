"""Listing orders: ties, directions and filters, without a server."""

from __future__ import annotations

from kb.listing import Listing, ListingRow


def row(label: str, status: str = "staged", units: float = 1.0, created: float = 0.0) -> ListingRow:
    return ListingRow(
        label=label.casefold(),
        file_name=label.casefold(),
        original_file_name="",
        status=status,  # type: ignore[arg-type]
        knowledge_units=units,
        storage_units=units,
        created_at=created,
    )


def listing() -> Listing:
    return Listing(
        1,
        {
            "b": row("Same", units=2),
            "a": row("Same", units=2),
            "c": row("Other", status="ready", units=1),
            "d": row("Invoice March", status="ready", units=3),
        },
    )


def test_equal_keys_are_ordered_by_external_id_both_ways() -> None:
    found = listing()
    assert list(found.select("label", descending=False)) == ["d", "c", "a", "b"]
    # Descending is the exact reverse, so pages of either direction never overlap.
    assert list(found.select("label", descending=True)) == ["b", "a", "c", "d"]
    assert list(found.select("knowledge_units", descending=False)) == ["c", "a", "b", "d"]


def test_filters_keep_the_order() -> None:
    found = listing()
    assert list(found.select("knowledge_units", descending=True, status="ready")) == ["d", "c"]
    assert found.select("label", descending=False, search="INVOICE") == ["d"]
    assert found.select("label", descending=False, search="same", status="ready") == []
    assert found.select("label", descending=False, external_id="c") == ["c"]
    assert found.select("label", descending=False, external_id="zz") == []


def test_an_order_is_computed_once_and_cannot_be_changed() -> None:
    found = listing()
    first = found.order("label")
    assert found.order("label") is first
    assert isinstance(first, tuple)  # shared by every list call at this version
