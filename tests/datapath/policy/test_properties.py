"""Property tests: port prefixes, determinism, and the resolver against a direct oracle.

The oracle implements Kubernetes' NetworkPolicy semantics straight from the spec over pods and
addresses (no identities, no CIDR identities, no LPM, no map keys); the resolver's state,
evaluated by the datapath model, must give the same verdict for every flow of random clusters
and policies. Generated pods that share labels (and hence an identity) also share their named
port numbers, so the one documented over-approximation (one identity, several numbers) cannot
show up as a false difference.
"""

from __future__ import annotations

import ipaddress
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.v1.networkpolicy import (
    EgressRule,
    IngressRule,
    IPBlock,
    LabelSelector,
    LabelSelectorRequirement,
    NetworkPolicy,
    PolicyPeer,
    PolicyPort,
)
from services.datapath.policy import resolve
from services.datapath.policy_cidr import CidrAllocator
from services.datapath.policy_model import PROTO_NUMBERS, NamedPort, PolicyRef
from services.datapath.policymap import Direction, port_range_prefixes

from .cluster import Cluster, PodSpec, decide


@given(st.integers(1, 65535).flatmap(lambda a: st.tuples(st.just(a), st.integers(a, 65535))))
def test_port_range_prefixes_cover_exactly_the_range(bounds: tuple[int, int]) -> None:
    start, end = bounds
    covered: list[int] = []
    for port, plen in port_range_prefixes(start, end):
        size = 1 << (16 - plen)
        assert port % size == 0  # aligned block
        covered += range(port, port + size)
    assert covered == list(range(start, end + 1))  # no gap, no overlap, in order
    assert len(port_range_prefixes(start, end)) <= 30


# --- random clusters and policies ---------------------------------------------------------

NAMESPACES = {"a": {"team": "x"}, "b": {"team": "y"}}
LABEL_KEYS = {"app": ["web", "db"], "tier": ["fe", "be"]}
CIDRS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0", "192.168.0.0/16"]
EXTERNAL = ["10.1.2.3", "10.1.9.9", "10.200.0.1", "192.168.1.1", "8.8.8.8"]
PORTS = [80, 443, 8080, 53]


def _http_port(labels: dict[str, str]) -> int:
    return 8080 if labels.get("app") == "web" else 80


labels_st = st.dictionaries(
    st.sampled_from(sorted(LABEL_KEYS)), st.sampled_from(["web", "db", "fe", "be"]), max_size=2
)
match_labels_st = st.dictionaries(
    st.sampled_from(["app", "tier", "team"]),
    st.sampled_from(["web", "db", "fe", "x", "y"]),
    max_size=1,
)
expr_st = st.builds(
    LabelSelectorRequirement,
    key=st.sampled_from(["app", "tier", "team", "kubernetes.io/metadata.name"]),
    operator=st.sampled_from(["Exists", "DoesNotExist"]),
) | st.builds(
    LabelSelectorRequirement,
    key=st.sampled_from(["app", "tier", "team", "kubernetes.io/metadata.name"]),
    operator=st.sampled_from(["In", "NotIn"]),
    values=st.lists(st.sampled_from(["web", "db", "x", "a", "b"]), min_size=1, max_size=2),
)
selector_st = st.builds(
    LabelSelector, match_labels=match_labels_st, match_expressions=st.lists(expr_st, max_size=1)
)


@st.composite
def ip_block_st(draw: st.DrawFn) -> IPBlock:
    cidr = draw(st.sampled_from(CIDRS))
    outer = ipaddress.IPv4Network(cidr)
    inside = [c for c in CIDRS if c != cidr and ipaddress.IPv4Network(c).subnet_of(outer)]
    excepts = draw(st.lists(st.sampled_from(inside), max_size=2, unique=True)) if inside else []
    return IPBlock(cidr=cidr, except_cidrs=excepts)


peer_st = (
    st.builds(PolicyPeer, pod_selector=selector_st)
    | st.builds(PolicyPeer, namespace_selector=selector_st)
    | st.builds(PolicyPeer, pod_selector=selector_st, namespace_selector=selector_st)
    | st.builds(PolicyPeer, ip_block=ip_block_st())
)
port_st = (
    st.builds(PolicyPort, protocol=st.sampled_from(["TCP", "UDP"]), port=st.sampled_from(PORTS))
    | st.builds(PolicyPort, protocol=st.sampled_from(["TCP", "UDP"]))
    | st.builds(PolicyPort, port=st.just("http"))
    | st.builds(PolicyPort, port=st.just(80), end_port=st.sampled_from([443, 8080]))
)
rule_parts = st.tuples(st.lists(peer_st, max_size=2), st.lists(port_st, max_size=2))


@st.composite
def policy_st(draw: st.DrawFn) -> NetworkPolicy:
    ingress = [
        IngressRule(from_peers=p, ports=q) for p, q in draw(st.lists(rule_parts, max_size=2))
    ]
    egress = [EgressRule(to_peers=p, ports=q) for p, q in draw(st.lists(rule_parts, max_size=2))]
    types = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    return NetworkPolicy(
        pod_selector=draw(selector_st), policy_types=types, ingress=ingress, egress=egress
    )


@st.composite
def world_st(draw: st.DrawFn) -> tuple[Cluster, list[PolicyRef]]:
    pods = []
    for i in range(draw(st.integers(2, 5))):
        ns = draw(st.sampled_from(sorted(NAMESPACES)))
        labels = draw(labels_st)
        port = NamedPort("http", _http_port(labels))
        pods.append(PodSpec(ns, f"p{i}", labels, f"10.1.2.{10 + i}", (port,), draw(st.booleans())))
    policies = [
        PolicyRef(draw(st.sampled_from(sorted(NAMESPACES))), f"np{i}", draw(policy_st()))
        for i in range(draw(st.integers(0, 3)))
    ]
    return Cluster(NAMESPACES, pods), policies


# --- the oracle: Kubernetes semantics over pods and addresses ---------------------------------


def _ns_labels(ns: str) -> dict[str, str]:
    return {**NAMESPACES[ns], "kubernetes.io/metadata.name": ns}


def _peer_ok(peer: PolicyPeer, policy_ns: str, other: PodSpec | str) -> bool:
    if peer.ip_block is not None:
        if not isinstance(other, str):
            return False  # ipBlock does not select pods
        addr = ipaddress.ip_address(other)
        blk = peer.ip_block
        return addr in ipaddress.ip_network(blk.cidr) and not any(
            addr in ipaddress.ip_network(e) for e in blk.except_cidrs
        )
    if isinstance(other, str):
        return False
    if peer.namespace_selector is None:
        if other.namespace != policy_ns:
            return False
    elif not peer.namespace_selector.matches(_ns_labels(other.namespace)):
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(dict(other.labels))


def _port_ok(port: PolicyPort, proto: int, number: int, named_on: PodSpec | str) -> bool:
    if PROTO_NUMBERS[port.protocol] != proto:
        return False
    if port.port is None:
        return True
    if isinstance(port.port, str):
        if isinstance(named_on, str):
            return False
        return any(p.name == port.port and p.port == number for p in named_on.ports)
    return port.port <= number <= (port.end_port or port.port)


def oracle(
    policies: list[PolicyRef],
    ep: PodSpec,
    direction: Direction,
    other: PodSpec | str,
    proto: int,
    number: int,
) -> bool:
    ptype = "Ingress" if direction is Direction.INGRESS else "Egress"
    selecting = [
        p
        for p in policies
        if p.namespace == ep.namespace
        and ptype in p.spec.policy_types
        and p.spec.pod_selector.matches(dict(ep.labels))
    ]
    if not selecting:
        return True
    named_on = ep if direction is Direction.INGRESS else other
    for p in selecting:
        rules = (
            [(r.from_peers, r.ports) for r in p.spec.ingress]
            if direction is Direction.INGRESS
            else [(r.to_peers, r.ports) for r in p.spec.egress]
        )
        for peers, ports in rules:
            peer_ok = not peers or any(_peer_ok(x, p.namespace, other) for x in peers)
            port_ok = not ports or any(_port_ok(q, proto, number, named_on) for q in ports)
            if peer_ok and port_ok:
                return True
    return False


@settings(max_examples=150, deadline=None)
@given(world_st())
def test_resolver_agrees_with_the_kubernetes_oracle(world: tuple[Cluster, list[PolicyRef]]) -> None:
    cluster, policies = world
    state = cluster.resolve(policies)
    for ep in (p for p in cluster.pods if p.local):
        ifindex = cluster.ifindex(cluster.ref(ep))
        peers: list[PodSpec | str] = [*cluster.pods, *EXTERNAL]
        for other in peers:
            addr = other if isinstance(other, str) else other.ip
            for direction in Direction:
                for proto in (6, 17):
                    for number in PORTS:
                        want = oracle(policies, ep, direction, other, proto, number)
                        got = decide(state, ifindex, direction, addr, proto, number)
                        assert got == want, (cluster.ref(ep), direction, other, proto, number)


@settings(max_examples=60, deadline=None)
@given(world_st(), st.randoms(use_true_random=False))
def test_resolution_is_deterministic_and_order_independent(
    world: tuple[Cluster, list[PolicyRef]], rnd: random.Random
) -> None:
    cluster, policies = world
    endpoints, pods = cluster.endpoints(), cluster.cluster_pods()
    first = resolve(policies, endpoints, cluster.identities, pods, CidrAllocator())
    rnd.shuffle(policies)
    rnd.shuffle(endpoints)
    rnd.shuffle(pods)
    idents = dict(sorted(cluster.identities.items(), key=lambda _: rnd.random()))
    again = resolve(policies, endpoints, idents, pods, CidrAllocator())
    assert again == first
