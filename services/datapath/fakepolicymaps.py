"""In-memory PolicyMaps, and the datapath's policy decision as a pure function.

Why both live here: control-plane tests (the policy resolver, the reconciler, the worker) need a
PolicyMaps that behaves like the kernel maps without root or bcc, and a way to ask "would this
packet pass?" of the state they produced. :class:`FakePolicyMaps` validates every entry with the
same codecs as the real maps (so bad input fails the same way, naming map, entry and field) and
has the same capacity semantics. :func:`decide` evaluates a new flow against a
:class:`PolicyState` exactly as bpf/policy.c does — endpoint by ifindex, peer identity by
longest-prefix match in the ipcache (WORLD when none), the four policy lookups with port
prefixes — so the BPF tests can compare the kernel's verdicts with it. Connection tracking is
the datapath's own state and not modelled: ``decide`` answers for the first packet of a flow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from services.datapath.flowevents import DROP_POLICY_DENIED, ObservationPoint, Verdict
from services.datapath.lbmap import MapFullError
from services.datapath.policylayout import (
    MAP_ENDPOINTS,
    MAP_IPCACHE,
    MAP_POLICY,
    PolicyCapacities,
    decode_cidr,
    encode_cidr,
    encode_endpoint,
    encode_endpoint_key,
    encode_identity,
    encode_policy_key,
)
from services.datapath.policymap import (
    ANY_IDENTITY,
    ANY_PROTO,
    WORLD_IDENTITY,
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
    EndpointValue,
    PolicyKey,
    PolicyState,
)

K = TypeVar("K")
V = TypeVar("V")


class FakePolicyMaps:
    """Three containers behind the PolicyMaps protocol, with kernel-like capacity limits."""

    def __init__(self, capacities: PolicyCapacities | None = None) -> None:
        cap = capacities or PolicyCapacities()
        self.capacity = {
            MAP_ENDPOINTS: cap.endpoints,
            MAP_IPCACHE: cap.ipcache,
            MAP_POLICY: cap.rules,
        }
        self.state = PolicyState()
        self.writes = 0

    def _room(self, name: str, present: bool, size: int, key: object) -> None:
        if not present and size >= self.capacity[name]:
            raise MapFullError(name, f"writing {key!r}: map full ({self.capacity[name]} entries)")

    def _put(self, name: str, table: dict[K, V], items: Mapping[K, V]) -> None:
        for key, value in items.items():
            self._room(name, key in table, len(table), key)
            table[key] = value
            self.writes += 1

    def update_endpoints(self, items: Mapping[EndpointKey, EndpointValue]) -> None:
        for k, v in items.items():
            encode_endpoint_key(k)
            encode_endpoint(k, v)
        self._put(MAP_ENDPOINTS, self.state.endpoints, items)

    def delete_endpoints(self, keys: Iterable[EndpointKey]) -> None:
        for key in keys:
            encode_endpoint_key(key)
            self.writes += self.state.endpoints.pop(key, None) is not None

    def update_ipcache(self, items: Mapping[CidrKey, int]) -> None:
        canonical = {}
        for k, v in items.items():
            encode_identity(k, v)
            canonical[decode_cidr(encode_cidr(k))] = v  # as the kernel would give it back
        self._put(MAP_IPCACHE, self.state.ipcache, canonical)

    def delete_ipcache(self, keys: Iterable[CidrKey]) -> None:
        for key in keys:
            canonical = decode_cidr(encode_cidr(key))
            self.writes += self.state.ipcache.pop(canonical, None) is not None

    def update_policy(self, keys: Iterable[PolicyKey]) -> None:
        for key in keys:
            encode_policy_key(key)
            self._room(MAP_POLICY, key in self.state.policy, len(self.state.policy), key)
            self.state.policy.add(key)
            self.writes += 1

    def delete_policy(self, keys: Iterable[PolicyKey]) -> None:
        for key in keys:
            encode_policy_key(key)
            if key in self.state.policy:
                self.state.policy.discard(key)
                self.writes += 1

    def dump(self) -> PolicyState:
        return PolicyState(
            dict(self.state.endpoints), dict(self.state.ipcache), set(self.state.policy)
        )

    def fill(self) -> dict[str, tuple[int, int]]:
        s = self.state
        return {
            MAP_ENDPOINTS: (len(s.endpoints), self.capacity[MAP_ENDPOINTS]),
            MAP_IPCACHE: (len(s.ipcache), self.capacity[MAP_IPCACHE]),
            MAP_POLICY: (len(s.policy), self.capacity[MAP_POLICY]),
        }


# --- the datapath's decision, in Python --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a flow as one endpoint's veth sees it."""

    ifindex: int
    direction: Direction  # the endpoint's: INGRESS = to the pod, EGRESS = from the pod
    saddr: str
    daddr: str
    proto: int
    dport: int = 0  # 0 for ICMP and protocols without ports


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict  # FORWARDED or DROPPED
    drop_reason: int  # 0, or 133 (policy denied)
    endpoint_id: int
    src_identity: int
    dst_identity: int
    enforced: bool  # the endpoint enforces policy in this direction
    observation_point: ObservationPoint


def lookup_identity(ipcache: Mapping[CidrKey, int], address: str) -> int:
    """Longest-prefix match of ``address`` in the ipcache; WORLD when nothing matches."""
    ip = ipaddress.IPv4Address(address)
    for plen in range(32, -1, -1):
        net = ipaddress.IPv4Network((int(ip) & (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, plen))
        identity = ipcache.get(CidrKey(str(net)))
        if identity is not None:
            return identity
    return WORLD_IDENTITY


def _rule_matches(
    policy: set[PolicyKey], endpoint_id: int, direction: Direction, peer: int, proto: int, port: int
) -> bool:
    for plen in range(16, -1, -1):
        prefix = port & (0xFFFF << (16 - plen)) & 0xFFFF
        if PolicyKey(endpoint_id, direction, proto, peer, prefix, plen) in policy:
            return True
    return False


def policy_allows(
    policy: set[PolicyKey], endpoint_id: int, direction: Direction, peer: int, proto: int, port: int
) -> bool:
    """The four lookups of bpf/policy.c, in its order."""
    return (
        _rule_matches(policy, endpoint_id, direction, peer, proto, port)
        or _rule_matches(policy, endpoint_id, direction, peer, ANY_PROTO, 0)
        or _rule_matches(policy, endpoint_id, direction, ANY_IDENTITY, proto, port)
        or _rule_matches(policy, endpoint_id, direction, ANY_IDENTITY, ANY_PROTO, 0)
    )


def decide(state: PolicyState, packet: Packet) -> Decision | None:
    """The verdict bpf/policy.c gives the first packet of a flow; None when the interface is
    not an endpoint (the program passes the packet without looking at it)."""
    endpoint = state.endpoints.get(EndpointKey(packet.ifindex))
    if endpoint is None:
        return None
    egress = packet.direction == Direction.EGRESS
    peer = lookup_identity(state.ipcache, packet.daddr if egress else packet.saddr)
    src, dst = (endpoint.identity, peer) if egress else (peer, endpoint.identity)
    flag = EndpointFlags.ENFORCE_EGRESS if egress else EndpointFlags.ENFORCE_INGRESS
    enforced = bool(endpoint.flags & flag)
    allowed = not enforced or policy_allows(
        state.policy, endpoint.endpoint_id, packet.direction, peer, packet.proto, packet.dport
    )
    return Decision(
        verdict=Verdict.FORWARDED if allowed else Verdict.DROPPED,
        drop_reason=0 if allowed else DROP_POLICY_DENIED,
        endpoint_id=endpoint.endpoint_id,
        src_identity=src,
        dst_identity=dst,
        enforced=enforced,
        observation_point=(
            ObservationPoint.FROM_ENDPOINT if egress else ObservationPoint.TO_ENDPOINT
        ),
    )
