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

Writes must keep the datapath consistent at every instant: backends, then slots, then reverse NAT,
then the master count, then trimming stale slots. The order is the reconciler's job; this layer
only performs batches of writes and reports failures precisely.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
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


@dataclass(slots=True)
class LBMapState:
    """A full snapshot of the three maps: what ``dump()`` returns and what goldens compare."""

    services: dict[ServiceKey, ServiceValue] = field(default_factory=dict)
    backends: dict[int, BackendValue] = field(default_factory=dict)
    revnat: dict[int, RevNatValue] = field(default_factory=dict)


class MapError(Exception):
    """A map write failed. ``map_name`` says which map; the reconciler retries the whole batch."""

    def __init__(self, map_name: str, message: str) -> None:
        super().__init__(f"{map_name}: {message}")
        self.map_name = map_name


class MapFullError(MapError):
    """The map has no room left for a new key (E2BIG/ENOSPC from the kernel)."""


class LBMap(Protocol):
    """Batch writes to the three load-balancing maps. Updates are idempotent; deleting an absent
    key is not an error. Implementations raise MapError/MapFullError and never partially hide a
    failure: on error, entries before the failing one may have been written."""

    def update_backends(self, items: Mapping[int, BackendValue]) -> None: ...
    def delete_backends(self, ids: Iterable[int]) -> None: ...
    def update_services(self, items: Mapping[ServiceKey, ServiceValue]) -> None: ...
    def delete_services(self, keys: Iterable[ServiceKey]) -> None: ...
    def update_revnat(self, items: Mapping[int, RevNatValue]) -> None: ...
    def delete_revnat(self, ids: Iterable[int]) -> None: ...
    def dump(self) -> LBMapState: ...
    def fill(self) -> dict[str, tuple[int, int]]:
        """Per map name: (entries, capacity)."""
        ...
