"""The policy loop's pure half: bus state in, resolver inputs and an ordered write plan out.

Why this shape: the worker's policy loop (``policyworker``) is mostly I/O — bus consumers, route
lookups in the node's netns, tc attachment, map writes — around three decisions that must be
right and are easy to get subtly wrong, so they live here without I/O and are table-tested:

* :class:`PolicyInputs` keeps the latest bus objects (pods, NetworkPolicies, EndpointSlices,
  identities, ipcache entries) keyed like their subjects, and derives the resolver's inputs: the
  node's endpoints (pods with ``nodeName`` = this node, an IPv4 address, an ipcache identity and
  a host-side interface) and every pod of the cluster with its identity (from the ipcache, which
  is the allocator's word on which identity an address has right now).
* :class:`SliceDirectory` is the one EndpointSlice index of a datapath process: the LB loop
  decodes every slice anyway and feeds its views here, so the policy loop (which needs slices
  only to name a flow's Service) neither consumes nor decodes them a second time.
* :class:`EndpointIds` keeps a pod's endpoint id stable for its lifetime on the node and across
  worker restarts (restored from the pinned endpoints map by interface), and never hands out an
  id that is still in the realised map or was released in the same round: policy keys carry the
  id, so a reused id must not inherit a departed pod's rules even for one write.
* :func:`plan_writes` orders the diff so the datapath never denies what both the old and the new
  state allow: allow entries and ipcache upserts first, then endpoint flags (ENFORCE is set only
  once its allow entries exist, and cleared before entries go), then deletions of endpoints,
  entries and ipcache prefixes. :func:`apply_plan` keeps the in-memory mirror equal to what was
  written, step by step, so a failed step leaves an accurate mirror.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from contracts.v1 import EndpointSlice, Identity, IPCacheEntry, K8sEvent, NetworkPolicy, Op, Pod
from services.datapath.model import Change, SliceView
from services.datapath.policy_model import ClusterPod, LocalEndpoint, PolicyRef, container_ports
from services.datapath.policymap import (
    CidrKey,
    EndpointKey,
    EndpointValue,
    PolicyKey,
    PolicyMaps,
    PolicyState,
)

MAX_ENDPOINT_ID = 0xFFFF

Ref = tuple[str, str]  # (namespace, name)


class SliceIndex(NamedTuple):
    """What naming a flow's Service needs of one EndpointSlice (the loop keeps these, not the
    contract objects: at 100,000 endpoints those cost ~170 MB). Like the LB datapath, only an
    endpoint's first address counts."""

    service_name: str | None
    ports: frozenset[tuple[int | None, str]]  # (port, protocol)
    addresses: frozenset[str]

    @classmethod
    def of(cls, es: EndpointSlice) -> SliceIndex:
        return cls(
            es.service_name,
            frozenset((p.port, p.protocol) for p in es.ports),
            frozenset(ep.addresses[0] for ep in es.endpoints),
        )

    @classmethod
    def of_view(cls, view: SliceView, service_name: str | None) -> SliceIndex:
        """The same index from the datapath's decoded view (see services.datapath.decode)."""
        return cls(
            service_name,
            frozenset((port, proto) for _name, proto, port in view.ports),
            frozenset(ep.ip for ep in view.endpoints),
        )


def _ipv4(ips: list[str]) -> str | None:
    for text in ips:
        try:
            if ipaddress.ip_address(text).version == 4:
                return text
        except ValueError:
            continue
    return None


@dataclass(frozen=True, slots=True)
class LocalPod:
    """A pod of this node that could be an endpoint once its interface is known."""

    namespace: str
    name: str
    ip: str
    identity: int
    pod: Pod

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class PolicyInputs:
    """The latest bus state the policy loop needs (see the module docstring)."""

    pods: dict[Ref, Pod] = field(default_factory=dict)
    policies: dict[Ref, NetworkPolicy] = field(default_factory=dict)
    slices: dict[Ref, SliceIndex] = field(default_factory=dict)
    identities: dict[int, tuple[str, ...]] = field(default_factory=dict)
    ipcache: dict[str, IPCacheEntry] = field(default_factory=dict)

    def absorb_k8s(self, event: K8sEvent) -> bool:
        """Apply one K8sEvent; False when its kind is not one the policy loop keeps."""
        ref = (event.namespace or "", event.name)
        obj = event.object if event.op is Op.UPSERT else None
        table: dict[Ref, Pod] | dict[Ref, NetworkPolicy]
        if event.kind == "pod":
            table = self.pods
        elif event.kind == "networkpolicy":
            table = self.policies
        elif event.kind == "endpointslice":
            self.absorb_slice(ref, SliceIndex.of(obj) if isinstance(obj, EndpointSlice) else None)
            return True
        else:
            return False
        if obj is None:
            table.pop(ref, None)
        else:
            table[ref] = obj  # type: ignore[assignment]  # kind checked by K8sEvent
        return True

    def absorb_slice(self, ref: Ref, index: SliceIndex | None) -> None:
        """An EndpointSlice upsert (its index) or delete (None)."""
        if index is None:
            self.slices.pop(ref, None)
        else:
            self.slices[ref] = index

    def absorb_identity(self, identity: Identity) -> None:
        if identity.op is Op.DELETE:
            self.identities.pop(identity.id, None)
        else:
            self.identities[identity.id] = tuple(identity.labels)

    def absorb_ipcache(self, entry: IPCacheEntry) -> None:
        if entry.op is Op.DELETE or entry.identity is None:
            self.ipcache.pop(entry.ip, None)
        else:
            self.ipcache[entry.ip] = entry

    def policy_refs(self) -> list[PolicyRef]:
        return [PolicyRef(ns, name, spec) for (ns, name), spec in sorted(self.policies.items())]

    def local_pods(self, node: str) -> list[LocalPod]:
        """Pods scheduled here with an IPv4 address whose ipcache entry names them."""
        out = []
        for (ns, name), pod in sorted(self.pods.items()):
            if pod.node_name != node or pod.host_network:
                continue
            ip = _ipv4(pod.ips)
            entry = self.ipcache.get(ip) if ip else None
            if ip is None or entry is None or entry.identity is None:
                continue
            if entry.pod_name is not None and (entry.namespace, entry.pod_name) != (ns, name):
                continue  # the address belongs to another pod now (a stale pod object)
            out.append(LocalPod(ns, name, ip, entry.identity, pod))
        return out

    def cluster_pods(self) -> list[ClusterPod]:
        """Every address the allocator gave an identity, with the pod's named ports if known."""
        out = []
        for ip, entry in sorted(self.ipcache.items()):
            assert entry.identity is not None
            ns, name = entry.namespace or "", entry.pod_name or ip
            pod = self.pods.get((ns, name))
            ports = container_ports(pod) if pod is not None else ()
            out.append(ClusterPod(ns, name, entry.identity, (ip,), ports))
        return out

    def service_of(self, ip: str, port: int, protocol: str) -> Ref | None:
        """The Service whose EndpointSlice lists ``ip`` with ``port``/``protocol``."""
        for (ns, _slice), eps in self.slices.items():
            if eps.service_name is None:
                continue
            if (port, protocol) in eps.ports and ip in eps.addresses:
                return ns, eps.service_name
        return None


class SliceDirectory:
    """EndpointSlices as the LB loop absorbed them, for naming a flow's Service.

    Keeps the LB loop's own immutable views (no copy, no second decode); an upsert replaces the
    slice's entry, a delete removes it. Only an endpoint's first address counts, as in
    :class:`SliceIndex` and the LB datapath."""

    def __init__(self) -> None:
        self._slices: dict[Ref, tuple[str, SliceView]] = {}

    def __len__(self) -> int:
        return len(self._slices)

    def absorb(self, change: Change) -> None:
        """One decoded EndpointSlice change (other kinds are ignored)."""
        if change.kind != "endpointslice":
            return
        ref = (change.namespace, change.name)
        if change.op is Op.UPSERT and isinstance(change.obj, SliceView) and change.owner:
            self._slices[ref] = (change.owner, change.obj)
        else:  # a delete (may carry the last object), or a slice no Service owns
            self._slices.pop(ref, None)

    def service_of(self, ip: str, port: int, protocol: str) -> Ref | None:
        """The Service whose EndpointSlice lists ``ip`` with ``port``/``protocol``."""
        for (ns, _slice), (owner, view) in self._slices.items():
            if any(p == port and proto == protocol for _n, proto, p in view.ports) and any(
                ep.ip == ip for ep in view.endpoints
            ):
                return ns, owner
        return None


def local_endpoints(
    pods: list[LocalPod], ifindexes: Mapping[str, int], ids: Mapping[str, int]
) -> list[LocalEndpoint]:
    """The resolver's endpoints: local pods whose interface and id (both by pod ref) are known."""
    out = []
    for p in pods:
        ifindex = ifindexes.get(p.ref)
        eid = ids.get(p.ref)
        if ifindex is None or eid is None:
            continue
        out.append(
            LocalEndpoint(
                p.namespace,
                p.name,
                ifindex,
                eid,
                p.identity,
                dict(p.pod.labels),
                container_ports(p.pod),
                (p.ip,),
            )
        )
    return out


class EndpointIdsExhaustedError(RuntimeError):
    """More endpoints on one node than endpoint ids."""


class EndpointIds:
    """Stable pod -> endpoint id assignments (see the module docstring)."""

    def __init__(self, max_id: int = MAX_ENDPOINT_ID) -> None:
        self._max = max_id
        self._ids: dict[str, int] = {}
        self._by_ifindex: dict[int, int] = {}  # restored: interface -> id it had
        self._cooling: set[int] = set()

    @property
    def assignments(self) -> dict[str, int]:
        return dict(self._ids)

    def restore(self, endpoints: Mapping[EndpointKey, EndpointValue]) -> None:
        """Remember which id each interface had in the pinned map (call before ``assign``)."""
        self._by_ifindex = {k.ifindex: v.endpoint_id for k, v in endpoints.items()}

    def assign(self, wanted: Mapping[str, int], avoid: set[int]) -> dict[str, int]:
        """Ids for exactly the pods in ``wanted`` (pod ref -> ifindex); ``avoid``: ids still in
        the realised endpoints map that no wanted pod keeps."""
        released = {self._ids.pop(r) for r in list(self._ids) if r not in wanted}
        cooling, self._cooling = self._cooling, released
        in_use = set(self._ids.values())
        blocked = in_use | cooling | released | avoid
        for ref in sorted(wanted.keys() - self._ids.keys()):
            hinted = self._by_ifindex.get(wanted[ref])
            if hinted is not None and hinted not in in_use:
                ident = hinted
            else:
                ident = next((i for i in range(1, self._max + 1) if i not in blocked), 0)
                if not ident:
                    raise EndpointIdsExhaustedError(
                        f"pod {ref}: all {self._max} endpoint ids of this node are in use"
                    )
            self._ids[ref] = ident
            in_use.add(ident)
            blocked.add(ident)
        return dict(self._ids)


@dataclass(slots=True)
class WritePlan:
    """One diff, in the order :func:`apply_plan` writes it."""

    policy_add: set[PolicyKey] = field(default_factory=set)
    ipcache_put: dict[CidrKey, int] = field(default_factory=dict)
    endpoints_put: dict[EndpointKey, EndpointValue] = field(default_factory=dict)
    endpoints_del: set[EndpointKey] = field(default_factory=set)
    policy_del: set[PolicyKey] = field(default_factory=set)
    ipcache_del: set[CidrKey] = field(default_factory=set)

    def writes(self) -> int:
        return sum(
            len(x)
            for x in (
                self.policy_add,
                self.ipcache_put,
                self.endpoints_put,
                self.endpoints_del,
                self.policy_del,
                self.ipcache_del,
            )
        )


def plan_writes(realised: PolicyState, desired: PolicyState) -> WritePlan:
    return WritePlan(
        policy_add=desired.policy - realised.policy,
        ipcache_put={k: v for k, v in desired.ipcache.items() if realised.ipcache.get(k) != v},
        endpoints_put={
            k: v for k, v in desired.endpoints.items() if realised.endpoints.get(k) != v
        },
        endpoints_del=realised.endpoints.keys() - desired.endpoints.keys(),
        policy_del=realised.policy - desired.policy,
        ipcache_del=realised.ipcache.keys() - desired.ipcache.keys(),
    )


def apply_plan(maps: PolicyMaps, plan: WritePlan, mirror: PolicyState) -> None:
    """Write ``plan`` in order, updating ``mirror`` after each step; a map error propagates
    (the steps before it are written and mirrored)."""
    if plan.policy_add:
        maps.update_policy(sorted(plan.policy_add))
        mirror.policy |= plan.policy_add
    if plan.ipcache_put:
        maps.update_ipcache(plan.ipcache_put)
        mirror.ipcache.update(plan.ipcache_put)
    if plan.endpoints_put:
        maps.update_endpoints(plan.endpoints_put)
        mirror.endpoints.update(plan.endpoints_put)
    if plan.endpoints_del:
        maps.delete_endpoints(sorted(plan.endpoints_del))
        for k in plan.endpoints_del:
            mirror.endpoints.pop(k, None)
    if plan.policy_del:
        maps.delete_policy(sorted(plan.policy_del))
        mirror.policy -= plan.policy_del
    if plan.ipcache_del:
        maps.delete_ipcache(sorted(plan.ipcache_del))
        for c in plan.ipcache_del:
            mirror.ipcache.pop(c, None)
