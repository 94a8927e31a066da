"""Byte layout of the policy maps: ctypes mirrors of bpf/policy_maps.h and pure codecs.

Why a separate, pure module (like ``bpflayout.py`` for load balancing): the layout is a contract
between C and Python, kept in one place without I/O. The loader verifies pinned maps against
:func:`policy_map_specs` before reusing them, :mod:`policybpf` encodes and decodes entries with
the codecs here, :mod:`flowevents` decodes ring-buffer records, and a test compares every size
with what bcc compiled. Encoding validates each field and raises ``EntryError`` naming the map,
the entry and the field, so a malformed desired state is reported, never written.

LPM keys: the prefix length comes first, then the prefix bits. Fields matched whole (endpoint
id, identity) are stored in host order; the port, matched bit by bit, in network order.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import socket
from dataclasses import dataclass

from services.datapath.bpflayout import EntryError, MapSpec
from services.datapath.bpfsys import (
    BPF_F_NO_PREALLOC,
    MAP_TYPE_HASH,
    MAP_TYPE_LPM_TRIE,
    MAP_TYPE_LRU_HASH,
    MAP_TYPE_PERCPU_ARRAY,
)
from services.datapath.bpfsys import MAP_TYPE_RINGBUF as MAP_TYPE_RINGBUF  # noqa: PLC0414 - re-export
from services.datapath.policymap import (
    ANY_PROTO,
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
    EndpointValue,
    PolicyKey,
)

POLICY_FIXED_BITS = 80  # endpoint_id, peer_identity, direction, proto (bpf/policy_maps.h)
PAGE_SIZE = 4096


class PolicyEndpoint(ctypes.Structure):
    _fields_ = [
        ("endpoint_id", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class IpcacheKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("address", ctypes.c_uint32)]


class IpcacheValue(ctypes.Structure):
    _fields_ = [("identity", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class PolicyRuleKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint32),
        ("peer_identity", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("dport", ctypes.c_uint16),
    ]


class PolicyRuleValue(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32)]


class CtKey(ctypes.Structure):
    _fields_ = [
        ("endpoint_id", ctypes.c_uint32),
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class CtEntry(ctypes.Structure):
    _fields_ = [
        ("created", ctypes.c_uint64),
        ("last_seen", ctypes.c_uint64),
        ("packets_fwd", ctypes.c_uint32),
        ("packets_rev", ctypes.c_uint32),
        ("tcp_flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
    ]


class FlowEventRecord(ctypes.Structure):
    _fields_ = [
        ("ktime_ns", ctypes.c_uint64),
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("verdict", ctypes.c_uint8),
        ("drop_reason", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("is_reply", ctypes.c_uint8),
        ("obs_point", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("pad2", ctypes.c_uint32),
    ]


class _NoData(ctypes.Structure):
    """Key and value of a ring buffer: zero bytes."""

    _fields_ = []


# enum policy_counter in bpf/policy_maps.h, in order
POLICY_COUNTERS = (
    "not_ipv4",
    "no_endpoint",
    "fragment",
    "invalid",
    "new_allowed",
    "established",
    "reply",
    "policy_denied",
    "ct_expired",
    "ct_full",
    "events_lost",
)

# Logical names (MapError, fill(), the fake) -> pinned/kernel names in policy_map_specs().
MAP_ENDPOINTS, MAP_IPCACHE, MAP_POLICY = "endpoints", "ipcache", "policy"
MAP_CT, MAP_EVENTS, MAP_POLICY_COUNTERS = "ct", "events", "counters"


@dataclass(frozen=True, slots=True)
class PolicyCapacities:
    """max_entries per map and the ring buffer's size; -D flags, verified against pins."""

    endpoints: int = 4096
    ipcache: int = 262144
    rules: int = 262144
    ct: int = 65536
    events_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("endpoints", "ipcache", "rules", "ct"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 1 << 24:
                raise ValueError(f"PolicyCapacities.{name}: {value!r} is not in 1..{1 << 24}")
        size = self.events_bytes
        if not isinstance(size, int) or size < PAGE_SIZE or size & (size - 1) or size > 1 << 30:
            raise ValueError(
                f"PolicyCapacities.events_bytes: {size!r} is not a power of two "
                f"in {PAGE_SIZE}..{1 << 30}"
            )


@dataclass(frozen=True, slots=True)
class CtLifetimes:
    """Seconds a conntrack entry lives after its last packet (-D flags of bpf/policy.c)."""

    tcp: int = 21600
    nontcp: int = 60
    close: int = 10  # TCP once a FIN or RST was seen

    def __post_init__(self) -> None:
        for name in ("tcp", "nontcp", "close"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 1 << 31:
                raise ValueError(f"CtLifetimes.{name}: {value!r} is not a positive int")


def policy_map_specs(cap: PolicyCapacities) -> tuple[MapSpec, ...]:
    """What bpf/policy_maps.h creates for these capacities: the reference for pin checks."""
    lpm, nopre = MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC
    return (
        MapSpec(
            MAP_ENDPOINTS,
            "policy_endpoints",
            MAP_TYPE_HASH,
            ctypes.c_uint32,
            PolicyEndpoint,
            cap.endpoints,
            nopre,
        ),
        MapSpec(MAP_IPCACHE, "policy_ipcache", lpm, IpcacheKey, IpcacheValue, cap.ipcache, nopre),
        MapSpec(MAP_POLICY, "policy_rules", lpm, PolicyRuleKey, PolicyRuleValue, cap.rules, nopre),
        MapSpec(MAP_CT, "policy_ct", MAP_TYPE_LRU_HASH, CtKey, CtEntry, cap.ct, 0),
        MapSpec(
            MAP_POLICY_COUNTERS,
            "policy_counters",
            MAP_TYPE_PERCPU_ARRAY,
            ctypes.c_uint32,
            ctypes.c_uint64,
            len(POLICY_COUNTERS),
            0,
        ),
        MapSpec(
            MAP_EVENTS, "policy_events", MAP_TYPE_RINGBUF, _NoData, _NoData, cap.events_bytes, 0
        ),
    )


# --- codecs -------------------------------------------------------------------------------------


def _uint(map_name: str, entry: object, field: str, value: object, bits: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits:
        return int(value)
    raise EntryError(map_name, entry, field, f"{value!r} is not in 0..{(1 << bits) - 1}")


def ip_raw(value: str) -> int:
    """Dotted quad -> u32 whose in-memory bytes are network order."""
    return int.from_bytes(socket.inet_aton(value), "little")


def ip_str(raw: int) -> str:
    return socket.inet_ntoa(raw.to_bytes(4, "little"))


def encode_endpoint_key(key: EndpointKey) -> ctypes.c_uint32:
    return ctypes.c_uint32(_uint(MAP_ENDPOINTS, key, "ifindex", key.ifindex, 32))


def encode_endpoint(key: EndpointKey, value: EndpointValue) -> PolicyEndpoint:
    m = MAP_ENDPOINTS
    flags = value.flags
    if not isinstance(flags, int) or int(flags) & ~int(EndpointFlags(3)):
        raise EntryError(m, key, "flags", f"{flags!r} is not an EndpointFlags value")
    return PolicyEndpoint(
        endpoint_id=_uint(m, key, "endpoint_id", value.endpoint_id, 32),
        identity=_uint(m, key, "identity", value.identity, 32),
        flags=int(flags),
    )


def decode_endpoint(ifindex: int, raw: PolicyEndpoint) -> tuple[EndpointKey, EndpointValue]:
    return EndpointKey(ifindex), EndpointValue(
        raw.endpoint_id, raw.identity, EndpointFlags(raw.flags & 3)
    )


@functools.lru_cache(maxsize=65536)
def _network(cidr: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(cidr, strict=True)
    return ip_raw(str(net.network_address)), net.prefixlen


def encode_cidr(key: CidrKey) -> IpcacheKey:
    cidr = key.cidr
    if not isinstance(cidr, str) or "/" not in cidr:
        raise EntryError(MAP_IPCACHE, key, "cidr", f"{cidr!r} is not an IPv4 CIDR like 10.0.0.0/8")
    try:
        address, prefixlen = _network(cidr)
    except ValueError as exc:
        raise EntryError(MAP_IPCACHE, key, "cidr", f"{cidr!r}: {exc}") from None
    return IpcacheKey(prefixlen=prefixlen, address=address)


def decode_cidr(raw: IpcacheKey) -> CidrKey:
    return CidrKey(f"{ip_str(raw.address)}/{raw.prefixlen}")


def encode_identity(key: CidrKey, identity: int) -> IpcacheValue:
    return IpcacheValue(identity=_uint(MAP_IPCACHE, key, "identity", identity, 32))


def encode_policy_key(key: PolicyKey) -> PolicyRuleKey:
    m = MAP_POLICY
    direction = key.direction
    if not isinstance(direction, int) or direction not in (0, 1):
        raise EntryError(m, key, "direction", f"{direction!r} is not a Direction")
    proto = _uint(m, key, "proto", key.proto, 8)
    port = _uint(m, key, "port", key.port, 16)
    plen = _uint(m, key, "port_prefix_len", key.port_prefix_len, 5)
    if plen > 16:
        raise EntryError(m, key, "port_prefix_len", f"{plen} is not in 0..16")
    if port & ~(0xFFFF << (16 - plen)) & 0xFFFF:
        raise EntryError(m, key, "port", f"{port} has bits beyond its /{plen} prefix")
    if proto == ANY_PROTO and plen:
        raise EntryError(m, key, "port_prefix_len", "a port needs a protocol (proto is ANY)")
    return PolicyRuleKey(
        prefixlen=POLICY_FIXED_BITS + plen,
        endpoint_id=_uint(m, key, "endpoint_id", key.endpoint_id, 32),
        peer_identity=_uint(m, key, "peer_identity", key.peer_identity, 32),
        direction=int(direction),
        proto=proto,
        dport=socket.htons(port),
    )


def decode_policy_key(raw: PolicyRuleKey) -> PolicyKey:
    return PolicyKey(
        endpoint_id=raw.endpoint_id,
        direction=Direction(raw.direction & 1),
        proto=raw.proto,
        peer_identity=raw.peer_identity,
        port=socket.ntohs(raw.dport),
        port_prefix_len=raw.prefixlen - POLICY_FIXED_BITS,
    )
