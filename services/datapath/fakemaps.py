"""In-memory LBMap implementations: a faithful fake and a fault-injecting wrapper.

The reconciler's correctness rests on the order of its writes, not on bcc, so most tests run
against :class:`FakeLBMap`: three dicts with the same capacity semantics as the kernel maps (a new
key beyond ``max_entries`` raises :class:`MapFullError`; updating an existing key always works).
Batches are applied one entry at a time, exactly like a syscall loop, and an ``on_write`` hook
fires after every single entry so an invariant test can inspect the maps at each instant a
datapath could look at them.

:class:`FaultyLBMap` wraps any LBMap (fake or real) and makes chosen entry writes fail, so tests
can prove that the next sync converges after a failure anywhere in a plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from services.datapath.lbmap import (
    BackendValue,
    FrontendValue,
    LBMap,
    LBMapState,
    MapError,
    MapFullError,
    RevNatValue,
    ServiceKey,
    ServiceValue,
)

MAP_SERVICES = "services"
MAP_BACKENDS = "backends"
MAP_REVNAT = "revnat"
MAP_FRONTENDS = "frontends"
MAP_NAMES = (MAP_SERVICES, MAP_BACKENDS, MAP_REVNAT, MAP_FRONTENDS)

DEFAULT_CAPACITY = {
    MAP_SERVICES: 65536,
    MAP_BACKENDS: 65536,
    MAP_REVNAT: 65536,
    MAP_FRONTENDS: 65536,
}

WriteHook = Callable[[str, LBMapState], None]
Op = Literal["update", "delete"]
K = TypeVar("K")
V = TypeVar("V")


class FakeLBMap:
    """Four dicts behind the LBMap protocol, with kernel-like capacity limits."""

    def __init__(
        self,
        capacity: Mapping[str, int] | None = None,
        on_write: WriteHook | None = None,
    ) -> None:
        self.capacity = {**DEFAULT_CAPACITY, **(capacity or {})}
        self.state = LBMapState()
        self.on_write = on_write
        self.writes = 0  # single-entry writes performed (updates + deletes of present keys)

    def _update(self, name: str, table: dict[K, V], items: Mapping[K, V]) -> None:
        for key, value in items.items():
            if key not in table and len(table) >= self.capacity[name]:
                raise MapFullError(name, f"no room for {key!r} ({self.capacity[name]} entries)")
            table[key] = value
            self._written(name)

    def _delete(self, name: str, table: dict[K, V], keys: Iterable[K]) -> None:
        for key in keys:
            if table.pop(key, None) is not None:
                self._written(name)

    def _written(self, name: str) -> None:
        self.writes += 1
        if self.on_write is not None:
            self.on_write(name, self.state)

    def update_backends(self, items: Mapping[int, BackendValue]) -> None:
        self._update(MAP_BACKENDS, self.state.backends, items)

    def delete_backends(self, ids: Iterable[int]) -> None:
        self._delete(MAP_BACKENDS, self.state.backends, ids)

    def update_services(self, items: Mapping[ServiceKey, ServiceValue]) -> None:
        self._update(MAP_SERVICES, self.state.services, items)

    def delete_services(self, keys: Iterable[ServiceKey]) -> None:
        self._delete(MAP_SERVICES, self.state.services, keys)

    def update_revnat(self, items: Mapping[int, RevNatValue]) -> None:
        self._update(MAP_REVNAT, self.state.revnat, items)

    def delete_revnat(self, ids: Iterable[int]) -> None:
        self._delete(MAP_REVNAT, self.state.revnat, ids)

    def update_frontends(self, items: Mapping[ServiceKey, FrontendValue]) -> None:
        self._update(MAP_FRONTENDS, self.state.frontends, items)

    def delete_frontends(self, keys: Iterable[ServiceKey]) -> None:
        self._delete(MAP_FRONTENDS, self.state.frontends, keys)

    def dump(self) -> LBMapState:
        return LBMapState(
            services=dict(self.state.services),
            backends=dict(self.state.backends),
            revnat=dict(self.state.revnat),
            frontends=dict(self.state.frontends),
        )

    def close(self) -> None:
        """Nothing to release (like BpfLBMap.close, which drops only fds: the state stays)."""

    def fill(self) -> dict[str, tuple[int, int]]:
        sizes = {
            MAP_SERVICES: len(self.state.services),
            MAP_BACKENDS: len(self.state.backends),
            MAP_REVNAT: len(self.state.revnat),
            MAP_FRONTENDS: len(self.state.frontends),
        }
        return {name: (n, self.capacity[name]) for name, n in sizes.items()}


@dataclass(frozen=True, slots=True)
class Fault:
    """Which entry writes fail: those matching ``map_name``/``op``/``key`` (None: any), from the
    ``nth`` match on (counting from 1; None: from the first), at most ``times`` times (None:
    forever). ``full`` raises MapFullError instead of a plain MapError."""

    map_name: str | None = None
    op: Op | None = None
    nth: int | None = None
    full: bool = False
    times: int | None = 1
    key: Callable[[object], bool] | None = None


class FaultyLBMap:
    """Wraps an LBMap and raises on chosen entry writes; writes before the failing one land."""

    def __init__(self, inner: LBMap, faults: Iterable[Fault] = ()) -> None:
        self.inner = inner
        self.faults = list(faults)
        self._seen = [0] * len(self.faults)
        self._fired = [0] * len(self.faults)
        self.raised = 0

    def add(self, fault: Fault) -> None:
        self.faults.append(fault)
        self._seen.append(0)
        self._fired.append(0)

    def clear(self) -> None:
        self.faults, self._seen, self._fired = [], [], []

    def _check(self, name: str, op: Op, key: object) -> None:
        for i, fault in enumerate(self.faults):
            if fault.map_name not in (None, name) or fault.op not in (None, op):
                continue
            if fault.key is not None and not fault.key(key):
                continue
            self._seen[i] += 1
            if fault.times is not None and self._fired[i] >= fault.times:
                continue
            if fault.nth is None or self._seen[i] >= fault.nth:
                self._fired[i] += 1
                self.raised += 1
                if fault.full:
                    raise MapFullError(name, "injected: map full")
                raise MapError(name, f"injected: {op} failed")

    def update_backends(self, items: Mapping[int, BackendValue]) -> None:
        for k, v in items.items():
            self._check(MAP_BACKENDS, "update", k)
            self.inner.update_backends({k: v})

    def delete_backends(self, ids: Iterable[int]) -> None:
        for k in ids:
            self._check(MAP_BACKENDS, "delete", k)
            self.inner.delete_backends([k])

    def update_services(self, items: Mapping[ServiceKey, ServiceValue]) -> None:
        for k, v in items.items():
            self._check(MAP_SERVICES, "update", k)
            self.inner.update_services({k: v})

    def delete_services(self, keys: Iterable[ServiceKey]) -> None:
        for k in keys:
            self._check(MAP_SERVICES, "delete", k)
            self.inner.delete_services([k])

    def update_revnat(self, items: Mapping[int, RevNatValue]) -> None:
        for k, v in items.items():
            self._check(MAP_REVNAT, "update", k)
            self.inner.update_revnat({k: v})

    def delete_revnat(self, ids: Iterable[int]) -> None:
        for k in ids:
            self._check(MAP_REVNAT, "delete", k)
            self.inner.delete_revnat([k])

    def update_frontends(self, items: Mapping[ServiceKey, FrontendValue]) -> None:
        for k, v in items.items():
            self._check(MAP_FRONTENDS, "update", k)
            self.inner.update_frontends({k: v})

    def delete_frontends(self, keys: Iterable[ServiceKey]) -> None:
        for k in keys:
            self._check(MAP_FRONTENDS, "delete", k)
            self.inner.delete_frontends([k])

    def dump(self) -> LBMapState:
        return self.inner.dump()

    def fill(self) -> dict[str, tuple[int, int]]:
        return self.inner.fill()


def check_consistent(state: LBMapState) -> list[str]:
    """The datapath invariant, at any instant between two writes: what connect() reads must
    lead to a usable backend. Every frontend entry's reverse-NAT entry exists; an inline entry
    names backends that exist with those addresses; an entry without inline backends (and every
    master, which inspection and the slots path read) has slots 1..count whose backends exist.
    Returns the violations (empty when consistent)."""
    problems: list[str] = []
    for key, value in state.services.items():
        if key.slot == 0:
            problems.extend(_slot_problems(state, key, value.count, value.rev_nat_id))
    for key, fv in state.frontends.items():
        where = f"{key.vip}:{key.port}/{key.proto} (frontend entry)"
        if not fv.inline:
            problems.extend(_slot_problems(state, key, fv.count, fv.rev_nat_id, where))
            continue
        if len(fv.inline) != fv.count:
            problems.append(f"{where}: count {fv.count} but {len(fv.inline)} inline backends")
        for ib in fv.inline:
            b = state.backends.get(ib.backend_id)
            if b is None or (b.ip, b.port) != (ib.ip, ib.port):
                problems.append(f"{where}: inline backend {ib} is not in the backends map")
        if fv.rev_nat_id not in state.revnat:
            problems.append(f"{where}: rev_nat {fv.rev_nat_id} missing")
    return problems


def _slot_problems(
    state: LBMapState, key: ServiceKey, count: int, rev_nat_id: int, where: str = ""
) -> list[str]:
    where = where or f"{key.vip}:{key.port}/{key.proto}"
    problems: list[str] = []
    for slot in range(1, count + 1):
        sv = state.services.get(key._replace(slot=slot))
        if sv is None:
            problems.append(f"{where}: count {count} but slot {slot} missing")
        elif sv.backend_id not in state.backends:
            problems.append(f"{where}: slot {slot} -> backend {sv.backend_id} missing")
    if rev_nat_id not in state.revnat:
        problems.append(f"{where}: rev_nat {rev_nat_id} missing")
    return problems
