"""Decoded rows of one node's policy maps (and the service ranges) for ``weir bpf dump`` (pure).

Why a module beside :mod:`services.ops.bpf_view`: the policy maps have their own decoded types
(:class:`PolicyState` from the policy layer's dump, :class:`CtFlow` from its conntrack reader),
so this module only turns those into rows an operator reads: protocol and direction names, "any"
for the wildcard identity and protocol, a port prefix shown as the range it covers. No second
decoder: the policy layer's codecs already produced the values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from services.datapath.frontend import PROTO_NAMES
from services.datapath.policybpf import CtFlow
from services.datapath.policymap import (
    ANY_IDENTITY,
    ANY_PROTO,
    Direction,
    EndpointFlags,
    PolicyKey,
    PolicyState,
)
from services.ops.output import Column

TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


def proto_name(proto: int) -> str:
    return "any" if proto == ANY_PROTO else PROTO_NAMES.get(proto, str(proto))


def port_text(port: int, prefix_len: int) -> str:
    """A port prefix as operators write it: ``any``, ``80``, or the range ``1024-2047``."""
    if prefix_len == 0:
        return "any"
    if prefix_len >= 16:
        return str(port)
    return f"{port}-{port + (1 << (16 - prefix_len)) - 1}"


def endpoint_rows(state: PolicyState) -> list[dict[str, Any]]:
    return [
        {
            "ifindex": key.ifindex,
            "endpoint_id": v.endpoint_id,
            "identity": v.identity,
            "flags": [f.name for f in EndpointFlags if f and v.flags & f and f.name],
        }
        for key, v in sorted(state.endpoints.items())
    ]


def ipcache_rows(state: PolicyState) -> list[dict[str, Any]]:
    order = sorted(state.ipcache, key=lambda k: ipaddress.ip_network(k.cidr))
    return [{"cidr": k.cidr, "identity": state.ipcache[k]} for k in order]


def _rule_row(k: PolicyKey) -> dict[str, Any]:
    return {
        "endpoint_id": k.endpoint_id,
        "direction": Direction(k.direction).name,
        "peer_identity": "any" if k.peer_identity == ANY_IDENTITY else k.peer_identity,
        "proto": proto_name(k.proto),
        "port": port_text(k.port, k.port_prefix_len),
        "port_prefix_len": k.port_prefix_len,
    }


def policy_rows(state: PolicyState) -> list[dict[str, Any]]:
    return [_rule_row(k) for k in sorted(state.policy)]


def tcp_flag_names(flags: int) -> list[str]:
    return [name for bit, name in enumerate(TCP_FLAGS) if flags & (1 << bit)]


def ct_rows(flows: Iterable[CtFlow]) -> list[dict[str, Any]]:
    return [
        {
            "endpoint_id": f.endpoint_id,
            "direction": f.direction.name,
            "proto": proto_name(f.proto),
            "source": f"{f.saddr}:{f.sport}",
            "destination": f"{f.daddr}:{f.dport}",
            "packets_fwd": f.packets_fwd,
            "packets_rev": f.packets_rev,
            "tcp_flags": tcp_flag_names(f.tcp_flags),
            "created_ns": f.created_ns,
            "last_seen_ns": f.last_seen_ns,
        }
        for f in flows
    ]


def ct_cells(row: dict[str, Any]) -> dict[str, Any]:
    """A conntrack row in the table's compact cells (fits 80 columns with full addresses)."""
    return {
        **row,
        "dir": "in" if row["direction"] == Direction.INGRESS.name else "out",
        "packets": f"{row['packets_fwd']}/{row['packets_rev']}",
        "flags": ",".join(row["tcp_flags"]),
    }


def range_rows(ranges: Iterable[ipaddress.IPv4Network]) -> list[dict[str, Any]]:
    return [{"cidr": str(net), "addresses": net.num_addresses} for net in sorted(ranges)]


COLUMNS: dict[str, list[Column]] = {
    "endpoints": [
        Column("ifindex", "IFINDEX", "right"),
        Column("endpoint_id", "ENDPOINT", "right"),
        Column("identity", "IDENTITY", "right"),
        Column("flags", "FLAGS"),
    ],
    "ipcache": [Column("cidr", "CIDR"), Column("identity", "IDENTITY", "right")],
    "policy": [
        Column("endpoint_id", "ENDPOINT", "right"),
        Column("direction", "DIRECTION"),
        Column("peer_identity", "PEER", "right"),
        Column("proto", "PROTO"),
        Column("port", "PORT", "right"),
    ],
    "ct": [
        Column("endpoint_id", "EP", "right"),
        Column("dir", "DIR"),
        Column("proto", "PROTO"),
        Column("source", "SOURCE"),
        Column("destination", "DESTINATION"),
        Column("packets", "PKTS", "right"),  # forward/reply
        Column("flags", "FLAGS"),
    ],
    "service_ranges": [Column("cidr", "CIDR"), Column("addresses", "ADDRESSES", "right")],
}
