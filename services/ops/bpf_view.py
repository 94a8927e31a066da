"""Decoded rows of one node's load-balancing maps, for ``weir bpf dump`` (pure).

Why rows and not :func:`services.datapath.render.render`: the canonical render is made for golden
diffs (one text line per entry); an operator also wants JSON with named fields to feed ``jq``,
and the maps the datapath writes itself (session affinity, socket reverse NAT, the connected
sockets' peer ring) that the LB layer never reads. Services, backends and reverse NAT come from
the LB layer's own decoded dump (:class:`LBMapState`), so this module adds no second decoder for
them; only the datapath-written maps are decoded here, from the ctypes mirrors in
:mod:`services.datapath.bpflayout`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from services.datapath.bpflayout import (
    Ipv4RevnatEntry,
    Ipv4RevnatTuple,
    Lb4AffinityKey,
    Lb4AffinityVal,
    Lb4SkPeer,
)
from services.datapath.frontend import PROTO_NAMES, Frontend
from services.datapath.lbmap import BackendState, LBMapState, ServiceFlags
from services.ops.output import Column


class MapName(StrEnum):
    FRONTENDS = "frontends"
    SERVICES = "services"
    BACKENDS = "backends"
    REVNAT = "revnat"
    AFFINITY = "affinity"
    SK_REVNAT = "sk_revnat"
    SK_PEER = "sk_peer"
    COUNTERS = "counters"
    SERVICE_RANGES = "service_ranges"
    # the policy program's maps (bpf/policy.c)
    ENDPOINTS = "endpoints"
    IPCACHE = "ipcache"
    POLICY = "policy"
    CT = "ct"
    POLICY_COUNTERS = "policy_counters"


POLICY_MAPS = frozenset(
    {MapName.ENDPOINTS, MapName.IPCACHE, MapName.POLICY, MapName.CT, MapName.POLICY_COUNTERS}
)


def flag_names(flags: int) -> list[str]:
    return [f.name for f in ServiceFlags if f and flags & f and f.name]


def _ip(raw: int) -> str:
    """A u32 whose in-memory bytes are network order (as the C structs hold it)."""
    return socket.inet_ntoa(raw.to_bytes(4, "little"))


def service_rows(state: LBMapState) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(state.services):
        v = state.services[key]
        row: dict[str, Any] = {
            "frontend": str(Frontend(key.vip, key.port, key.proto)),
            "vip": key.vip,
            "port": key.port,
            "proto": PROTO_NAMES.get(key.proto, str(key.proto)),
            "slot": key.slot,
            "rev_nat_id": v.rev_nat_id,
        }
        if key.slot == 0:
            row |= {
                "count": v.count,
                "flags": flag_names(v.flags),
                "affinity_timeout": v.affinity_timeout,
            }
        else:
            b = state.backends.get(v.backend_id)
            row |= {
                "backend_id": v.backend_id,
                "backend": f"{b.ip}:{b.port}" if b else None,
            }
        rows.append(row)
    return rows


def frontend_rows(state: LBMapState) -> list[dict[str, Any]]:
    """What connect() reads first: per frontend, its backends inline, or ``slots``."""
    rows = []
    for key in sorted(state.frontends):
        f = state.frontends[key]
        rows.append(
            {
                "frontend": str(Frontend(key.vip, key.port, key.proto)),
                "count": f.count,
                "rev_nat_id": f.rev_nat_id,
                "flags": flag_names(f.flags),
                "affinity_timeout": f.affinity_timeout,
                "inline": [
                    {"backend_id": b.backend_id, "backend": f"{b.ip}:{b.port}"} for b in f.inline
                ],
                "picks_from": " ".join(f"{b.ip}:{b.port}" for b in f.inline) or "slots",
            }
        )
    return rows


def backend_rows(state: LBMapState) -> list[dict[str, Any]]:
    return [
        {
            "id": ident,
            "address": f"{b.ip}:{b.port}",
            "proto": PROTO_NAMES.get(b.proto, str(b.proto)),
            "state": BackendState(b.state).name,
        }
        for ident, b in sorted(state.backends.items())
    ]


def revnat_rows(state: LBMapState) -> list[dict[str, Any]]:
    return [
        {"id": ident, "frontend": f"{r.vip}:{r.port}"} for ident, r in sorted(state.revnat.items())
    ]


def affinity_rows(items: Iterable[tuple[Lb4AffinityKey, Lb4AffinityVal]]) -> list[dict[str, Any]]:
    rows = [
        {
            "client_cookie": k.client_cookie,
            "rev_nat_id": k.rev_nat_id,
            "backend_id": v.backend_id,
            "slot": v.slot,
            "last_used_ns": v.last_used,
        }
        for k, v in items
    ]
    return sorted(rows, key=lambda r: (r["rev_nat_id"], r["client_cookie"]))


def sk_revnat_rows(
    items: Iterable[tuple[Ipv4RevnatTuple, Ipv4RevnatEntry]],
) -> list[dict[str, Any]]:
    rows = [
        {
            "socket_cookie": k.cookie,
            "backend": f"{_ip(k.address)}:{socket.ntohs(k.port)}",
            "frontend": f"{_ip(v.address)}:{socket.ntohs(v.port)}",
            "rev_nat_id": v.rev_nat_index,
        }
        for k, v in items
    ]
    return sorted(rows, key=lambda r: (r["socket_cookie"], r["backend"]))


def sk_peer_rows(slots: Iterable[tuple[int, Lb4SkPeer]]) -> list[dict[str, Any]]:
    """The connected sockets' peers: occupied ring slots only (cookie 0 is a free slot)."""
    rows = [
        {
            "slot": slot,
            "socket_cookie": p.cookie,
            "backend": f"{_ip(p.backend_address)}:{socket.ntohs(p.backend_port)}",
            "frontend": f"{_ip(p.address)}:{socket.ntohs(p.port)}",
            "rev_nat_id": p.rev_nat_index,
        }
        for slot, p in slots
        if p.cookie
    ]
    return sorted(rows, key=lambda r: r["slot"])


def counter_rows(counters: Mapping[str, int]) -> list[dict[str, Any]]:
    return [{"counter": name, "value": value} for name, value in counters.items()]


COLUMNS: dict[MapName, list[Column]] = {
    MapName.FRONTENDS: [
        Column("frontend", "FRONTEND"),
        Column("count", "COUNT", "right"),
        Column("rev_nat_id", "REVNAT", "right"),
        Column("flags", "FLAGS"),
        Column("affinity_timeout", "AFFINITY", "right"),
        Column("picks_from", "PICKS FROM"),
    ],
    MapName.SERVICES: [
        Column("frontend", "FRONTEND"),
        Column("slot", "SLOT", "right"),
        Column("count", "COUNT", "right"),
        Column("backend_id", "BACKEND ID", "right"),
        Column("backend", "BACKEND"),
        Column("rev_nat_id", "REVNAT", "right"),
        Column("flags", "FLAGS"),
        Column("affinity_timeout", "AFFINITY", "right"),
    ],
    MapName.BACKENDS: [
        Column("id", "ID", "right"),
        Column("address", "ADDRESS"),
        Column("proto", "PROTO"),
        Column("state", "STATE"),
    ],
    MapName.REVNAT: [Column("id", "ID", "right"), Column("frontend", "FRONTEND")],
    MapName.AFFINITY: [
        Column("client_cookie", "CLIENT NETNS COOKIE", "right"),
        Column("rev_nat_id", "REVNAT", "right"),
        Column("backend_id", "BACKEND ID", "right"),
        Column("slot", "SLOT", "right"),
        Column("last_used_ns", "LAST USED (ns)", "right"),
    ],
    MapName.SK_REVNAT: [
        Column("socket_cookie", "SOCKET COOKIE", "right"),
        Column("backend", "BACKEND"),
        Column("frontend", "SHOWN AS"),
        Column("rev_nat_id", "REVNAT", "right"),
    ],
    MapName.SK_PEER: [
        Column("slot", "SLOT", "right"),
        Column("socket_cookie", "SOCKET COOKIE", "right"),
        Column("backend", "BACKEND"),
        Column("frontend", "SHOWN AS"),
        Column("rev_nat_id", "REVNAT", "right"),
    ],
    MapName.COUNTERS: [Column("counter", "COUNTER"), Column("value", "VALUE", "right")],
    MapName.POLICY_COUNTERS: [Column("counter", "COUNTER"), Column("value", "VALUE", "right")],
}
