"""Conversion of every kind from fixtures: realistic objects convert, placeholder objects fail.

The round-trip-style fixtures mimic Kubernetes' API test data (every string a placeholder such as
"clusterIPValue"); they are exactly the garbage a buggy or hostile producer could send, so each
must give a ContractError that names a real field path, never another exception type.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.subjects import K8S_KINDS
from contracts.v1 import (
    ContractError,
    K8sEvent,
    Namespace,
    NetworkPolicy,
    Node,
    Op,
    Pod,
    from_k8s,
    to_event,
)
from tests.contracts.conftest import load

NOW = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def test_realistic_pod() -> None:
    pod = from_k8s("pod", load("pod-realistic.yaml"))
    assert isinstance(pod, Pod)
    assert pod.ips == ["10.244.1.17", "fd00:244:1::17"]
    assert (pod.host_ip, pod.node_name, pod.service_account) == (
        "192.168.10.11",
        "node-1.cluster.local",
        "web",
    )
    assert pod.phase == "Running" and pod.ready and not pod.terminating
    assert [(p.container, p.name, p.port, p.protocol) for p in pod.container_ports] == [
        ("app", "http", 8080, "TCP"),
        ("app", "dns-udp", 5353, "UDP"),
        ("sidecar", None, 9090, "TCP"),
    ]
    assert pod.named_port("http") == 8080
    assert pod.named_port("dns-udp", "UDP") == 5353
    assert pod.named_port("dns-udp") is None


def test_pod_defaults_and_single_ip() -> None:
    raw = {
        "metadata": {"name": "p", "namespace": "n", "deletionTimestamp": "2024-05-01T10:00:00Z"},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "False"}]},
    }
    pod = from_k8s("pod", raw)
    assert isinstance(pod, Pod)
    assert pod.ips == ["10.1.2.3"] and pod.service_account == "default"
    assert not pod.ready and pod.terminating and pod.container_ports == []


def test_pod_ready_condition_garbage_names_field() -> None:
    raw = load("pod-realistic.yaml")
    raw["status"]["conditions"][1]["status"] = "Maybe"
    with pytest.raises(ContractError) as err:
        from_k8s("pod", raw)
    assert err.value.field == "status.conditions[1].status"


def test_realistic_namespace_and_node() -> None:
    ns = from_k8s("namespace", load("namespace-realistic.yaml"))
    assert isinstance(ns, Namespace)
    assert list(ns.labels) == sorted(ns.labels)  # stored sorted
    assert ns.labels["team"] == "payments"
    node = from_k8s("node", load("node-realistic.yaml"))
    assert isinstance(node, Node)
    assert node.pod_cidrs == ["10.244.1.0/24", "fd00:244:1::/64"]
    assert node.internal_ip() == "192.168.10.11"
    assert node.addresses[1].address == "fd00:192:168:10::11"  # canonical form
    assert node.labels["node-role.kubernetes.io/worker"] == ""


def test_node_single_pod_cidr_and_bad_address() -> None:
    raw: dict[str, Any] = {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.7.0/24"}}
    node = from_k8s("node", raw)
    assert isinstance(node, Node) and node.pod_cidrs == ["10.244.7.0/24"]
    raw["status"] = {"addresses": [{"type": "Hostname", "address": "n1"}]}
    raw["status"]["addresses"].append({"type": "InternalIP", "address": "n1"})
    with pytest.raises(ContractError) as err:
        from_k8s("node", raw)
    assert err.value.field == "status.addresses[1].address"


def test_realistic_networkpolicy() -> None:
    pol = from_k8s("networkpolicy", load("networkpolicy-realistic.yaml"))
    assert isinstance(pol, NetworkPolicy)
    assert pol.policy_types == ["Ingress", "Egress"]  # defaulted: egress rules present
    assert pol.pod_selector.matches({"app.kubernetes.io/name": "web", "tier": "edge"})
    assert not pol.pod_selector.matches({"app.kubernetes.io/name": "web", "tier": "db"})
    assert not pol.pod_selector.matches(
        {"app.kubernetes.io/name": "web", "tier": "edge", "canary": "1"}
    )
    first = pol.ingress[0]
    assert [(p.protocol, p.port, p.end_port) for p in first.ports] == [
        ("TCP", "http", None),
        ("TCP", 9000, 9100),
    ]
    assert first.from_peers[1].namespace_selector is not None
    assert first.from_peers[1].pod_selector is not None
    block = first.from_peers[2].ip_block
    assert block is not None and block.except_cidrs == ["172.17.1.0/24"]
    assert pol.ingress[1].ports == [] and pol.ingress[1].from_peers == []  # allow all
    assert pol.egress[0].ports[1].protocol == "TCP"  # defaulted


def test_networkpolicy_policy_types_default_without_egress() -> None:
    pol = from_k8s("networkpolicy", load("networkpolicy-realistic-default-types.yaml"))
    assert isinstance(pol, NetworkPolicy)
    assert pol.policy_types == ["Ingress"]
    assert pol.pod_selector.matches({"anything": "x"})


# kind -> the field the first error must name
ROUNDTRIP_FIELDS = {
    "service": "spec.type",
    "endpointslice": "addressType",
    "pod": "status.podIPs[0].ip",
    "node": "status.addresses[0].type",
    "networkpolicy": "spec.podSelector.matchExpressions[0].operator",
}


@pytest.mark.parametrize("kind", K8S_KINDS)
def test_roundtrip_placeholders_are_contract_errors(kind: str) -> None:
    raw = load(f"{kind}-roundtrip.yaml")
    if kind in ROUNDTRIP_FIELDS:
        with pytest.raises(ContractError) as err:
            from_k8s(kind, raw)
        assert err.value.field == ROUNDTRIP_FIELDS[kind]
        assert err.value.kind == kind and err.value.name == "nameValue"
        assert str(err.value).startswith(f"{kind} ")
    with pytest.raises(ContractError) as err:
        to_event(kind, Op.UPSERT, raw, "test", NOW)
    assert err.value.field  # every failure names a field


@pytest.mark.parametrize(
    "name", ["service", "endpointslice", "pod", "namespace", "node", "networkpolicy"]
)
def test_realistic_fixture_to_event_round_trips(name: str) -> None:
    raw = load(f"{name}-realistic.yaml")
    event = to_event(name, Op.UPSERT, raw, "watcher-0", NOW)
    meta = raw["metadata"]
    assert (event.name, event.uid, event.resource_version) == (
        meta["name"],
        meta["uid"],
        meta["resourceVersion"],
    )
    assert event.namespace == meta.get("namespace")
    assert K8sEvent.model_validate_json(event.model_dump_json()) == event
    assert event.msg_id() == (
        f"{name}/{meta.get('namespace', '-')}/{meta['name']}/{meta['uid']}/"
        f"{meta['resourceVersion']}/UPSERT"
    )


def test_cluster_scoped_event_ignores_metadata_namespace() -> None:
    raw = load("node-realistic.yaml")
    raw["metadata"]["namespace"] = "ignored"
    event = to_event("node", Op.UPSERT, raw, "w", NOW)
    assert event.namespace is None
    assert event.subject() == "weir.v1.k8s.node._cluster.node-1_2ecluster_2elocal"


def test_unknown_kind_and_op() -> None:
    raw = load("pod-realistic.yaml")
    with pytest.raises(ContractError, match="unknown kind"):
        from_k8s("deployment", raw)
    with pytest.raises(ContractError, match="unknown op"):
        to_event("pod", "PATCH", raw, "w", NOW)
