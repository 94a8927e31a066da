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
from services.datapath.policy_cidr import CidrAllocator, block_identities, policy_prefixes
from services.datapath.policy_model import (
    PROTO_NUMBERS,
    ClusterPod,
    LocalEndpoint,
    NamedPort,
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


# One allow entry of a rule without the endpoint id: (direction, proto, peer, port, prefix len).
Entry = tuple[Direction, int, int, int, int]


@dataclass(frozen=True, slots=True)
class RuleEntries:
    """The allow entries one rule yields for an endpoint, and which part of the rule yields each."""

    entries: frozenset[Entry]
    origins: tuple[tuple[Entry, RuleRef], ...]


class Context:
    """What one resolution shares across endpoints: parsed identities, named ports per
    identity, CIDR identities, peer selections per (policy, rule, peer) and rule entries per
    (policy, rule) — plus the endpoint's named ports when an ingress rule uses names."""

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
        self.by_namespace: dict[str | None, list[IdentityView]] = {}
        for view in self.views:
            self.by_namespace.setdefault(view.namespace, []).append(view)
        self.named: dict[int, dict[tuple[str, str], set[int]]] = {}
        for pod in pods:
            for port in pod.ports:
                if port.name is not None:
                    by_name = self.named.setdefault(pod.identity, {})
                    by_name.setdefault((port.name, port.protocol), set()).add(port.port)
        self.cidr_ids = cidr_ids
        self._peers: dict[tuple[str, Direction, int, int], frozenset[int]] = {}
        self._rules: dict[tuple[str, Direction, int, tuple[NamedPort, ...]], RuleEntries] = {}

    def peer_identities(
        self, policy: PolicyRef, direction: Direction, rule: int, index: int, peer: PolicyPeer
    ) -> frozenset[int]:
        cache_key = (policy.ref, direction, rule, index)
        found = self._peers.get(cache_key)
        if found is None:
            if peer.ip_block is not None:
                found = block_identities(peer.ip_block, self.cidr_ids)
            else:  # a podSelector-only peer can only select pods of the policy's namespace
                views = self.views
                if peer.namespace_selector is None:
                    views = self.by_namespace.get(policy.namespace, [])
                found = select_identities(peer, policy.namespace, views)
            self._peers[cache_key] = found
        return found

    def rule(
        self,
        policy: PolicyRef,
        direction: Direction,
        index: int,
        peers: list[PolicyPeer],
        ports: list[PolicyPort],
        endpoint: LocalEndpoint,
    ) -> RuleEntries:
        named_here = direction is Direction.INGRESS and any(isinstance(p.port, str) for p in ports)
        own = endpoint.ports if named_here else ()
        cache_key = (policy.ref, direction, index, own)
        found = self._rules.get(cache_key)
        if found is None:
            origins = tuple(_rule_entries(self, policy, direction, index, peers, ports, own))
            found = RuleEntries(frozenset(e for e, _ in origins), origins)
            self._rules[cache_key] = found
        return found


def _numeric_ports(port: PolicyPort) -> list[tuple[int, int]]:
    if port.port is None:
        return [(0, 0)]
    assert isinstance(port.port, int)
    if port.end_port is None:
        return [(port.port, 16)]
    return port_range_prefixes(port.port, port.end_port)


def _rule_entries(
    ctx: Context,
    policy: PolicyRef,
    direction: Direction,
    rule_index: int,
    peers: list[PolicyPeer],
    ports: list[PolicyPort],
    own_ports: tuple[NamedPort, ...],
) -> Iterator[tuple[Entry, RuleRef]]:
    peer_sets: list[tuple[int | None, frozenset[int] | None]] = [(None, None)]
    if peers:
        peer_sets = [
            (i, ctx.peer_identities(policy, direction, rule_index, i, p))
            for i, p in enumerate(peers)
        ]
    port_specs: list[tuple[int | None, PolicyPort | None]] = [(None, None)]
    if ports:
        port_specs = list(enumerate(ports))
    for peer_index, idents in peer_sets:
        targets = sorted(idents) if idents is not None else [ANY_IDENTITY]
        for port_index, port in port_specs:
            origin = RuleRef(policy.ref, direction, rule_index, peer_index, port_index)
            if port is None:
                for ident in targets:
                    yield (direction, ANY_PROTO, ident, 0, 0), origin
                continue
            proto = PROTO_NUMBERS[port.protocol]
            if not isinstance(port.port, str):
                numeric = _numeric_ports(port)
                for ident in targets:
                    for number, plen in numeric:
                        yield (direction, proto, ident, number, plen), origin
                continue
            name = (port.port, port.protocol)
            if direction is Direction.INGRESS:
                numbers = {p.port for p in own_ports if (p.name, p.protocol) == name}
                per_peer = [(ident, numbers) for ident in targets]
            else:
                candidates = sorted(ctx.named) if idents is None else targets
                per_peer = [(i, ctx.named.get(i, {}).get(name, set())) for i in candidates]
            for ident, found in per_peer:
                for number in sorted(found):
                    yield (direction, proto, ident, number, 16), origin


def selecting_policies(policies: list[PolicyRef], endpoint: LocalEndpoint) -> list[PolicyRef]:
    labels = dict(endpoint.labels)
    return [
        p
        for p in policies
        if p.namespace == endpoint.namespace and p.spec.pod_selector.matches(labels)
    ]


def endpoint_rules(
    ctx: Context, selecting: list[PolicyRef], endpoint: LocalEndpoint
) -> tuple[EndpointFlags, list[RuleEntries]]:
    flags = EndpointFlags.NONE
    rules: list[RuleEntries] = []
    for policy in selecting:
        spec = policy.spec
        for ptype in spec.policy_types:
            flags |= _FLAG[ptype]
            direction = _DIRECTION[ptype]
            if direction is Direction.INGRESS:
                for i, rule in enumerate(spec.ingress):
                    rules.append(
                        ctx.rule(policy, direction, i, rule.from_peers, rule.ports, endpoint)
                    )
            else:
                for i, erule in enumerate(spec.egress):
                    rules.append(
                        ctx.rule(policy, direction, i, erule.to_peers, erule.ports, endpoint)
                    )
    return flags, rules


def unique_policies(policies: Iterable[PolicyRef], issues: list[PolicyIssue]) -> list[PolicyRef]:
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
    policy_list = unique_policies(policies, found)
    endpoints = _unique_endpoints(local_endpoints, found)
    pod_list = list(pods)
    pod_list += [ClusterPod(e.namespace, e.name, e.identity, e.ips, e.ports) for e in endpoints]
    cidr_ids = cidr_alloc.assign(policy_prefixes(p.spec for p in policy_list))
    ctx = Context(identities, pod_list, cidr_ids, found)
    state = PolicyState(ipcache=_ipcache(pod_list, cidr_ids, found))
    for ep in endpoints:
        flags, rules = endpoint_rules(ctx, selecting_policies(policy_list, ep), ep)
        eid = ep.endpoint_id
        state.endpoints[EndpointKey(ep.ifindex)] = EndpointValue(eid, ep.identity, flags)
        entries: set[Entry] = set().union(*(r.entries for r in rules))
        state.policy.update(PolicyKey(eid, *e) for e in entries)
    return state
