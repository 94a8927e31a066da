"""The NetworkPolicy resolver: policies + identities + pods -> one node's PolicyState (pure).

Why this shape: enforcement in the kernel is a few hash/LPM lookups keyed by numbers, so all of
Kubernetes' NetworkPolicy semantics is decided here, once per change, as a pure function that is
table-tested against the Kubernetes documentation's examples. The worker feeds it bus state and
diffs the result into the maps (``policymap.PolicyMaps``); nothing here does I/O.

Semantics:

* A pod is *isolated* for a direction when any policy of its namespace selects it (``podSelector``
  over the pod's labels) and lists that direction in ``policyTypes``; the endpoint gets the
  ENFORCE bit and only the union of those policies' rules in that direction is allowed. Rules of a
  direction missing from ``policyTypes`` are ignored; a listed direction without rules denies all.
* A rule allows (peer, port) pairs: empty ``from``/``to`` = any peer (``ANY_IDENTITY``, world
  included); selector peers are identities (``policy_select``); ipBlock peers are node-local CIDR
  identities (``policy_cidr``). Empty ``ports`` = every protocol and port (``ANY_PROTO``); a port
  without number = every port of its protocol; ``endPort`` ranges become aligned port prefixes.
* Named ports: an *ingress* rule's name resolves against the enforced pod's own container ports;
  an *egress* rule's against each selected peer identity's pods (one entry per peer identity and
  number; pods sharing an identity may map the name to different numbers, each gets an entry). A
  name that resolves nowhere allows nothing.
* ipcache: every IPv4 policy prefix -> its CIDR identity, then every known pod IP /32 -> the pod's
  identity (pods win over an equal policy prefix).

Bad input (duplicate ifindex or endpoint id, malformed identity labels, unparsable or conflicting
pod IPs) is skipped and reported as :class:`PolicyIssue`; the rest still resolves. Determinism:
inputs are sorted before any first-wins decision, so the output never depends on input order
(with a fresh :class:`CidrAllocator`; a long-lived one keeps earlier numbers, by design).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from contracts.v1.networkpolicy import PolicyPeer, PolicyPort
from services.datapath.fakepolicymaps import policy_allows
from services.datapath.policy_cidr import CidrAllocator, block_identities, policy_prefixes
from services.datapath.policy_model import (
    PROTO_NUMBERS,
    ClusterPod,
    LocalEndpoint,
    PolicyIssue,
    PolicyRef,
    RuleRef,
)
from services.datapath.policy_select import IdentityView, parse_identity, select_identities
from services.datapath.policymap import (
    ANY_IDENTITY,
    ANY_PROTO,
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
    EndpointValue,
    PolicyKey,
    PolicyState,
    port_range_prefixes,
)

_FLAG = {"Ingress": EndpointFlags.ENFORCE_INGRESS, "Egress": EndpointFlags.ENFORCE_EGRESS}
_DIRECTION = {"Ingress": Direction.INGRESS, "Egress": Direction.EGRESS}


@dataclass(frozen=True, slots=True)
class Grant:
    """One allow entry and the rule it came from."""

    key: PolicyKey
    origin: RuleRef


class _Context:
    """What one resolution shares across endpoints: parsed identities, named ports per
    identity, CIDR identities, and peer selections cached per (policy, rule, peer)."""

    def __init__(
        self,
        identities: Mapping[int, Iterable[str]],
        pods: Iterable[ClusterPod],
        cidr_ids: Mapping[str, int],
        issues: list[PolicyIssue],
    ) -> None:
        self.views: list[IdentityView] = []
        for ident in sorted(identities):
            view, bad = parse_identity(ident, identities[ident])
            issues.extend(PolicyIssue(f"identity {ident}", "labels", msg) for msg in bad)
            self.views.append(view)
        self.named: dict[int, dict[tuple[str, str], set[int]]] = {}
        for pod in pods:
            for port in pod.ports:
                if port.name is not None:
                    by_name = self.named.setdefault(pod.identity, {})
                    by_name.setdefault((port.name, port.protocol), set()).add(port.port)
        self.cidr_ids = cidr_ids
        self._peers: dict[tuple[str, Direction, int, int], frozenset[int]] = {}

    def peer_identities(
        self, policy: PolicyRef, direction: Direction, rule: int, index: int, peer: PolicyPeer
    ) -> frozenset[int]:
        cache_key = (policy.ref, direction, rule, index)
        found = self._peers.get(cache_key)
        if found is None:
            if peer.ip_block is not None:
                found = block_identities(peer.ip_block, self.cidr_ids)
            else:
                found = select_identities(peer, policy.namespace, self.views)
            self._peers[cache_key] = found
        return found


def _numeric_ports(port: PolicyPort) -> list[tuple[int, int]]:
    if port.port is None:
        return [(0, 0)]
    assert isinstance(port.port, int)
    if port.end_port is None:
        return [(port.port, 16)]
    return port_range_prefixes(port.port, port.end_port)


def _rule_grants(
    ctx: _Context,
    policy: PolicyRef,
    direction: Direction,
    rule_index: int,
    peers: list[PolicyPeer],
    ports: list[PolicyPort],
    endpoint: LocalEndpoint,
) -> Iterator[Grant]:
    peer_sets: list[tuple[int | None, frozenset[int] | None]] = [(None, None)]
    if peers:
        peer_sets = [
            (i, ctx.peer_identities(policy, direction, rule_index, i, p))
            for i, p in enumerate(peers)
        ]
    port_specs: list[tuple[int | None, PolicyPort | None]] = [(None, None)]
    if ports:
        port_specs = list(enumerate(ports))
    eid = endpoint.endpoint_id
    for peer_index, idents in peer_sets:
        targets = sorted(idents) if idents is not None else [ANY_IDENTITY]
        for port_index, port in port_specs:
            origin = RuleRef(policy.ref, direction, rule_index, peer_index, port_index)
            if port is None:
                for ident in targets:
                    yield Grant(PolicyKey(eid, direction, ANY_PROTO, ident, 0, 0), origin)
                continue
            proto = PROTO_NUMBERS[port.protocol]
            if not isinstance(port.port, str):
                for ident in targets:
                    for number, plen in _numeric_ports(port):
                        yield Grant(PolicyKey(eid, direction, proto, ident, number, plen), origin)
                continue
            name = (port.port, port.protocol)
            if direction is Direction.INGRESS:
                numbers = {p.port for p in endpoint.ports if (p.name, p.protocol) == name}
                per_peer = [(ident, numbers) for ident in targets]
            else:
                candidates = sorted(ctx.named) if idents is None else targets
                per_peer = [(i, ctx.named.get(i, {}).get(name, set())) for i in candidates]
            for ident, found in per_peer:
                for number in sorted(found):
                    yield Grant(PolicyKey(eid, direction, proto, ident, number, 16), origin)


def _selecting(policies: list[PolicyRef], endpoint: LocalEndpoint) -> list[PolicyRef]:
    labels = dict(endpoint.labels)
    return [
        p
        for p in policies
        if p.namespace == endpoint.namespace and p.spec.pod_selector.matches(labels)
    ]


def _endpoint_grants(
    ctx: _Context, selecting: list[PolicyRef], endpoint: LocalEndpoint
) -> tuple[EndpointFlags, list[Grant]]:
    flags = EndpointFlags.NONE
    grants: list[Grant] = []
    for policy in selecting:
        spec = policy.spec
        for ptype in spec.policy_types:
            flags |= _FLAG[ptype]
            direction = _DIRECTION[ptype]
            if direction is Direction.INGRESS:
                for i, rule in enumerate(spec.ingress):
                    grants += _rule_grants(
                        ctx, policy, direction, i, rule.from_peers, rule.ports, endpoint
                    )
            else:
                for i, erule in enumerate(spec.egress):
                    grants += _rule_grants(
                        ctx, policy, direction, i, erule.to_peers, erule.ports, endpoint
                    )
    return flags, grants


def _unique_policies(policies: Iterable[PolicyRef], issues: list[PolicyIssue]) -> list[PolicyRef]:
    out: dict[str, PolicyRef] = {}
    for p in sorted(policies, key=lambda p: (p.namespace, p.name)):
        if p.ref in out:
            issues.append(PolicyIssue(f"networkpolicy {p.ref}", "metadata.name", "duplicate"))
        else:
            out[p.ref] = p
    return list(out.values())


def _unique_endpoints(
    endpoints: Iterable[LocalEndpoint], issues: list[PolicyIssue]
) -> list[LocalEndpoint]:
    seen_if: dict[int, str] = {}
    seen_id: dict[int, str] = {}
    out: list[LocalEndpoint] = []
    for ep in sorted(endpoints, key=lambda e: (e.ifindex, e.endpoint_id, e.namespace, e.name)):
        obj = f"pod {ep.ref}"
        if ep.ifindex in seen_if:
            msg = f"ifindex {ep.ifindex} is already used by pod {seen_if[ep.ifindex]}"
            issues.append(PolicyIssue(obj, "ifindex", msg))
        elif ep.endpoint_id in seen_id:
            msg = f"endpoint id {ep.endpoint_id} is already used by pod {seen_id[ep.endpoint_id]}"
            issues.append(PolicyIssue(obj, "endpoint_id", msg))
        else:
            seen_if[ep.ifindex] = seen_id[ep.endpoint_id] = ep.ref
            out.append(ep)
    return out


def _ipcache(
    pods: list[ClusterPod], cidr_ids: Mapping[str, int], issues: list[PolicyIssue]
) -> dict[CidrKey, int]:
    out = {CidrKey(prefix): ident for prefix, ident in cidr_ids.items()}
    owner: dict[str, ClusterPod] = {}
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name, p.identity)):
        for i, text in enumerate(pod.ips):
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                issues.append(PolicyIssue(f"pod {pod.ref}", f"ips[{i}]", f"{text!r} is no IP"))
                continue
            if addr.version != 4:
                continue
            first = owner.setdefault(str(addr), pod)
            if first is not pod and first.identity != pod.identity:
                msg = f"IP {addr} is also pod {first.ref}'s (identity {first.identity}); ignored"
                issues.append(PolicyIssue(f"pod {pod.ref}", f"ips[{i}]", msg))
                continue
            out[CidrKey(f"{addr}/32")] = pod.identity
    return out


def resolve(
    policies: Iterable[PolicyRef],
    local_endpoints: Iterable[LocalEndpoint],
    identities: Mapping[int, Iterable[str]],
    pods: Iterable[ClusterPod],
    cidr_alloc: CidrAllocator,
    issues: list[PolicyIssue] | None = None,
) -> PolicyState:
    """The desired policy state of one node (see the module docstring).

    ``identities`` maps every known identity to its ``source:key=value`` labels; ``pods`` are all
    pods of the cluster (the local endpoints' IPs are added to the ipcache too). Problems with the
    input are appended to ``issues`` when given."""
    found: list[PolicyIssue] = [] if issues is None else issues
    policy_list = _unique_policies(policies, found)
    endpoints = _unique_endpoints(local_endpoints, found)
    pod_list = list(pods)
    pod_list += [ClusterPod(e.namespace, e.name, e.identity, e.ips, e.ports) for e in endpoints]
    cidr_ids = cidr_alloc.assign(policy_prefixes(p.spec for p in policy_list))
    ctx = _Context(identities, pod_list, cidr_ids, found)
    state = PolicyState(ipcache=_ipcache(pod_list, cidr_ids, found))
    for ep in endpoints:
        flags, grants = _endpoint_grants(ctx, _selecting(policy_list, ep), ep)
        state.endpoints[EndpointKey(ep.ifindex)] = EndpointValue(ep.endpoint_id, ep.identity, flags)
        state.policy.update(g.key for g in grants)
    return state


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a flow to/from one endpoint is allowed or not (``weir`` debugging output)."""

    endpoint: str
    direction: Direction
    peer_identity: int
    proto: int
    port: int
    selected_by: tuple[str, ...]  # policies selecting the pod (any policyTypes)
    enforcing: tuple[str, ...]  # those listing this direction in policyTypes
    allowed: bool
    allowed_by: tuple[RuleRef, ...]  # rules with a matching entry (empty when default allow)

    def lines(self) -> list[str]:
        verdict = "ALLOWED" if self.allowed else "DENIED"
        head = (
            f"{self.endpoint} {self.direction.name} peer={self.peer_identity}"
            f" proto={self.proto} port={self.port}: {verdict}"
        )
        if not self.enforcing:
            return [head, "  not isolated in this direction (no policy enforces it)"]
        out = [head, f"  enforced by: {', '.join(self.enforcing)}"]
        out += [f"  allowed by {ref}" for ref in self.allowed_by] or ["  no rule matches"]
        return out


def explain(
    policies: Iterable[PolicyRef],
    endpoint: LocalEndpoint,
    identities: Mapping[int, Iterable[str]],
    pods: Iterable[ClusterPod],
    cidr_ids: Mapping[str, int],
    *,
    direction: Direction,
    peer_identity: int,
    proto: int,
    port: int,
) -> Explanation:
    """Which policies select ``endpoint`` and which of their rules allow the flow.

    ``cidr_ids`` is the allocator's current assignment (``CidrAllocator.assignments``), so CIDR
    identities mean what they mean in the realised maps."""
    issues: list[PolicyIssue] = []
    policy_list = _unique_policies(policies, issues)
    own = ClusterPod(
        endpoint.namespace, endpoint.name, endpoint.identity, endpoint.ips, endpoint.ports
    )
    pod_list = [*pods, own]
    ctx = _Context(identities, pod_list, cidr_ids, issues)
    selecting = _selecting(policy_list, endpoint)
    ptype = "Ingress" if direction is Direction.INGRESS else "Egress"
    enforcing = tuple(p.ref for p in selecting if ptype in p.spec.policy_types)
    _, grants = _endpoint_grants(ctx, selecting, endpoint)
    eid = endpoint.endpoint_id
    matched = [
        g.origin
        for g in grants
        if policy_allows({g.key}, eid, direction, peer_identity, proto, port)
    ]
    allowed_by = sorted(set(matched), key=str)
    return Explanation(
        endpoint=endpoint.ref,
        direction=direction,
        peer_identity=peer_identity,
        proto=proto,
        port=port,
        selected_by=tuple(p.ref for p in selecting),
        enforcing=enforcing,
        allowed=not enforcing or bool(matched),
        allowed_by=tuple(allowed_by),
    )
