"""Stable numeric id allocation for backends and reverse-NAT entries.

Ids live in pinned maps that outlive the worker, so the allocator is never the source of truth:
on start it is rebuilt from the maps (``restore``/``reserve``), and a restart renumbers nothing.
Allocation is monotonic with wrap-around rather than lowest-free, so an id that was just released
is not handed to a different backend while the datapath may still hold it in a socket's cookie.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class IdSpaceExhaustedError(Exception):
    """Every id in the allocator's range is in use."""


class IdAllocator(Generic[K]):
    def __init__(self, name: str, first: int = 1, last: int = 2**32 - 1) -> None:
        self.name = name
        self.first = first
        self.last = last
        self._by_key: dict[K, int] = {}
        self._by_id: dict[int, K | None] = {}
        self._next = first

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, key: K) -> int | None:
        return self._by_key.get(key)

    def key_of(self, ident: int) -> K | None:
        return self._by_id.get(ident)

    def in_use(self, ident: int) -> bool:
        return ident in self._by_id

    def restore(self, key: K, ident: int) -> bool:
        """Adopt an id found in the maps. False if the key or id is already taken (the entry is
        then an orphan: ``reserve`` it so nobody reuses it before a prune deletes it)."""
        if key in self._by_key or ident in self._by_id:
            return False
        self._by_key[key] = ident
        self._by_id[ident] = key
        self._bump(ident)
        return True

    def reserve(self, ident: int) -> None:
        """Mark an id used by an entry without a known owner (found orphaned in the maps)."""
        self._by_id.setdefault(ident, None)
        self._bump(ident)

    def _bump(self, ident: int) -> None:
        if ident >= self._next:
            self._next = ident + 1 if ident < self.last else self.first

    def allocate(self, key: K) -> int:
        found = self._by_key.get(key)
        if found is not None:
            return found
        span = self.last - self.first + 1
        if len(self._by_id) >= span:
            raise IdSpaceExhaustedError(f"{self.name}: all {span} ids are in use")
        ident = self._next
        while ident in self._by_id:
            ident = ident + 1 if ident < self.last else self.first
        self._by_key[key] = ident
        self._by_id[ident] = key
        self._next = ident + 1 if ident < self.last else self.first
        return ident

    def allocate_many(self, keys: Iterable[K]) -> list[int]:
        """:meth:`allocate` for each key in turn, in one call (a cold sync allocates 100,000
        backend ids, a frontend's at a time): a new key takes the next id inline unless that
        id is taken or the range wraps, which go the general way."""
        by_key, by_id, last = self._by_key, self._by_id, self.last
        out: list[int] = []
        for key in keys:
            ident = by_key.get(key)
            if ident is None:
                ident = self._next
                if ident in by_id or ident >= last:
                    ident = self.allocate(key)
                else:
                    by_key[key] = ident
                    by_id[ident] = key
                    self._next = ident + 1
            out.append(ident)
        return out

    def release_id(self, ident: int) -> None:
        key = self._by_id.pop(ident, None)
        if key is not None and self._by_key.get(key) == ident:
            del self._by_key[key]
