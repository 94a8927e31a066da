"""The policy map layer: typed entries and the interface every implementation follows.

Like ``lbmap.py`` for load balancing: the pure policy resolver (``services.datapath.policy``)
produces a :class:`PolicyState`; a reconciler diffs it against the realised maps and writes through
:class:`PolicyMaps`, which has a real implementation (pinned eBPF maps used by the tc program in
``bpf/policy.c``) and an in-memory fake.

Maps (IPv4):

* ``endpoints``: host-side interface index -> {endpoint id, identity, flags}. Flags say whether
  ingress / egress are enforced: a pod selected by no policy for a direction is default-allow in
  that direction (Kubernetes semantics), one selected by any policy is default-deny there.
* ``ipcache`` (LPM trie): CIDR -> identity. Pod IPs as /32 with the pod's identity; policy CIDRs
  (ipBlock, and their ``except`` prefixes) with node-local CIDR identities
  (>= ``CIDR_IDENTITY_BASE``,
  never published on the bus); no match means ``WORLD`` (2).
* ``policy`` (LPM trie): {endpoint id, direction, proto, peer identity, port prefix} -> allow.
  ``peer_identity`` 0 means "any peer", ``proto`` 0 means "any protocol and port". Port ranges
  (``endPort``) are stored as power-of-two aligned prefixes, so a range costs at most ~30 entries.
  The datapath looks up (identity, proto, port), (identity, any), (any, proto, port), (any, any).

Connection tracking is the tc program's own business (replies of allowed connections pass); it is
not part of the desired state.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

WORLD_IDENTITY = 2
ANY_IDENTITY = 0
ANY_PROTO = 0
CIDR_IDENTITY_BASE = 1 << 24  # node-local CIDR identities, as Cilium's local scope


class Direction(enum.IntEnum):
    INGRESS = 0  # traffic to the endpoint
    EGRESS = 1  # traffic from the endpoint


class EndpointFlags(enum.IntFlag):
    NONE = 0
    ENFORCE_INGRESS = 1
    ENFORCE_EGRESS = 2


@dataclass(frozen=True, slots=True, order=True)
class EndpointKey:
    ifindex: int  # host-side interface of the pod (in the node's network namespace)


@dataclass(frozen=True, slots=True)
class EndpointValue:
    endpoint_id: int  # stable per pod on this node, used in policy keys
    identity: int
    flags: EndpointFlags = EndpointFlags.NONE


@dataclass(frozen=True, slots=True, order=True)
class CidrKey:
    cidr: str  # "10.244.1.5/32"


@dataclass(frozen=True, slots=True, order=True)
class PolicyKey:
    endpoint_id: int
    direction: Direction
    proto: int  # 6, 17, 132, or ANY_PROTO
    peer_identity: int  # or ANY_IDENTITY
    port: int = 0  # host order; with port_prefix_len
    port_prefix_len: int = 0  # 0..16; 0 with port 0 = every port


@dataclass(slots=True)
class PolicyState:
    endpoints: dict[EndpointKey, EndpointValue] = field(default_factory=dict)
    ipcache: dict[CidrKey, int] = field(default_factory=dict)  # -> identity
    policy: set[PolicyKey] = field(default_factory=set)  # present = allow


class PolicyMaps(Protocol):
    """Idempotent batch writes; deleting an absent key is not an error. Raises
    ``lbmap.MapError`` / ``lbmap.MapFullError`` naming the map on failure."""

    def update_endpoints(self, items: Mapping[EndpointKey, EndpointValue]) -> None: ...
    def delete_endpoints(self, keys: Iterable[EndpointKey]) -> None: ...
    def update_ipcache(self, items: Mapping[CidrKey, int]) -> None: ...
    def delete_ipcache(self, keys: Iterable[CidrKey]) -> None: ...
    def update_policy(self, keys: Iterable[PolicyKey]) -> None: ...
    def delete_policy(self, keys: Iterable[PolicyKey]) -> None: ...
    def dump(self) -> PolicyState: ...
    def fill(self) -> dict[str, tuple[int, int]]: ...


def port_range_prefixes(start: int, end: int) -> list[tuple[int, int]]:
    """Cover [start, end] (inclusive, 1..65535) with power-of-two aligned (port, prefix_len)
    blocks, the way a CIDR range is split into prefixes."""
    if not 0 < start <= end <= 0xFFFF:
        raise ValueError(f"port range {start}-{end} is not within 1..65535")
    out: list[tuple[int, int]] = []
    lo = start
    while lo <= end:
        size = lo & -lo if lo else 1 << 16
        while lo + size - 1 > end:
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out
