"""Turn desired frontends into LBMap writes in the one order the datapath can tolerate.

A connect() may look a service up between any two map writes, so every plan is a sequence of
steps that keeps the maps consistent at each instant (checked after every single write by the
invariant tests): (1) backends, (2) slots 1..n, (3) reverse NAT, (4) the master with its count,
(5) the frontend entry connect() reads (the master's fields, and the backends inline for small
services: ``lbmap.frontend_value``), (6) trim stale slots beyond n, (7) delete vanished frontends
frontend entry first, then master, then their slots, then their reverse NAT, (8) delete backends
nothing references any more (an inline backend is rewritten out of its entry before that).

Planning (:func:`plan`) is pure apart from id allocation: it diffs the desired spec of each target
frontend against the :class:`Realised` mirror, so re-applying the same state writes nothing.
Slots are filled in backend-id order: ids are allocated monotonically, so a new backend usually
lands in a new last slot and an unchanged frontend never moves. The :class:`Reconciler` executes
plans, keeps the mirror current, and on a failed write resyncs from a dump and falls back to one
plan per frontend so one full map or broken entry cannot block every other service; failed
frontends stay pending and are retried by the next apply. ``prune`` (delete everything not
desired, including orphans found in pinned maps) is only safe once the full desired state is
known, so callers pass it only after a full sync.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from services.datapath.alloc import IdAllocator, IdSpaceExhaustedError
from services.datapath.frontend import BackendAddr, Frontend, FrontendSpec
from services.datapath.lbmap import (
    INLINE_BACKENDS_MAX,
    BackendValue,
    FrontendValue,
    InlineBackend,
    LBMap,
    MapError,
    MapFullError,
    RevNatValue,
    ServiceFlags,
    ServiceKey,
    ServiceValue,
)
from services.datapath.realised import Realised

PHASES = (
    "backends",
    "slots",
    "revnat",
    "masters",
    "frontends",
    "trim",
    "del-frontends",
    "del-masters",
    "del-slots",
    "del-revnat",
    "del-backends",
)


@dataclass(slots=True)
class Step:
    """One batch against one map; exactly one of the collections is non-empty."""

    phase: str
    backends: dict[int, BackendValue] = field(default_factory=dict)
    services: dict[ServiceKey, ServiceValue] = field(default_factory=dict)
    revnat: dict[int, RevNatValue] = field(default_factory=dict)
    frontends: dict[ServiceKey, FrontendValue] = field(default_factory=dict)
    del_services: list[ServiceKey] = field(default_factory=list)
    del_frontends: list[ServiceKey] = field(default_factory=list)
    del_revnat: list[int] = field(default_factory=list)
    del_backends: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.backends)
            + len(self.services)
            + len(self.revnat)
            + len(self.frontends)
            + len(self.del_services)
            + len(self.del_frontends)
            + len(self.del_revnat)
            + len(self.del_backends)
        )


@dataclass(slots=True)
class Plan:
    steps: list[Step]

    def writes(self) -> int:
        return sum(len(s) for s in self.steps)


def plan(
    desired: Mapping[Frontend, FrontendSpec],
    targets: Iterable[Frontend],
    realised: Realised,
    backend_ids: IdAllocator[BackendAddr],
    revnat_ids: IdAllocator[Frontend],
    *,
    prune: bool = False,
    orphan_backends: Iterable[int] = (),
    protected: Container[int] = (),
) -> Plan:
    """Writes that take each target frontend from its realised to its desired state (absent
    from ``desired`` = delete). ``prune`` also removes every reverse-NAT entry and backend that
    no desired frontend uses. ``orphan_backends`` are also deleted when unreferenced, unless
    ``protected`` (ids some desired frontend wants). Raises MapFullError when an id space is
    exhausted."""
    s = {phase: Step(phase) for phase in PHASES}
    want_backends: dict[int, BackendValue] = {}
    ref_delta: dict[int, int] = {}
    for backend_id in orphan_backends:
        ref_delta.setdefault(backend_id, 0)
    # the loop below runs once per backend of every target (100,000 at a cold sync): locals, and
    # entries built with tuple.__new__ (in C) instead of the named tuples' Python-level __new__
    slot_writes, trims = s["slots"].services, s["trim"].del_services
    master_writes, revnat_writes = s["masters"].services, s["revnat"].revnat
    frontend_writes, frontends_get = s["frontends"].frontends, realised.frontend_values.get
    realised_slots, delta, allocate = realised.slots, ref_delta.get, backend_ids.allocate_many
    want_get, masters_get, revnat_get = want_backends.get, realised.masters.get, realised.revnat.get
    desired_get, revnat_id = desired.get, revnat_ids.get
    new = tuple.__new__
    no_slots: dict[int, ServiceValue] = {}
    none, no_backends = ServiceFlags.NONE, ServiceFlags.NO_BACKENDS
    inline_max, affinity = INLINE_BACKENDS_MAX, int(ServiceFlags.SESSION_AFFINITY)
    try:
        for fe in sorted(set(targets)):
            old_slots = realised_slots.get(fe, no_slots)
            for old in old_slots.values():
                bid = old[0]  # backend_id
                ref_delta[bid] = delta(bid, 0) - 1
            spec = desired_get(fe)
            if spec is None:
                present = (
                    fe in realised.masters or fe in realised_slots or fe in realised.frontend_values
                )
                if present or revnat_id(fe) is not None:
                    _plan_delete(fe, realised, revnat_ids, s)
                continue
            rid = revnat_id(fe)
            if rid is None:
                rid = revnat_ids.allocate(fe)
            backends = spec[0]  # backends
            ids = allocate([b[0] for b in backends])  # unique: backends are unique by address
            vip, port, proto = fe
            # one pass in slot order (ascending ids; unique, so the sort never compares the
            # backends): the wanted backend, the slot, and the inline copy connect() reads,
            # which is the slot's (id, ip, port), collected only when it can be inline at all
            pairs = zip(ids, backends, strict=True)
            small = len(ids) <= inline_max
            items: list[InlineBackend] = []
            count = 0
            for bid, (addr, state) in sorted(pairs) if len(ids) > 1 else pairs:
                prev = want_get(bid)
                if prev is None or state < prev[3]:  # [3]: state
                    want_backends[bid] = new(BackendValue, (*addr, state))
                count += 1
                ref_delta[bid] = delta(bid, 0) + 1
                want = new(ServiceValue, (bid, 0, rid, none, 0))
                if not old_slots or old_slots.get(count) != want:
                    slot_writes[new(ServiceKey, (vip, port, proto, count))] = want
                if small:
                    items.append(new(InlineBackend, (bid, addr[0], addr[1])))  # ip, port
            rn = new(RevNatValue, (vip, port))
            if revnat_get(rid) != rn:
                revnat_writes[rid] = rn
            flags = spec[1]  # flags
            if not count or type(flags) is not ServiceFlags:
                flags = ServiceFlags(flags | (ServiceFlags.NONE if count else no_backends))
            master = new(ServiceValue, (0, count, rid, flags, spec[2]))  # [2]: affinity timeout
            if masters_get(fe) != master:
                master_writes[new(ServiceKey, (vip, port, proto, 0))] = master
            # lbmap.inlinable, inline: 1..INLINE_BACKENDS_MAX backends and no session affinity
            inline: tuple[InlineBackend, ...] = ()
            if small and count and not int.__and__(flags, affinity):
                inline = tuple(items)
            entry = new(FrontendValue, (count, rid, flags, spec[2], inline))
            if frontends_get(fe) != entry:
                frontend_writes[new(ServiceKey, (vip, port, proto, 0))] = entry
            if old_slots and max(old_slots) > count:  # slots beyond the new count
                stale = [n for n in sorted(old_slots) if n > count]
                trims.extend(ServiceKey(vip, port, proto, n) for n in stale)
    except IdSpaceExhaustedError as exc:
        raise MapFullError("backends" if "backend" in str(exc) else "revnat", str(exc)) from exc
    have_backends = realised.backends
    backend_writes = s["backends"].backends
    if have_backends:
        for bid, value in sorted(want_backends.items()):
            if have_backends.get(bid) != value:
                backend_writes[bid] = value
    else:  # a cold sync: every wanted backend is a write
        backend_writes.update(sorted(want_backends.items()))
    candidates: Iterable[int] = ref_delta
    if prune:
        keep = {revnat_ids.get(fe) for fe in desired}
        keep.update(s["del-revnat"].del_revnat)  # already deleted with their frontend
        s["del-revnat"].del_revnat.extend(i for i in sorted(realised.revnat) if i not in keep)
        candidates = set(ref_delta) | set(realised.backends)
    # only ids present in the maps can need a delete (none at all at a cold sync): filter first
    in_maps = [b for b in candidates if b in have_backends]
    for bid in sorted(in_maps):
        if bid in want_backends or bid in protected:
            continue
        if realised.refs.get(bid, 0) + ref_delta.get(bid, 0) <= 0:
            s["del-backends"].del_backends.append(bid)
    return Plan([s[p] for p in PHASES if len(s[p])])


def _plan_delete(
    fe: Frontend, realised: Realised, revnat_ids: IdAllocator[Frontend], s: dict[str, Step]
) -> None:
    master = realised.masters.get(fe)
    if fe in realised.frontend_values:
        s["del-frontends"].del_frontends.append(fe.key())
    if master is not None:
        s["del-masters"].del_services.append(fe.key())
    s["del-slots"].del_services.extend(fe.key(n) for n in sorted(realised.slot_backends(fe)))
    allocated = revnat_ids.get(fe)
    ids = {i for i in (allocated, master.rev_nat_id if master else None) if i is not None}
    for rid in sorted(ids):
        if rid in realised.revnat:
            s["del-revnat"].del_revnat.append(rid)
        elif rid == allocated:
            revnat_ids.release_id(rid)  # allocated but never written: nothing to delete


@dataclass(frozen=True, slots=True)
class ApplyError:
    frontend: Frontend | None  # None: a cleanup step not tied to one frontend
    map_name: str
    message: str
    full: bool


@dataclass(slots=True)
class ApplyResult:
    targets: int = 0
    writes: int = 0
    errors: list[ApplyError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def full(self) -> bool:
        return any(e.full for e in self.errors)


class Reconciler:
    """Owns the mirror and the id allocators of one set of maps; applies desired state.

    The mirror and the allocators are read from the maps on first use (or by :meth:`restore`),
    not at construction: a worker is built while its loader child may still be creating the
    maps, and reads them once they exist."""

    def __init__(self, lbmap: LBMap) -> None:
        self.lbmap = lbmap
        self._realised: Realised | None = None
        self._ids: tuple[IdAllocator[BackendAddr], IdAllocator[Frontend]] | None = None
        self.pending: set[Frontend] = set()
        self.orphan_backends: set[int] = set()

    def restore(self) -> None:
        """Build the mirror and both id allocators from the maps, so a restart renumbers
        nothing (entries of unknown owners stay reserved until a prune deletes them)."""
        self._realised = Realised.from_state(self.lbmap.dump())
        self._ids = self._realised.allocators()

    def load(self) -> None:
        """:meth:`restore` unless the mirror was read already (reading waits for the maps)."""
        self._loaded()

    def _loaded(self) -> tuple[Realised, tuple[IdAllocator[BackendAddr], IdAllocator[Frontend]]]:
        if self._realised is None or self._ids is None:
            self.restore()
        assert self._realised is not None and self._ids is not None
        return self._realised, self._ids

    @property
    def realised(self) -> Realised:
        return self._loaded()[0]

    @property
    def backend_ids(self) -> IdAllocator[BackendAddr]:
        return self._loaded()[1][0]

    @property
    def revnat_ids(self) -> IdAllocator[Frontend]:
        return self._loaded()[1][1]

    def resync(self) -> None:
        """Rebuild the mirror from the maps (after a failed write left it uncertain)."""
        self._realised = Realised.from_state(self.lbmap.dump())
        self.orphan_backends = {b for b in self._realised.backends if not self._realised.refs[b]}

    def apply(
        self,
        desired: Mapping[Frontend, FrontendSpec],
        changed: Iterable[Frontend] | None = None,
        prune: bool = False,
    ) -> ApplyResult:
        """Converge ``changed`` frontends (all desired ones when None) plus any still pending
        from an earlier failure; with ``prune`` also everything present but not desired."""
        targets = set(desired) if changed is None else set(changed)
        targets |= self.pending
        if prune:
            targets |= self.realised.frontends()
        result = ApplyResult(targets=len(targets))
        protected: set[int] = set()
        if prune or self.orphan_backends:
            protected = self._protected(desired)
        try:
            result.writes += self._run(
                desired, targets, prune=prune, protected=protected, orphans=self.orphan_backends
            )
            self.pending.clear()
            return result
        except MapError:
            self.resync()
        protected = self._protected(desired)
        failed: set[Frontend] = set()
        for fe in sorted(targets):
            try:
                result.writes += self._run(desired, [fe], prune=False, protected=protected)
            except MapError as exc:
                self.resync()
                failed.add(fe)
                result.errors.append(
                    ApplyError(fe, exc.map_name, str(exc), isinstance(exc, MapFullError))
                )
        try:
            result.writes += self._run(
                desired, [], prune=prune, protected=protected, orphans=self.orphan_backends
            )
        except MapError as exc:
            self.resync()
            result.errors.append(
                ApplyError(None, exc.map_name, str(exc), isinstance(exc, MapFullError))
            )
        self.pending = failed
        return result

    def _protected(self, desired: Mapping[Frontend, FrontendSpec]) -> set[int]:
        """Ids of every backend some desired frontend wants: never deleted as orphans, even
        while the frontend that wants them is still pending."""
        if not len(self.backend_ids):  # nothing allocated yet (a cold node): nothing to protect
            return set()
        get = self.backend_ids.get  # once: the loop runs per backend (100,000 at a cold sync)
        ids = {get(addr) for spec in desired.values() for addr, _state in spec.backends}
        ids.discard(None)
        return ids  # type: ignore[return-value]  # None discarded

    def _run(
        self,
        desired: Mapping[Frontend, FrontendSpec],
        targets: Iterable[Frontend],
        *,
        prune: bool,
        protected: Container[int],
        orphans: set[int] | None = None,
    ) -> int:
        p = plan(
            desired,
            targets,
            self.realised,
            self.backend_ids,
            self.revnat_ids,
            prune=prune,
            orphan_backends=orphans or (),
            protected=protected,
        )
        for step in p.steps:
            self._execute(step)
        if orphans:  # the ones still unreferenced (protected for a pending frontend) remain
            r = self.realised
            self.orphan_backends = {b for b in orphans if b in r.backends and not r.refs[b]}
        return p.writes()

    def _execute(self, step: Step) -> None:
        m, r = self.lbmap, self.realised
        if step.backends:
            m.update_backends(step.backends)
            r.backends.update(step.backends)
        if step.services:
            m.update_services(step.services)
            r.update_services(step.services)
        if step.revnat:
            m.update_revnat(step.revnat)
            r.revnat.update(step.revnat)
        if step.frontends:
            m.update_frontends(step.frontends)
            r.update_frontends(step.frontends)
        if step.del_frontends:
            m.delete_frontends(step.del_frontends)
            r.delete_frontends(step.del_frontends)
        if step.del_services:
            m.delete_services(step.del_services)
            r.delete_services(step.del_services)
        if step.del_revnat:
            m.delete_revnat(step.del_revnat)
            revnat, release = r.revnat, self.revnat_ids.release_id
            for rid in step.del_revnat:
                revnat.pop(rid, None)
                release(rid)
        if step.del_backends:
            m.delete_backends(step.del_backends)
            backends, release = r.backends, self.backend_ids.release_id
            for bid in step.del_backends:
                backends.pop(bid, None)
                release(bid)
