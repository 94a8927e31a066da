"""An LBMap wrapper that counts entry writes per map, for trace attributes.

Why a wrapper: a change's trace must say which maps a node touched and how many entries it wrote
(``weir trace``), but the reconciler reports only a total and the real and fake maps should not
grow tracing concerns. Wrapping the LBMap the reconciler writes through sees every batch call
(one Python call per step, not per entry, so the cost does not grow with the batch).
:meth:`WriteCounter.take` returns and resets the counts since the last take.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from services.datapath.lbmap import (
    BackendValue,
    FrontendValue,
    LBMap,
    LBMapState,
    RevNatValue,
    ServiceKey,
    ServiceValue,
)


class WriteCounter:
    """LBMap pass-through counting entries per map name (updates and deletes asked for)."""

    def __init__(self, inner: LBMap) -> None:
        self.inner = inner
        self.counts: Counter[str] = Counter()

    def take(self) -> dict[str, int]:
        """Entries written per map since the last call (maps with zero writes left out)."""
        out = {name: n for name, n in sorted(self.counts.items()) if n}
        self.counts.clear()
        return out

    def update_backends(self, items: Mapping[int, BackendValue]) -> None:
        self.counts["backends"] += len(items)
        self.inner.update_backends(items)

    def delete_backends(self, ids: Iterable[int]) -> None:
        keys = list(ids)
        self.counts["backends"] += len(keys)
        self.inner.delete_backends(keys)

    def update_services(self, items: Mapping[ServiceKey, ServiceValue]) -> None:
        self.counts["services"] += len(items)
        self.inner.update_services(items)

    def delete_services(self, keys: Iterable[ServiceKey]) -> None:
        items = list(keys)
        self.counts["services"] += len(items)
        self.inner.delete_services(items)

    def update_revnat(self, items: Mapping[int, RevNatValue]) -> None:
        self.counts["revnat"] += len(items)
        self.inner.update_revnat(items)

    def delete_revnat(self, ids: Iterable[int]) -> None:
        keys = list(ids)
        self.counts["revnat"] += len(keys)
        self.inner.delete_revnat(keys)

    def update_frontends(self, items: Mapping[ServiceKey, FrontendValue]) -> None:
        self.counts["frontends"] += len(items)
        self.inner.update_frontends(items)

    def delete_frontends(self, keys: Iterable[ServiceKey]) -> None:
        items = list(keys)
        self.counts["frontends"] += len(items)
        self.inner.delete_frontends(items)

    def dump(self) -> LBMapState:
        return self.inner.dump()

    def fill(self) -> dict[str, tuple[int, int]]:
        return self.inner.fill()
