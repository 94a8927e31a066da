"""Resolver behaviour beyond the documentation's examples: named ports, CIDR hierarchy, world,
selector operators, bad input, the CIDR allocator and ``explain``."""

from __future__ import annotations

from services.datapath.fakepolicymaps import lookup_identity
from services.datapath.policy import resolve
from services.datapath.policy_cidr import CidrAllocator
from services.datapath.policy_explain import explain
from services.datapath.policy_model import ClusterPod, LocalEndpoint, NamedPort, PolicyIssue
from services.datapath.policymap import (
    CIDR_IDENTITY_BASE,
    WORLD_IDENTITY,
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
)

from .cluster import TCP, UDP, Cluster, PodSpec, decide, policies_from_yaml

IN, OUT = Direction.INGRESS, Direction.EGRESS
NS = {"default": {}, "prod": {"env": "prod"}}
PODS = [
    PodSpec("default", "api", {"app": "api"}, "10.244.0.10", (NamedPort("http", 8000),)),
    PodSpec("default", "api2", {"app": "api", "v": "2"}, "10.244.0.11", (NamedPort("web", 81),)),
    PodSpec("default", "cli", {"app": "cli"}, "10.244.0.12"),
    PodSpec("prod", "web", {"app": "web"}, "10.244.1.10", (NamedPort("http", 80),), local=False),
    PodSpec("prod", "alt", {"app": "alt"}, "10.244.1.11", (NamedPort("http", 8080),), local=False),
    PodSpec("prod", "alt-b", {"app": "alt"}, "10.244.1.12", (NamedPort("http", 9090),), False),
    PodSpec("prod", "dns", {"app": "dns"}, "10.244.1.13", (NamedPort("dns", 53, "UDP"),), False),
]
C = Cluster(NS, PODS)
API, API2, CLI = "default/api", "default/api2", "default/cli"
WEB, ALT, ALT_B, DNS = "prod/web", "prod/alt", "prod/alt-b", "prod/dns"


def policy(body: str, name: str = "p") -> str:
    return (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        f"metadata: {{name: {name}, namespace: default}}\nspec:\n{body}"
    )


def allowed(state_yaml: str, ep: str, d: Direction, peer: str, proto: int, port: int) -> bool:
    state = C.resolve(policies_from_yaml(state_yaml))
    return decide(state, C.ifindex(ep), d, C.ip(peer) if "/" in peer else peer, proto, port)


def test_ingress_named_port_resolves_against_the_enforced_pod() -> None:
    text = policy("  podSelector: {matchLabels: {app: api}}\n  ingress: [{ports: [{port: http}]}]")
    assert allowed(text, API, IN, CLI, TCP, 8000)
    assert not allowed(text, API, IN, CLI, TCP, 80)
    assert not allowed(text, API, IN, CLI, UDP, 8000)
    # api2 is selected too but has no port named http: nothing is allowed to it
    for port in (80, 81, 8000):
        assert not allowed(text, API2, IN, CLI, TCP, port)


def test_egress_named_port_resolves_per_peer_identity() -> None:
    text = policy(
        "  podSelector: {matchLabels: {app: cli}}\n  egress:\n"
        "  - to: [{namespaceSelector: {matchLabels: {env: prod}}}]\n    ports: [{port: http}]"
    )
    assert allowed(text, CLI, OUT, WEB, TCP, 80)
    assert not allowed(text, CLI, OUT, WEB, TCP, 8080)
    # alt and alt-b share one identity with http on 8080 and 9090: both numbers for that identity
    assert C.identity_of[ALT] == C.identity_of[ALT_B]
    for peer in (ALT, ALT_B):
        assert allowed(text, CLI, OUT, peer, TCP, 8080)
        assert allowed(text, CLI, OUT, peer, TCP, 9090)
        assert not allowed(text, CLI, OUT, peer, TCP, 80)
    assert not allowed(text, CLI, OUT, API, TCP, 8000)  # not selected by the namespaceSelector
    assert not allowed(text, CLI, OUT, "8.8.8.8", TCP, 80)


def test_egress_named_port_to_all_peers_and_udp() -> None:
    text = policy("  podSelector: {}\n  egress: [{ports: [{port: dns, protocol: UDP}]}]")
    assert allowed(text, API, OUT, DNS, UDP, 53)
    assert not allowed(text, API, OUT, DNS, TCP, 53)
    assert not allowed(text, API, OUT, "8.8.8.8", UDP, 53)  # the world has no named ports
    assert not allowed(text, API, OUT, WEB, UDP, 53)


def test_protocol_without_port_allows_every_port_of_it() -> None:
    text = policy(
        "  podSelector: {matchLabels: {app: api}}\n  ingress: [{ports: [{protocol: UDP}]}]"
    )
    assert allowed(text, API, IN, "1.2.3.4", UDP, 1)
    assert allowed(text, API, IN, "1.2.3.4", UDP, 65535)
    assert not allowed(text, API, IN, "1.2.3.4", TCP, 80)


def test_ingress_rules_are_ignored_without_the_ingress_policy_type() -> None:
    text = policy(
        "  podSelector: {matchLabels: {app: api}}\n  policyTypes: [Egress]\n"
        "  ingress: [{from: [{podSelector: {matchLabels: {app: cli}}}]}]\n"
        "  egress: [{to: [{podSelector: {matchLabels: {app: cli}}}]}]"
    )
    state = C.resolve(policies_from_yaml(text))
    assert state.endpoints[EndpointKey(C.ifindex(API))].flags == EndpointFlags.ENFORCE_EGRESS
    assert allowed(text, API, IN, "8.8.8.8", TCP, 1)
    assert allowed(text, API, OUT, CLI, TCP, 1)
    assert not allowed(text, API, OUT, WEB, TCP, 1)


def test_selector_operators() -> None:
    text = policy(
        "  podSelector: {matchLabels: {app: cli}}\n  ingress:\n  - from:\n"
        "    - podSelector: {matchExpressions: [{key: app, operator: In, values: [api]},"
        " {key: v, operator: DoesNotExist}]}\n"
        "    - namespaceSelector: {matchExpressions: [{key: env, operator: Exists}]}\n"
        "      podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [alt]}]}"
    )
    expected = {API: True, API2: False, WEB: True, DNS: True, ALT: False, ALT_B: False}
    got = {peer: allowed(text, CLI, IN, peer, TCP, 1) for peer in expected}
    assert got == expected


def test_cidr_hierarchy_across_policies() -> None:
    """Prefixes named by *other* policies sit inside an ipBlock: addresses matching them by
    longest prefix are still (or still not) selected."""
    text = (
        policy(
            "  podSelector: {matchLabels: {app: api}}\n  ingress: [{from: [{ipBlock:"
            " {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}}]}]",
            "a",
        )
        + "\n---\n"
        + policy(
            "  podSelector: {matchLabels: {app: cli}}\n  ingress: [{from: [{ipBlock:"
            " {cidr: 172.17.0.0/24}}, {ipBlock: {cidr: 172.17.1.128/25}}]}]",
            "b",
        )
    )
    assert allowed(text, API, IN, "172.17.0.5", TCP, 1)  # LPM hits 172.17.0.0/24 (policy b)
    assert not allowed(text, API, IN, "172.17.1.200", TCP, 1)  # LPM hits 172.17.1.128/25
    assert not allowed(text, API, IN, "172.17.1.5", TCP, 1)
    assert allowed(text, API, IN, "172.17.9.9", TCP, 1)
    assert allowed(text, CLI, IN, "172.17.0.5", TCP, 1)
    assert allowed(text, CLI, IN, "172.17.1.200", TCP, 1)
    assert not allowed(text, CLI, IN, "172.17.9.9", TCP, 1)


def test_world_block_and_pods() -> None:
    text = policy(
        "  podSelector: {matchLabels: {app: api}}\n  policyTypes: [Egress]\n  egress: [{to:"
        " [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}, {ipBlock: {cidr: 10.244.0.0/16}}]}]"
    )
    assert allowed(text, API, OUT, "8.8.8.8", TCP, 443)  # WORLD
    assert allowed(text, API, OUT, "192.168.7.7", UDP, 53)
    assert not allowed(text, API, OUT, "10.1.2.3", TCP, 443)  # except 10.0.0.0/8
    assert allowed(text, API, OUT, "10.244.9.9", TCP, 443)  # 10.244.0.0/16, no pod there
    # pod IPs have pod identities: ipBlock does not select pods (use selectors)
    assert not allowed(text, API, OUT, WEB, TCP, 443)
    state = C.resolve(policies_from_yaml(text))
    assert lookup_identity(state.ipcache, "8.8.8.8") == WORLD_IDENTITY
    assert CidrKey("0.0.0.0/0") not in state.ipcache
    assert state.ipcache[CidrKey(C.ip(WEB) + "/32")] == C.identity_of[WEB]


def test_unselected_endpoint_has_no_entries() -> None:
    text = policy("  podSelector: {matchLabels: {app: api}}\n  ingress: [{}]")
    state = C.resolve(policies_from_yaml(text))
    cli = state.endpoints[EndpointKey(C.ifindex(CLI))]
    assert cli.flags == EndpointFlags.NONE
    assert cli.identity == C.identity_of[CLI]
    assert not [k for k in state.policy if k.endpoint_id == cli.endpoint_id]
    assert {k.endpoint_id for k in state.policy} == {
        state.endpoints[EndpointKey(C.ifindex(r))].endpoint_id for r in (API, API2)
    }


def test_bad_input_is_reported_and_skipped() -> None:
    issues: list[PolicyIssue] = []
    eps = [
        LocalEndpoint("default", "a", 7, 1, 300, {"app": "x"}, ips=("10.0.0.1",)),
        LocalEndpoint("default", "b", 7, 2, 300, {"app": "x"}),  # same ifindex
        LocalEndpoint("default", "c", 8, 1, 300, {"app": "x"}),  # same endpoint id
        LocalEndpoint("default", "d", 9, 3, 301, {"app": "y"}, ips=("not-an-ip",)),
    ]
    pods = [ClusterPod("prod", "z", 302, ("10.0.0.1",))]  # a's IP with another identity
    identities = {300: ["k8s:app=x", "garbage"], 301: ["k8s:app=y"]}
    text = policy("  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]")
    state = resolve(policies_from_yaml(text), eps, identities, pods, CidrAllocator(), issues)
    assert sorted(state.endpoints) == [EndpointKey(7), EndpointKey(9)]
    assert sorted((i.obj, i.field) for i in issues) == [
        ("identity 300", "labels"),
        ("pod default/b", "ifindex"),
        ("pod default/c", "endpoint_id"),
        ("pod default/d", "ips[0]"),
        ("pod prod/z", "ips[0]"),
    ]
    assert all(str(i).startswith(i.obj) for i in issues)
    assert state.ipcache == {CidrKey("10.0.0.1/32"): 300}


def test_cidr_allocator_is_stable_and_delays_reuse() -> None:
    alloc = CidrAllocator()
    first = alloc.assign(["10.0.0.0/8", "192.168.0.0/16"])
    assert first == {"10.0.0.0/8": CIDR_IDENTITY_BASE, "192.168.0.0/16": CIDR_IDENTITY_BASE + 1}
    assert CidrAllocator().assign(["192.168.0.0/16", "10.0.0.0/8"]) == first
    second = alloc.assign(["192.168.0.0/16", "1.0.0.0/8"])  # 10/8 released
    assert second == {"192.168.0.0/16": CIDR_IDENTITY_BASE + 1, "1.0.0.0/8": CIDR_IDENTITY_BASE + 2}
    third = alloc.assign(["192.168.0.0/16", "1.0.0.0/8", "2.0.0.0/8"])  # now reusable
    assert third["2.0.0.0/8"] == CIDR_IDENTITY_BASE
    restored = CidrAllocator()
    ipcache = {"192.168.0.0/16": CIDR_IDENTITY_BASE + 1, "10.244.0.5/32": 300}
    restored.restore(ipcache)
    assert restored.assign(["192.168.0.0/16", "3.0.0.0/8"]) == {
        "192.168.0.0/16": CIDR_IDENTITY_BASE + 1,
        "3.0.0.0/8": CIDR_IDENTITY_BASE + 2,
    }


def test_explain() -> None:
    text = policy(
        "  podSelector: {matchLabels: {app: api}}\n  ingress:\n"
        "  - from: [{podSelector: {matchLabels: {app: web}}}, {podSelector: {matchLabels:"
        " {app: cli}}}]\n    ports: [{port: 81}, {port: http}]",
        "api-in",
    )
    policies = policies_from_yaml(text)
    api = next(e for e in C.endpoints() if e.name == "api")
    cli = C.identity_of[CLI]

    def ask(peer: int, port: int, d: Direction = IN, ep: LocalEndpoint = api) -> list[str]:
        out = explain(
            policies,
            ep,
            C.identities,
            C.cluster_pods(),
            {},
            direction=d,
            peer_identity=peer,
            proto=TCP,
            port=port,
        )
        assert out.selected_by == (("default/api-in",) if ep is api else ())
        return out.lines()

    assert ask(cli, 8000) == [
        f"default/api INGRESS peer={cli} proto=6 port=8000: ALLOWED",
        "  enforced by: default/api-in",
        "  allowed by default/api-in ingress[0] from[1] ports[1]",
    ]
    assert ask(cli, 81)[-1] == "  allowed by default/api-in ingress[0] from[1] ports[0]"
    assert ask(cli, 82)[-1] == "  no rule matches"
    assert "DENIED" in ask(cli, 82)[0]
    assert ask(cli, 1, OUT)[1] == "  not isolated in this direction (no policy enforces it)"
    other = next(e for e in C.endpoints() if e.name == "cli")
    assert "ALLOWED" in ask(cli, 1, IN, other)[0]
