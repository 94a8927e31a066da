"""ipBlock peers as node-local CIDR identities (pure).

Why this shape: the policy map is keyed by peer *identity*, so an ipBlock has to become
identities too. As in Cilium, every distinct IPv4 prefix named by any policy (``ipBlock.cidr`` and
every ``except`` entry) gets a node-local identity (``>= CIDR_IDENTITY_BASE``, never published on
the bus) and an ipcache entry ``prefix -> identity``. The datapath's longest-prefix match then
gives an address the identity of the most specific policy prefix containing it, and an ipBlock
``(C, except E*)`` selects the identities of every known prefix ``P`` with ``P ⊆ C`` and ``P ⊄ E``
for all ``E`` — Cilium's CIDR label hierarchy. That is exact: an address inside ``C`` and outside
every ``E`` matches a prefix inside ``C`` that no ``E`` contains (``C`` itself is in the ipcache);
an address inside some ``E`` matches a prefix inside that ``E``; an address outside ``C`` matches
a prefix that is not inside ``C``.

``0.0.0.0/0`` is not allocated: it *is* ``WORLD`` (the identity of an address no ipcache entry
covers), so an ipBlock with cidr ``0.0.0.0/0`` selects ``WORLD`` plus every prefix outside its
excepts. ipBlock never selects pods: pod IPs are ``/32`` ipcache entries with the pod's identity
and win the longest-prefix match (a ``/32`` policy prefix equal to a pod IP is shadowed by the
pod), as in Cilium; use selectors for pods. IPv6 prefixes are ignored: the datapath is IPv4.

:class:`CidrAllocator` keeps assignments across resolutions so an unrelated policy change never
renumbers existing prefixes (no map churn, no window in which the ipcache and the policy map
disagree). New prefixes are numbered in sorted order from the lowest free number, so a fresh
allocator given the same prefixes always produces the same numbers. A released number is reused
only from the resolution after the one that released it, for the same reason; ``restore`` seeds
the allocator from the realised ipcache after a restart.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Final

from contracts.v1.networkpolicy import IPBlock, NetworkPolicy
from services.datapath.policymap import CIDR_IDENTITY_BASE, WORLD_IDENTITY

CIDR_IDENTITY_COUNT: Final = 1 << 24

Net = ipaddress.IPv4Network


class CidrExhaustedError(RuntimeError):
    """More distinct policy prefixes than node-local CIDR identities."""


@functools.lru_cache(maxsize=65536)
def _v4(text: str) -> Net | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return net if isinstance(net, Net) else None


def _sort_key(text: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(text)
    return int(net.network_address), net.prefixlen


def policy_prefixes(policies: Iterable[NetworkPolicy]) -> set[str]:
    """Every IPv4 prefix (but ``/0``) named in an ipBlock of these policies, canonical text."""
    out: set[str] = set()
    for policy in policies:
        rules = [r.from_peers for r in policy.ingress] + [r.to_peers for r in policy.egress]
        for peers in rules:
            for peer in peers:
                if peer.ip_block is None:
                    continue
                for text in (peer.ip_block.cidr, *peer.ip_block.except_cidrs):
                    net = _v4(text)
                    if net is not None and net.prefixlen > 0:
                        out.add(str(net))
    return out


class CidrAllocator:
    """Stable prefix -> node-local identity assignments (see the module docstring)."""

    def __init__(self, base: int = CIDR_IDENTITY_BASE, count: int = CIDR_IDENTITY_COUNT) -> None:
        self._base = base
        self._count = count
        self._ids: dict[str, int] = {}
        self._next = base
        self._free: set[int] = set()
        self._cooling: set[int] = set()

    @property
    def assignments(self) -> Mapping[str, int]:
        return dict(self._ids)

    def restore(self, ipcache: Mapping[str, int]) -> None:
        """Adopt the CIDR identities of a realised ipcache (entries outside the local range,
        i.e. pods, are ignored). Call before the first :meth:`assign`."""
        taken = set(self._ids.values())
        for prefix, ident in sorted(ipcache.items()):
            net = _v4(prefix)
            if (
                net is not None
                and ident not in taken
                and self._base <= ident < self._base + self._count
            ):
                self._ids[str(net)] = ident
                taken.add(ident)
        self._next = max([self._base - 1, *self._ids.values()]) + 1

    def assign(self, prefixes: Iterable[str]) -> dict[str, int]:
        """Assignments for exactly ``prefixes`` (canonical IPv4 text); keeps existing ones."""
        wanted = set(prefixes)
        self._free |= self._cooling
        self._cooling = {self._ids.pop(p) for p in list(self._ids) if p not in wanted}
        for prefix in sorted(wanted - self._ids.keys(), key=_sort_key):
            if self._free:
                ident = min(self._free)
                self._free.discard(ident)
            elif self._next < self._base + self._count:
                ident = self._next
                self._next += 1
            else:
                raise CidrExhaustedError(
                    f"ipBlock prefix {prefix}: all {self._count} node-local CIDR identities in use"
                )
            self._ids[prefix] = ident
        return dict(self._ids)


def block_identities(block: IPBlock, cidr_ids: Mapping[str, int]) -> frozenset[int]:
    """Identities an ipBlock peer selects, given every prefix's identity."""
    outer = _v4(block.cidr)
    if outer is None:
        return frozenset()
    excepts = [n for n in (_v4(e) for e in block.except_cidrs) if n is not None]
    out: set[int] = set()
    if outer.prefixlen == 0:
        out.add(WORLD_IDENTITY)
    for prefix, ident in cidr_ids.items():
        net = _v4(prefix)
        if net is None or not net.subnet_of(outer):
            continue
        if not any(net.subnet_of(e) for e in excepts):
            out.add(ident)
    return frozenset(out)
