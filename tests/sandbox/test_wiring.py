"""Table tests of the pure wiring: routes, blackholes, forwarding, and nothing in the host."""

from __future__ import annotations

from services.sandbox.topology import plan_pod, plan_sandbox
from services.sandbox.wiring import (
    Addr,
    LinkUp,
    Route,
    Step,
    Sysctl,
    Veth,
    fabric_steps,
    node_steps,
    pod_steps,
)

PLAN = plan_sandbox("ab12", ["n1", "n2"])
POD = plan_pod(PLAN, "n1", "default", "web-0")


def _all() -> list[Step]:
    steps = fabric_steps(PLAN)
    for node in PLAN.nodes:
        steps += node_steps(PLAN, node)
    return steps + pod_steps(PLAN, POD)


def test_every_step_targets_a_sandbox_namespace() -> None:
    for step in _all():
        assert step.netns.startswith("weir-ab12-"), step
        if isinstance(step, Veth):
            assert step.peer_netns.startswith("weir-ab12-"), step


def test_forwarding_only_in_fabric_and_nodes() -> None:
    sysctls = {(s.netns, s.key, s.value) for s in _all() if isinstance(s, Sysctl)}
    assert sysctls == {
        ("weir-ab12-fabric", "net.ipv4.ip_forward", "1"),
        ("weir-ab12-node-n1", "net.ipv4.ip_forward", "1"),
        ("weir-ab12-node-n2", "net.ipv4.ip_forward", "1"),
    }


def test_namespaces_with_a_route_out_blackhole_service_and_cluster_cidrs() -> None:
    for ns in ("weir-ab12-fabric", "weir-ab12-node-n1", "weir-ab12-node-n2"):
        holes = {s.dst for s in _all() if isinstance(s, Route) and s.netns == ns and s.blackhole}
        assert holes == {"10.244.0.0/16", "10.96.0.0/16"}, ns


def test_fabric_routes_each_pod_cidr_to_its_node() -> None:
    routes = {
        (s.dst, s.gateway, s.ifname)
        for s in node_steps(PLAN, PLAN.nodes[1])
        if isinstance(s, Route) and s.netns == "weir-ab12-fabric"
    }
    assert routes == {("10.244.2.0/24", "172.31.0.3", "wn1")}


def test_node_routes_other_pod_cidrs_via_fabric() -> None:
    routes = {
        (s.dst, s.gateway)
        for s in node_steps(PLAN, PLAN.nodes[0])
        if isinstance(s, Route) and not s.blackhole and s.netns == "weir-ab12-node-n1"
    }
    assert ("10.244.2.0/24", "172.31.0.0") in routes
    assert ("172.31.0.0/24", "172.31.0.0") in routes
    assert not any(dst == "10.244.1.0/24" for dst, _ in routes)  # own pods get /32s


def test_pod_wiring() -> None:
    steps = pod_steps(PLAN, POD)
    veth = next(s for s in steps if isinstance(s, Veth))
    assert (veth.netns, veth.peer_netns, veth.peer_ifname) == (
        "weir-ab12-node-n1",
        POD.netns,
        "eth0",
    )
    assert Addr(POD.netns, "eth0", "10.244.1.2", 32) in steps
    assert Addr("weir-ab12-node-n1", POD.host_ifname, "10.244.1.1", 32) in steps
    assert Route("weir-ab12-node-n1", "10.244.1.2/32", ifname=POD.host_ifname) in steps
    # the default route covers the service CIDR, so UDP connect() to a ClusterIP has a route
    assert Route(POD.netns, "default", gateway="10.244.1.1", ifname="eth0") in steps
    assert LinkUp(POD.netns, "eth0") in steps
    # a link is brought up only after it was created
    assert steps.index(veth) < steps.index(LinkUp(POD.netns, "eth0"))
