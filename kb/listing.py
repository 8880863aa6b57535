"""Document listing (seed 001): one small row per document, and its sort orders.

A process keeps one :class:`Listing` per account and rebuilds it only when the account's
documents version moves (:meth:`kb.documents.DocumentStore.listing`). Each sort order is
computed once per version, so a list call sorts nothing: it walks a ready order of
external_ids and allocates one list, not a tuple per document. Per-row tuples made a list
call at 10,000 documents allocate enough containers for a full garbage collection to run
every few calls (BENCHMARKS.md, "List endpoint").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

Status = Literal["staged", "pending", "ready", "failed"]
SortBy = Literal[
    "created_at", "file_name", "label", "processing_status", "knowledge_units", "storage_units"
]


class ListingRow(msgspec.Struct, frozen=True, array_like=True):
    """What listing sorts and filters on; one small entry per document."""

    label: str
    file_name: str
    original_file_name: str
    status: Status
    knowledge_units: float
    storage_units: float
    created_at: float


SORT_KEYS: dict[SortBy, Callable[[ListingRow], str | float]] = {
    "created_at": lambda row: row.created_at,
    "file_name": lambda row: row.file_name,
    "label": lambda row: row.label,
    "processing_status": lambda row: row.status,
    "knowledge_units": lambda row: row.knowledge_units,
    "storage_units": lambda row: row.storage_units,
}


class Listing:
    """Every document's row at one documents version, and the orders asked for so far."""

    def __init__(self, version: int, rows: dict[str, ListingRow]) -> None:
        self.version = version
        self.rows = rows
        self._orders: dict[SortBy, tuple[str, ...]] = {}

    def order(self, sort_by: SortBy) -> tuple[str, ...]:
        """All external_ids, ascending by ``sort_by``; external_id breaks ties, so pages
        never overlap or skip under equal keys."""
        found = self._orders.get(sort_by)
        if found is None:
            key, rows = SORT_KEYS[sort_by], self.rows
            found = tuple(sorted(rows, key=lambda eid: (key(rows[eid]), eid)))
            self._orders[sort_by] = found
        return found

    def select(
        self,
        sort_by: SortBy,
        *,
        descending: bool,
        status: Status | None = None,
        search: str | None = None,
        external_id: str | None = None,
    ) -> Sequence[str]:
        """The matching external_ids in order: status and external_id match exactly,
        ``search`` is a case-insensitive substring of the label or either file name."""
        rows = self.rows
        chosen: Sequence[str]
        if external_id is not None:
            chosen = [external_id] if external_id in rows else []
        else:
            chosen = self.order(sort_by)
        if status is not None:
            chosen = [eid for eid in chosen if rows[eid].status == status]
        if search:
            needle = search.casefold()
            chosen = [eid for eid in chosen if _matches(rows[eid], needle)]
        return chosen[::-1] if descending else chosen


def _matches(row: ListingRow, needle: str) -> bool:
    return needle in row.label or needle in row.file_name or needle in row.original_file_name
