"""The load-balancing map layer: typed entries and the interface every implementation follows.

The reconciler never talks to bcc directly. It writes through :class:`LBMap`, which has a real
implementation (pinned eBPF maps, ``services.datapath.bpfmaps``), an in-memory fake for fast
control-plane tests, and a fault-injecting wrapper that makes chosen writes fail, so every test can
also check recovery. This mirrors Cilium's ``pkg/loadbalancer/maps`` split.

Layout (Cilium's slot layout, IPv4):

* services: key {vip, port, proto, slot}. Slot 0 is the *master*: ``count`` backends, the
  reverse-NAT id, flags and the affinity timeout. Slots 1..count hold one ``backend_id`` each.
* backends: id -> {ip, port, proto, state}.
* reverse NAT: id -> {vip, port}, so replies and getpeername() show the service address.
* frontends: {vip, port, proto} -> the master's fields plus, for a service with at most
  :data:`INLINE_BACKENDS_MAX` backends and no session affinity, the backends themselves
  ("inline"). It is what connect() reads: one hash lookup picks a backend instead of three
  (master, slot, backend), and it is a map of its own, sized per frontend, so the lookup walks a
  bucket array a quarter the size of the services map's (on this kind of VM a lookup costs about
  one cache and TLB miss per bucket array touched, ~1 us). It is derived state: the services map
  stays the record (Cilium's layout, the slots for larger services and for affinity), and
  :func:`frontend_value` is the one rule that derives an entry from a master and its slots.

Writes must keep the datapath consistent at every instant: backends, then slots, then reverse NAT,
then the master count, then the frontend entry, then trimming stale slots. The order is the
reconciler's job; this layer only performs batches of writes and reports failures precisely.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_SCTP = 132
PROTO_NUMBERS = {"TCP": PROTO_TCP, "UDP": PROTO_UDP, "SCTP": PROTO_SCTP}


class ServiceFlags(enum.IntFlag):
    """Bits of ServiceValue.flags; the same values are #defined in bpf/sock_lb.c."""

    NONE = 0
    SESSION_AFFINITY = 1  # ClientIP affinity, timeout in ServiceValue.affinity_timeout
    LOCAL_ONLY = 2  # traffic policy Local: only node-local backends were selected
    NO_BACKENDS = 4  # master exists with count 0: refuse with ECONNREFUSED


class BackendState(enum.IntEnum):
    ACTIVE = 0
    TERMINATING = 1  # serving but terminating: used only when no active backend exists
    QUARANTINED = 2


# The entries are immutable named tuples, not frozen dataclasses: a cold sync makes ~300,000 of
# them and diffs as many, and a tuple is built, hashed and compared in C (a frozen dataclass
# costs ~3x as much for each: its __init__ goes through object.__setattr__ per field).


class ServiceKey(NamedTuple):
    vip: str  # dotted IPv4
    port: int  # host order; the BPF layer converts to network order
    proto: int  # PROTO_TCP / PROTO_UDP / PROTO_SCTP
    slot: int = 0  # 0 = master

    def master(self) -> ServiceKey:
        return ServiceKey(self.vip, self.port, self.proto, 0)


class ServiceValue(NamedTuple):
    backend_id: int = 0  # slots 1..count
    count: int = 0  # type: ignore[assignment]  # master only (shadows tuple.count on purpose)
    rev_nat_id: int = 0
    flags: ServiceFlags = ServiceFlags.NONE
    affinity_timeout: int = 0  # seconds, master only


class BackendValue(NamedTuple):
    ip: str
    port: int
    proto: int
    state: BackendState = BackendState.ACTIVE


class RevNatValue(NamedTuple):
    vip: str
    port: int


# How many backends a frontend entry carries inline (LB4_INLINE_MAX in bpf/lb4_maps.h).
INLINE_BACKENDS_MAX = 4


class InlineBackend(NamedTuple):
    backend_id: int  # the id in the backends map (for inspection and the consistency check)
    ip: str
    port: int


class FrontendValue(NamedTuple):
    """A frontend entry: the master's fields and, when inline, the backends of slots 1..count in
    slot order. ``inline`` empty with ``count`` > 0 means: pick a slot from the services map."""

    count: int  # type: ignore[assignment]  # shadows tuple.count on purpose, like ServiceValue
    rev_nat_id: int
    flags: ServiceFlags = ServiceFlags.NONE
    affinity_timeout: int = 0
    inline: tuple[InlineBackend, ...] = ()


def inlinable(count: int, flags: ServiceFlags) -> bool:
    """Whether a frontend's backends go inline: 1..INLINE_BACKENDS_MAX of them and no session
    affinity (affinity remembers a slot and proves membership through the slots map)."""
    # int.__and__: the IntFlag operator builds a new flag object in Python, once per frontend
    return 0 < count <= INLINE_BACKENDS_MAX and not int.__and__(flags, _AFFINITY)


_AFFINITY = int(ServiceFlags.SESSION_AFFINITY)


def frontend_value(
    master: ServiceValue, slots: Sequence[tuple[int, BackendValue | None]]
) -> FrontendValue:
    """The frontend entry for ``master`` whose slots 1..count hold ``slots``: (backend id, that
    backend's value or None when it is not in the backends map) in slot order. Pure: the
    reconciler and the loader's rebuild both derive entries with it. A slot whose backend is
    unknown keeps the frontend on the slots path (connect() then skips that slot, as before)."""
    count, rev_nat_id, flags, timeout = master[1], master[2], master[3], master[4]
    inline: tuple[InlineBackend, ...] = ()
    if inlinable(count, flags) and len(slots) == count:
        picked = [InlineBackend(bid, b[0], b[1]) for bid, b in slots if b is not None]
        if len(picked) == count:
            inline = tuple(picked)
    return FrontendValue(count, rev_nat_id, flags, timeout, inline)


@dataclass(slots=True)
class LBMapState:
    """A full snapshot of the four maps: what ``dump()`` returns and what goldens compare."""

    services: dict[ServiceKey, ServiceValue] = field(default_factory=dict)
    backends: dict[int, BackendValue] = field(default_factory=dict)
    revnat: dict[int, RevNatValue] = field(default_factory=dict)
    frontends: dict[ServiceKey, FrontendValue] = field(default_factory=dict)  # slot 0 keys


def derive_frontends(state: LBMapState) -> dict[ServiceKey, FrontendValue]:
    """The frontend entries that the masters, slots and backends in ``state`` imply, one per
    master (pure): what the loader writes before it attaches programs that read them."""
    out: dict[ServiceKey, FrontendValue] = {}
    services, backends = state.services, state.backends
    for key, master in services.items():
        vip, port, proto, slot = key
        if slot:
            continue
        slots: list[tuple[int, BackendValue | None]] = []
        for n in range(1, master.count + 1):
            sv = services.get(ServiceKey(vip, port, proto, n))
            slots.append((0, None) if sv is None else (sv.backend_id, backends.get(sv.backend_id)))
        out[key] = frontend_value(master, slots)
    return out


class MapError(Exception):
    """A map write failed. ``map_name`` says which map; the reconciler retries the whole batch."""

    def __init__(self, map_name: str, message: str) -> None:
        super().__init__(f"{map_name}: {message}")
        self.map_name = map_name


class MapFullError(MapError):
    """The map has no room left for a new key (E2BIG/ENOSPC from the kernel)."""


class LBMap(Protocol):
    """Batch writes to the four load-balancing maps. Updates are idempotent; deleting an absent
    key is not an error. Implementations raise MapError/MapFullError and never partially hide a
    failure: on error, entries before the failing one may have been written."""

    def update_backends(self, items: Mapping[int, BackendValue]) -> None: ...
    def delete_backends(self, ids: Iterable[int]) -> None: ...
    def update_services(self, items: Mapping[ServiceKey, ServiceValue]) -> None: ...
    def delete_services(self, keys: Iterable[ServiceKey]) -> None: ...
    def update_revnat(self, items: Mapping[int, RevNatValue]) -> None: ...
    def delete_revnat(self, ids: Iterable[int]) -> None: ...
    def update_frontends(self, items: Mapping[ServiceKey, FrontendValue]) -> None: ...
    def delete_frontends(self, keys: Iterable[ServiceKey]) -> None: ...
    def dump(self) -> LBMapState: ...
    def fill(self) -> dict[str, tuple[int, int]]:
        """Per map name: (entries, capacity)."""
        ...
