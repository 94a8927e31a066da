"""The real PolicyMaps: the pinned maps of bpf/policy.c, written with batched bpf(2) calls.

Why on pinned file descriptors (like ``bpfmaps.BpfLBMap``): the maps outlive every worker, so
the worker after a restart, and operator tools that never compile anything, open the same pins
and see the same state. Maps are opened and read through :class:`bpfmaps.PinnedMap`; writes go
through the ``bpfsys`` batch calls on ctypes arrays (one syscall per CHUNK entries, one per entry
where the kernel refuses batches), with E2BIG/ENOSPC as ``MapFullError`` naming the map and the
entry. Policy batches are small next to the LB's, so they do not need the LB's packed fast path.
Encoding errors surface as ``bpflayout.EntryError`` (a ValueError naming map, entry and field)
before anything of that batch is written.

Besides the PolicyMaps protocol this exposes what only the kernel has: the datapath counters
(summed over CPUs) and the conntrack table, for tests, ``weir status`` and debugging.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.datapath import bpfsys
from services.datapath.bpfmaps import PinnedMap, PinnedMaps, percpu_counters
from services.datapath.bpfmaps import percpu_sum as percpu_sum  # noqa: PLC0414 - re-export
from services.datapath.policylayout import (
    MAP_CT,
    MAP_ENDPOINTS,
    MAP_EVENTS,
    MAP_IPCACHE,
    MAP_POLICY,
    MAP_POLICY_COUNTERS,
    POLICY_COUNTERS,
    PolicyCapacities,
    PolicyRuleValue,
    decode_cidr,
    decode_endpoint,
    decode_policy_key,
    encode_cidr,
    encode_endpoint,
    encode_endpoint_key,
    encode_identity,
    encode_policy_key,
    ip_str,
    policy_map_specs,
)
from services.datapath.policymap import (
    CidrKey,
    Direction,
    EndpointKey,
    EndpointValue,
    PolicyKey,
    PolicyState,
)

_ALLOW = PolicyRuleValue(flags=0)


def write(m: PinnedMap, pairs: Sequence[tuple[Any, Any]], labels: Sequence[object]) -> None:
    """Write (ctypes key, ctypes value) pairs; ``labels`` name them in errors."""

    def batch(start: int, n: int) -> None:
        part = pairs[start : start + n]
        keys = (m.spec.key * n)(*(k for k, _ in part))
        values = (m.spec.value * n)(*(v for _, v in part))
        bpfsys.map_update_batch(m.fd, keys, values, n)

    m.update_in_chunks(
        len(pairs), labels, batch, lambda i: bpfsys.map_update(m.fd, pairs[i][0], pairs[i][1])
    )


def erase(m: PinnedMap, keys: Sequence[Any], labels: Sequence[object]) -> None:
    """Delete keys; absent keys are skipped (deleting what is absent is not an error)."""
    m.delete_skipping_absent(
        len(keys),
        labels,
        lambda pos, n: bpfsys.map_delete_batch(m.fd, (m.spec.key * n)(*keys[pos : pos + n]), n),
        lambda i: bpfsys.map_delete(m.fd, keys[i]),
    )


@dataclass(frozen=True, slots=True)
class CtFlow:
    """One conntrack entry: the flow as its first packet saw it, at one endpoint."""

    endpoint_id: int
    direction: Direction  # the endpoint's direction the flow was opened in
    saddr: str
    daddr: str
    sport: int  # for ICMP echo: the echo id on the requester's side
    dport: int
    proto: int
    created_ns: int  # CLOCK_MONOTONIC
    last_seen_ns: int
    packets_fwd: int
    packets_rev: int
    tcp_flags: int


class BpfPolicyMaps(PinnedMaps):
    """PolicyMaps on the pinned maps under ``pin_dir`` (the versioned directory, .../node/v1)."""

    def __init__(self, pin_dir: Path, capacities: PolicyCapacities | None = None) -> None:
        specs = policy_map_specs(capacities or PolicyCapacities())
        # the ring buffer belongs to flowevents
        super().__init__(pin_dir, (spec for spec in specs if spec.name != MAP_EVENTS))

    # --- PolicyMaps ----------------------------------------------------------------------------

    def update_endpoints(self, items: Mapping[EndpointKey, EndpointValue]) -> None:
        pairs = [(encode_endpoint_key(k), encode_endpoint(k, v)) for k, v in items.items()]
        write(self.maps[MAP_ENDPOINTS], pairs, list(items))

    def delete_endpoints(self, keys: Iterable[EndpointKey]) -> None:
        labels = list(keys)
        erase(self.maps[MAP_ENDPOINTS], [encode_endpoint_key(k) for k in labels], labels)

    def update_ipcache(self, items: Mapping[CidrKey, int]) -> None:
        pairs = [(encode_cidr(k), encode_identity(k, v)) for k, v in items.items()]
        write(self.maps[MAP_IPCACHE], pairs, list(items))

    def delete_ipcache(self, keys: Iterable[CidrKey]) -> None:
        labels = list(keys)
        erase(self.maps[MAP_IPCACHE], [encode_cidr(k) for k in labels], labels)

    def update_policy(self, keys: Iterable[PolicyKey]) -> None:
        labels = list(keys)
        pairs = [(encode_policy_key(k), _ALLOW) for k in labels]
        write(self.maps[MAP_POLICY], pairs, labels)

    def delete_policy(self, keys: Iterable[PolicyKey]) -> None:
        labels = list(keys)
        erase(self.maps[MAP_POLICY], [encode_policy_key(k) for k in labels], labels)

    def dump(self) -> PolicyState:
        state = PolicyState()
        for k, v in self.maps[MAP_ENDPOINTS].items():
            key, value = decode_endpoint(int(k), v)
            state.endpoints[key] = value
        for k, v in self.maps[MAP_IPCACHE].items():
            state.ipcache[decode_cidr(k)] = int(v.identity)
        for k, _v in self.maps[MAP_POLICY].items():
            state.policy.add(decode_policy_key(k))
        return state

    def fill(self) -> dict[str, tuple[int, int]]:
        """Per map: (entries, capacity); conntrack included, counters and events not."""
        return {
            name: (sum(1 for _ in m.views()), m.max_entries)
            for name, m in self.maps.items()
            if name != MAP_POLICY_COUNTERS
        }

    # --- kernel-only state ---------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The per-CPU counters of bpf/policy.c (enum policy_counter), summed over CPUs."""
        return percpu_counters(self.maps[MAP_POLICY_COUNTERS], POLICY_COUNTERS)

    def conntrack(self) -> list[CtFlow]:
        """Every conntrack entry (one pass; entries may expire or be evicted meanwhile)."""
        out = []
        for k, v in self.maps[MAP_CT].items():
            out.append(
                CtFlow(
                    endpoint_id=k.endpoint_id,
                    direction=Direction(k.direction & 1),
                    saddr=ip_str(k.saddr),
                    daddr=ip_str(k.daddr),
                    sport=socket.ntohs(k.sport),
                    dport=socket.ntohs(k.dport),
                    proto=k.proto,
                    created_ns=v.created,
                    last_seen_ns=v.last_seen,
                    packets_fwd=v.packets_fwd,
                    packets_rev=v.packets_rev,
                    tcp_flags=v.tcp_flags,
                )
            )
        return sorted(out, key=lambda f: (f.endpoint_id, f.saddr, f.daddr, f.sport, f.dport))

    def flush_conntrack(self) -> int:
        """Delete every conntrack entry (tests, and an operator's "forget flows"); returns how
        many there were."""
        ct = self.maps[MAP_CT]
        keys = [k for k, _ in ct.items()]
        erase(ct, keys, keys)
        return len(keys)
