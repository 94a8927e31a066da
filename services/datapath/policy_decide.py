"""A pure model of the policy datapath's verdict: the same lookups bpf/policy.c performs.

Why this shape: the resolver's output is only right if the *datapath* reading it decides as
Kubernetes specifies, so tests (and ``weir`` debugging) evaluate a :class:`PolicyState` exactly
the way the tc program does, without a kernel:

1. the endpoint is found by its host-side ifindex; an unknown endpoint or a direction without the
   ENFORCE bit is allowed (default allow);
2. the peer address is mapped to an identity by longest-prefix match on the ipcache (no match:
   ``WORLD``);
3. the policy map (an LPM trie over {endpoint, direction, proto, peer, port bits}) is probed with
   (identity, proto, port), (identity, any), (any identity, proto, port), (any, any); any hit
   allows. A (proto, port) probe matches the longest stored port prefix covering the port.

:func:`matching_keys` returns which entries would match, for ``explain``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterator, Mapping

from services.datapath.policymap import (
    ANY_IDENTITY,
    ANY_PROTO,
    WORLD_IDENTITY,
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
    PolicyKey,
    PolicyState,
)

_ENFORCE = {
    Direction.INGRESS: EndpointFlags.ENFORCE_INGRESS,
    Direction.EGRESS: EndpointFlags.ENFORCE_EGRESS,
}


def lookup_identity(ipcache: Mapping[CidrKey, int], ip: str) -> int:
    """Longest-prefix match of an IPv4 address on the ipcache; ``WORLD`` when nothing covers it."""
    addr = int(ipaddress.IPv4Address(ip))
    for plen in range(32, -1, -1):
        mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
        key = CidrKey(f"{ipaddress.IPv4Address(addr & mask)}/{plen}")
        if key in ipcache:
            return ipcache[key]
    return WORLD_IDENTITY


def probe_keys(
    endpoint_id: int, direction: Direction, peer: int, proto: int, port: int
) -> Iterator[PolicyKey]:
    """Every policy key that would allow this flow, in the datapath's lookup order."""
    for ident in (peer, ANY_IDENTITY) if peer != ANY_IDENTITY else (ANY_IDENTITY,):
        if proto != ANY_PROTO:
            for plen in range(16, -1, -1):
                masked = port & ((0xFFFF << (16 - plen)) & 0xFFFF)
                yield PolicyKey(endpoint_id, direction, proto, ident, masked, plen)
        yield PolicyKey(endpoint_id, direction, ANY_PROTO, ident, 0, 0)


def matching_keys(
    policy: Collection[PolicyKey],
    endpoint_id: int,
    direction: Direction,
    peer: int,
    proto: int,
    port: int,
) -> list[PolicyKey]:
    return [k for k in probe_keys(endpoint_id, direction, peer, proto, port) if k in policy]


def decide(
    state: PolicyState,
    ifindex: int,
    direction: Direction,
    peer: str | int,
    proto: int,
    port: int,
) -> bool:
    """Whether the datapath lets this flow through (``peer`` is an IPv4 address or an
    identity; ``port`` is the endpoint's port for ingress, the peer's port for egress)."""
    endpoint = state.endpoints.get(EndpointKey(ifindex))
    if endpoint is None or not endpoint.flags & _ENFORCE[direction]:
        return True
    ident = lookup_identity(state.ipcache, peer) if isinstance(peer, str) else peer
    return any(
        k in state.policy for k in probe_keys(endpoint.endpoint_id, direction, ident, proto, port)
    )
