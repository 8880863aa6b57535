"""What a process keeps of what it read lately: a map of bounded size, the least recently
used entry out first when it is full.

The caches the event loop keeps by account, persona or text go through it: a process serves
any number of accounts, and a plain ``dict`` keyed by them grows for as long as the process
lives. A read moves the entry, so threads share one only under a lock (:mod:`kb.index`'s
collection handles). :mod:`kb.lexical` keeps its own order: evicting a chunk also updates
its postings.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a cache keeps one entry or more")
        self._capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The entry, now the most recently used; None when it is not kept."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Keep ``value``, the most recently used; the least recently used goes when full."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
