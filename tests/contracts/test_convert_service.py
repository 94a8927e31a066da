"""Conversion of Service and EndpointSlice JSON, including Kubernetes defaulting and errors."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone

import pytest

from contracts.v1 import ContractError, EndpointSlice, K8sEvent, Op, Service, from_k8s, to_event
from tests.contracts.conftest import load

NOW = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def test_realistic_service() -> None:
    svc = from_k8s("service", load("service-realistic.yaml"))
    assert isinstance(svc, Service)
    assert svc.type == "NodePort"
    assert svc.cluster_ips == ["10.96.12.34", "fd00:10:96::1234"]
    assert [(p.name, p.port, p.target_port, p.node_port) for p in svc.ports] == [
        ("http", 80, "http", 30080),
        ("metrics", 9090, 9090, 31090),
    ]
    assert svc.session_affinity == "ClientIP"
    assert svc.session_affinity_timeout_seconds == 600
    assert svc.external_traffic_policy == "Local"
    assert svc.traffic_distribution == "PreferClose"  # from the topology-mode annotation
    assert svc.selector == {"app.kubernetes.io/name": "web"}
    assert not svc.headless


def test_service_defaults_and_headless() -> None:
    raw = {
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"clusterIP": "None", "ports": [{"port": 5432, "nodePort": 0}]},
    }
    svc = from_k8s("service", raw)
    assert isinstance(svc, Service)
    assert svc.headless and svc.cluster_ips == []
    assert svc.type == "ClusterIP"
    port = svc.ports[0]
    assert (port.protocol, port.target_port, port.node_port) == ("TCP", 5432, None)
    assert svc.session_affinity_timeout_seconds == 10800
    assert svc.internal_traffic_policy == "Cluster"


def test_service_canonicalises_ipv6() -> None:
    raw = {"metadata": {"name": "v6"}, "spec": {"clusterIPs": ["FD00:0:0::0001"]}}
    svc = from_k8s("service", raw)
    assert isinstance(svc, Service)
    assert svc.cluster_ips == ["fd00::1"]


def test_bad_cluster_ip_names_field() -> None:
    raw = load("service-realistic.yaml")
    raw["metadata"]["namespace"] = "default"
    raw["metadata"]["name"] = "web"
    raw["spec"]["clusterIPs"] = None
    raw["spec"]["clusterIP"] = "10.0.0.300"
    with pytest.raises(ContractError) as err:
        from_k8s("service", raw)
    assert str(err.value) == (
        "service default/web: spec.clusterIP: '10.0.0.300' is not a valid IP address"
    )
    assert (err.value.kind, err.value.namespace, err.value.name) == ("service", "default", "web")
    assert err.value.field == "spec.clusterIP"


def test_roundtrip_placeholder_service_is_a_contract_error() -> None:
    with pytest.raises(ContractError) as err:
        from_k8s("service", load("service-roundtrip.yaml"))
    assert err.value.field.startswith(("spec.", "metadata.", "status."))


def test_realistic_endpointslice_defaults_conditions() -> None:
    eps = from_k8s("endpointslice", load("endpointslice-realistic.yaml"))
    assert isinstance(eps, EndpointSlice)
    assert eps.service_name == "web"
    conds = [
        (e.conditions.ready, e.conditions.serving, e.conditions.terminating) for e in eps.endpoints
    ]
    # explicit; ready false + serving nil => serving false; all nil => ready, serving
    assert conds == [(True, True, False), (False, False, True), (True, True, False)]
    assert eps.endpoints[0].hints is not None
    assert eps.endpoints[0].hints.for_zones == ["zone-a"]
    assert eps.endpoints[0].target_ref is not None
    assert eps.endpoints[0].target_ref.name == "web-6d9f7c-abcde"
    assert [(p.name, p.port, p.app_protocol) for p in eps.ports] == [
        ("http", 8080, None),
        ("metrics", 9090, "http"),
    ]


def test_endpointslice_family_mismatch_names_address() -> None:
    raw = load("endpointslice-realistic.yaml")
    raw["endpoints"][1]["addresses"] = ["fd00::9"]
    with pytest.raises(ContractError) as err:
        from_k8s("endpointslice", raw)
    assert err.value.field == "endpoints[1].addresses[0]"
    assert "IPv4" in err.value.message


def test_roundtrip_placeholder_endpointslice_is_a_contract_error() -> None:
    with pytest.raises(ContractError) as err:
        from_k8s("endpointslice", load("endpointslice-roundtrip.yaml"))
    assert err.value.field == "addressType"


def test_to_event_upsert_and_ids() -> None:
    raw = load("service-realistic.yaml")
    event = to_event("service", "UPSERT", raw, "watcher-0", NOW)
    assert isinstance(event, K8sEvent)
    assert event.subject() == "weir.v1.k8s.service.shop.web"
    assert event.msg_id() == "service/shop/web/5d3b7c1e-6f0a-4a47-9a53-1c2f3e4d5a6b/184422/UPSERT"
    assert event.object is not None and event.object.kind == "service"
    again = K8sEvent.model_validate_json(event.model_dump_json())
    assert again == event


def test_to_event_normalises_time_to_utc_and_rejects_naive() -> None:
    raw = load("endpointslice-realistic.yaml")
    plus2 = timezone(timedelta(hours=2))
    event = to_event("endpointslice", Op.UPSERT, raw, "w", datetime(2024, 5, 1, 12, tzinfo=plus2))
    assert event.observed_at == NOW and event.observed_at.tzinfo == UTC
    with pytest.raises(ContractError) as err:
        to_event("endpointslice", Op.UPSERT, raw, "w", datetime(2024, 5, 1, 12))
    assert err.value.field == "observed_at"


def test_delete_of_invalid_object_is_still_a_tombstone() -> None:
    raw = copy.deepcopy(load("service-realistic.yaml"))
    raw["spec"]["ports"][0]["port"] = 70000
    with pytest.raises(ContractError):
        to_event("service", Op.UPSERT, raw, "w", NOW)
    event = to_event("service", Op.DELETE, raw, "w", NOW)
    assert event.object is None and event.msg_id().endswith("/184422/DELETE")


def test_to_event_requires_metadata() -> None:
    raw = load("service-realistic.yaml")
    del raw["metadata"]["uid"]
    with pytest.raises(ContractError) as err:
        to_event("service", Op.UPSERT, raw, "w", NOW)
    assert err.value.field == "metadata.uid"


@pytest.mark.parametrize(
    ("ips", "ok"),
    [
        (["10.96.0.1", "fd00::1"], True),
        (["fd00::1", "10.96.0.1"], True),
        (["10.96.0.1", "10.96.0.2"], False),
        (["fd00::1", "fd00::2"], False),
    ],
)
def test_two_cluster_ips_are_one_of_each_family(ips: list[str], ok: bool) -> None:
    raw = {"metadata": {"name": "dual"}, "spec": {"clusterIPs": ips}}
    if ok:
        assert from_k8s("service", raw).cluster_ips == ips  # type: ignore[union-attr]
        return
    with pytest.raises(ContractError) as err:
        from_k8s("service", raw)
    assert err.value.field == "spec.clusterIPs"
    assert "one IPv4 and one IPv6" in err.value.message
