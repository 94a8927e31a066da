"""Desired-state vocabulary shared by the pure model and the reconciler.

The model (Kubernetes semantics) and the reconciler (map layout) meet only here, so neither has
to know the other's inputs: the reconciler never sees a Service or an EndpointSlice, and the
model never sees a slot or an id. A frontend is one (vip, port, proto) the socket LB answers
for; its spec is the ordered-insensitive set of backends plus the master flags.
"""

from __future__ import annotations

from typing import NamedTuple

from services.datapath.lbmap import BackendState, ServiceFlags, ServiceKey

PROTO_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}


class Frontend(NamedTuple):
    vip: str
    port: int
    proto: int

    def key(self, slot: int = 0) -> ServiceKey:
        return ServiceKey(self.vip, self.port, self.proto, slot)

    @classmethod
    def of(cls, key: ServiceKey) -> Frontend:
        return cls(key.vip, key.port, key.proto)

    def __str__(self) -> str:
        return f"{self.vip}:{self.port}/{PROTO_NAMES.get(self.proto, self.proto)}"


class BackendAddr(NamedTuple):
    """A backend's identity: its id is stable per (ip, port, proto)."""

    ip: str
    port: int
    proto: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}/{PROTO_NAMES.get(self.proto, self.proto)}"


class Backend(NamedTuple):
    """One backend of a frontend: ordered by address, then state."""

    addr: BackendAddr
    state: BackendState = BackendState.ACTIVE


class FrontendSpec(NamedTuple):
    """What one frontend should do. ``backends`` is sorted and unique by address; an empty
    tuple means the frontend exists but refuses connections (NO_BACKENDS). A named tuple like
    the map entries: the model builds one per frontend on every change of its service, and
    compares it with the previous one to skip unchanged frontends, both in C."""

    backends: tuple[Backend, ...] = ()
    flags: ServiceFlags = ServiceFlags.NONE
    affinity_timeout: int = 0
    service: str = ""  # "namespace/name" that owns it, for errors and inspection
    port_name: str = ""
