"""The reconciler's mirror of what is in the maps, indexed for diffing.

Diffing desired state against the kernel maps on every change would mean dumping 100,000 entries
per event; instead the reconciler keeps this mirror, built once from ``LBMap.dump()`` (so a
restart starts from the pinned truth) and updated only after a write succeeded. When a write
fails the mirror may be wrong about the entries of that batch, so the executor rebuilds it from a
fresh dump. The indexes (slots per frontend, references per backend) make one frontend's diff
cost proportional to that frontend, not to the whole map.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from services.datapath.alloc import IdAllocator
from services.datapath.frontend import BackendAddr, Frontend
from services.datapath.lbmap import (
    BackendValue,
    FrontendValue,
    LBMapState,
    RevNatValue,
    ServiceKey,
    ServiceValue,
)

BACKEND_ID_LAST = 2**32 - 1
REVNAT_ID_LAST = 2**16 - 1


class Realised:
    """Mirror of the four maps: masters and slots per frontend, backends, reverse NAT, and the
    frontend entries connect() reads."""

    def __init__(self) -> None:
        self.masters: dict[Frontend, ServiceValue] = {}
        self.slots: dict[Frontend, dict[int, ServiceValue]] = {}
        self.backends: dict[int, BackendValue] = {}
        self.revnat: dict[int, RevNatValue] = {}
        self.frontend_values: dict[Frontend, FrontendValue] = {}
        self.refs: Counter[int] = Counter()  # backend id -> slots that reference it

    @classmethod
    def from_state(cls, state: LBMapState) -> Realised:
        mirror = cls()
        mirror.update_services(state.services)
        mirror.backends.update(state.backends)
        mirror.revnat.update(state.revnat)
        mirror.update_frontends(state.frontends)
        return mirror

    def frontends(self) -> set[Frontend]:
        """Every frontend with any entry (a master, a frontend entry, or slots left behind)."""
        return set(self.masters) | set(self.slots) | set(self.frontend_values)

    def update_frontends(self, items: Mapping[ServiceKey, FrontendValue]) -> None:
        values, new = self.frontend_values, tuple.__new__
        for (vip, port, proto, _slot), value in items.items():
            values[new(Frontend, (vip, port, proto))] = value

    def delete_frontends(self, keys: Iterable[ServiceKey]) -> None:
        for key in keys:
            self.frontend_values.pop(Frontend.of(key), None)

    def update_services(self, items: Mapping[ServiceKey, ServiceValue]) -> None:
        masters, all_slots, refs = self.masters, self.slots, self.refs
        new, refs_get, unref = tuple.__new__, refs.get, self._unref
        fe, slots = None, None  # a frontend's slots come together: one Frontend for them all
        for key, value in items.items():
            vip, port, proto, slot = key
            if fe is None or vip != fe[0] or port != fe[1] or proto != fe[2]:
                fe = new(Frontend, (vip, port, proto))
                slots = None
            if slot == 0:
                masters[fe] = value
                continue
            if slots is None:
                slots = all_slots.get(fe)
                if slots is None:
                    slots = all_slots[fe] = {}
            old = slots.get(slot)
            if old is not None:
                unref(old[0])  # backend_id
            slots[slot] = value
            bid = value[0]  # backend_id
            refs[bid] = refs_get(bid, 0) + 1

    def delete_services(self, keys: Iterable[ServiceKey]) -> None:
        for key in keys:
            fe = Frontend.of(key)
            if key.slot == 0:
                self.masters.pop(fe, None)
                continue
            slots = self.slots.get(fe)
            if slots is None or key.slot not in slots:
                continue
            self._unref(slots.pop(key.slot).backend_id)
            if not slots:
                del self.slots[fe]

    def _unref(self, backend_id: int) -> None:
        refs = self.refs  # a Counter: dict's own get/pop (Counter.__delitem__ is Python-level)
        left = refs.get(backend_id, 0) - 1
        if left > 0:
            refs[backend_id] = left
        else:
            refs.pop(backend_id, None)

    def slot_backends(self, fe: Frontend) -> dict[int, int]:
        """slot -> backend id for one frontend (all slots present, even beyond the count)."""
        return {slot: v.backend_id for slot, v in self.slots.get(fe, {}).items()}

    def allocators(self) -> tuple[IdAllocator[BackendAddr], IdAllocator[Frontend]]:
        """Rebuild both id allocators from the entries present, so a restart renumbers nothing.
        Entries whose owner cannot be identified are reserved until a prune deletes them."""
        backend_ids: IdAllocator[BackendAddr] = IdAllocator("backend ids", 1, BACKEND_ID_LAST)
        for ident in sorted(self.backends):
            b = self.backends[ident]
            if not backend_ids.restore(BackendAddr(b.ip, b.port, b.proto), ident):
                backend_ids.reserve(ident)
        revnat_ids: IdAllocator[Frontend] = IdAllocator("rev-nat ids", 1, REVNAT_ID_LAST)
        for fe in sorted(self.masters):
            ident = self.masters[fe].rev_nat_id
            rn = self.revnat.get(ident)
            matches = rn is not None and (rn.vip, rn.port) == (fe.vip, fe.port)
            if matches and not revnat_ids.restore(fe, ident):
                revnat_ids.reserve(ident)
        for ident in self.revnat:
            if not revnat_ids.in_use(ident):
                revnat_ids.reserve(ident)
        return backend_ids, revnat_ids
