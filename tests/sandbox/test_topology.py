"""Table tests of the pure sandbox plan: names, addresses, nesting, validation errors."""

from __future__ import annotations

import ipaddress

import pytest

from services.sandbox.topology import (
    IFNAME_MAX,
    Port,
    TopologyError,
    allocate_pod_ip,
    plan_pod,
    plan_sandbox,
)

A = ipaddress.IPv4Address


@pytest.mark.parametrize(
    ("index", "node_ip", "fabric_ip", "pod_cidr", "gateway"),
    [
        (0, "172.31.0.1", "172.31.0.0", "10.244.1.0/24", "10.244.1.1"),
        (1, "172.31.0.3", "172.31.0.2", "10.244.2.0/24", "10.244.2.1"),
        (2, "172.31.0.5", "172.31.0.4", "10.244.3.0/24", "10.244.3.1"),
    ],
)
def test_node_addresses(
    index: int, node_ip: str, fabric_ip: str, pod_cidr: str, gateway: str
) -> None:
    plan = plan_sandbox("ab12", ["n1", "n2", "n3"])
    node = plan.nodes[index]
    assert (str(node.node_ip), str(node.fabric_ip)) == (node_ip, fabric_ip)
    assert (str(node.pod_cidr), str(node.gateway)) == (pod_cidr, gateway)
    # both ends of the /31 are in the same link network
    assert ipaddress.ip_network(f"{node.node_ip}/31", strict=False) == ipaddress.ip_network(
        f"{node.fabric_ip}/31", strict=False
    )


def test_names_are_per_sandbox_and_nested() -> None:
    plan = plan_sandbox("ab12", ["node1", "node2"])
    assert plan.fabric_netns == "weir-ab12-fabric"
    assert [n.netns for n in plan.nodes] == ["weir-ab12-node-node1", "weir-ab12-node-node2"]
    assert plan.nodes[0].cgroup == "weir-ab12/node1"
    assert plan.nodes[0].pin_dir == "weir-ab12/node1"
    pod = plan_pod(plan, "node2", "default", "web-0", ports=[(8080, "TCP"), (8080, "UDP")])
    assert pod.netns.startswith("weir-ab12-pod-")
    assert pod.cgroup == "weir-ab12/node2/pods/default_web-0"
    assert pod.cgroup.startswith(plan.nodes[1].cgroup + "/")  # node's cgroup programs apply
    assert pod.ip == A("10.244.2.2")
    assert pod.ports == (Port(8080, "TCP"), Port(8080, "UDP"))
    assert len(pod.host_ifname) <= IFNAME_MAX
    assert all(len(n.fabric_ifname) <= IFNAME_MAX for n in plan.nodes)
    other = plan_sandbox("cd34", ["node1", "node2"])
    assert plan_pod(other, "node2", "default", "web-0").host_ifname != pod.host_ifname


def test_pod_ip_allocation_skips_used_and_gateway() -> None:
    node = plan_sandbox("ab12", ["n1"]).nodes[0]
    assert allocate_pod_ip(node, []) == A("10.244.1.2")
    assert allocate_pod_ip(node, [A("10.244.1.2"), A("10.244.1.4")]) == A("10.244.1.3")
    every = list(node.pod_cidr.hosts())
    with pytest.raises(TopologyError, match=r"node n1: podCIDR 10\.244\.1\.0/24 is exhausted"):
        allocate_pod_ip(node, every)


@pytest.mark.parametrize(
    ("sandbox_id", "nodes", "message"),
    [
        ("AB", ["n1"], "sandbox id 'AB'"),
        ("toolongid", ["n1"], "sandbox id 'toolongid'"),
        ("ab12", [], "nodes: at least one node"),
        ("ab12", ["n1", "Bad_Name"], r"node\[1\].name: 'Bad_Name'"),
        ("ab12", ["n1", "n1"], r"node\[1\].name: duplicate"),
        ("ab12", [f"n{i}" for i in range(129)], "nodes: at most 128"),
    ],
)
def test_bad_sandbox_input_names_the_field(sandbox_id: str, nodes: list[str], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        plan_sandbox(sandbox_id, nodes)


@pytest.mark.parametrize(
    ("node", "namespace", "name", "ports", "message"),
    [
        ("nope", "default", "a", [], "no node named 'nope'"),
        ("n1", "Default", "a", [], "pod Default/a: metadata.namespace"),
        ("n1", "default", "a/b", [], r"pod default/a/b: metadata.name"),
        ("n1", "default", "a", [(0, "TCP")], r"ports\[0\].containerPort: 0"),
        ("n1", "default", "a", [(80, "TCP"), (80, "SCTP")], r"ports\[1\].protocol: 'SCTP'"),
    ],
)
def test_bad_pod_input_names_the_field(
    node: str, namespace: str, name: str, ports: list[tuple[int, str]], message: str
) -> None:
    plan = plan_sandbox("ab12", ["n1"])
    with pytest.raises(TopologyError, match=message):
        plan_pod(plan, node, namespace, name, ports=ports)
