"""Model round-trips (model -> JSON -> model) and validation tables that must name the field."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from contracts.v1 import (
    VERDICTS,
    ContractError,
    Flow,
    Identity,
    IPCacheEntry,
    K8sEvent,
    NodeStatus,
    Op,
    Service,
    ValidationReport,
    from_k8s,
    identity_label,
    to_event,
)
from contracts.v1.errors import FieldIssue
from contracts.v1.meta import MAX_LABELS
from tests.contracts.conftest import FIXTURES, load

NOW = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def flow(**over: Any) -> Flow:
    data: dict[str, Any] = {
        "time": NOW,
        "verdict": "DROPPED",
        "drop_reason_desc": "POLICY_DENIED",
        "ip": {"source": "10.244.1.5", "destination": "10.244.2.9", "ip_version": "IPv4"},
        "l4": {"tcp": {"source_port": 40000, "destination_port": 80, "flags": {"syn": True}}},
        "source": {"identity": 4096, "namespace": "shop", "pod_name": "a", "labels": ["k8s:a=b"]},
        "destination": {"identity": 2, "labels": ["reserved:world="]},
        "destination_service": {"namespace": "shop", "name": "web"},
        "traffic_direction": "EGRESS",
        "node_name": "node-1",
        "is_reply": False,
        "trace_observation_point": "TO_ENDPOINT",
    }
    data.update(over)
    return Flow.model_validate(data)


EXAMPLES: list[BaseModel] = [
    Identity(
        id=4096, labels=["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"], observed_at=NOW
    ),
    IPCacheEntry(
        ip="10.244.1.5", identity=4096, namespace="shop", pod_name="web-1", observed_at=NOW
    ),
    IPCacheEntry(ip="fd00::5", op=Op.DELETE, observed_at=NOW),
    flow(),
    NodeStatus(
        node="node-1",
        applied={"WEIR_K8S": 120, "WEIR_IDENTITY": 7},
        maps={"weir_svc_v1": {"entries": 10, "capacity": 65536}},
        program_versions={"sock4": "sha256:abc"},
        time=NOW,
    ),
    ValidationReport(
        kind="service",
        namespace="default",
        name="web",
        field="spec.clusterIP",
        message="'x' is not a valid IP address",
        resource_version="5",
        observed_at=NOW,
    ),
]


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_model_json_round_trip(model: BaseModel) -> None:
    again = type(model).model_validate_json(model.model_dump_json())
    assert again == model
    assert type(model).model_validate(model.model_dump(mode="json")) == model


def test_models_are_frozen_and_closed() -> None:
    ident = EXAMPLES[0]
    with pytest.raises(ValidationError):
        ident.id = 5  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="extra"):
        Identity.model_validate({"id": 5, "labels": [], "observed_at": NOW, "colour": "red"})


def test_subjects_and_ids() -> None:
    assert EXAMPLES[0].subject() == "weir.v1.identity.4096"  # type: ignore[attr-defined]
    assert EXAMPLES[1].subject() == "weir.v1.ipcache.10_2e244_2e1_2e5"  # type: ignore[attr-defined]
    assert flow().subject() == "weir.v1.flows.node-1.DROPPED"
    assert EXAMPLES[5].subject() == "weir.v1.errors.service.default.web"  # type: ignore[attr-defined]
    a = Identity(id=300, labels=["k8s:a=b"], observed_at=NOW)
    b = Identity(id=300, labels=["k8s:a=c"], observed_at=NOW)
    assert a.msg_id() != b.msg_id()
    assert a.msg_id() == Identity(id=300, labels=["k8s:a=b"], observed_at=NOW).msg_id()


def test_validation_report_from_contract_error() -> None:
    with pytest.raises(ContractError) as err:
        from_k8s("service", {"metadata": {"name": "w", "namespace": "d"}, "spec": {"type": 3}})
    report = ValidationReport.from_error(err.value, NOW, resource_version="9", producer="w0")
    assert (report.kind, report.namespace, report.name, report.field) == (
        "service",
        "d",
        "w",
        "spec.type",
    )


SVC = {"metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}


def _with(path: str, value: Any) -> dict[str, Any]:
    """A copy of SVC with ``a.b[0].c`` set to value."""
    obj = copy.deepcopy(SVC)
    node: Any = obj
    parts = [p for p in re.split(r"\.|\[(\d+)\]", path) if p]
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last = parts[-1]
    node[int(last) if last.isdigit() else last] = value
    return obj


SERVICE_TABLE = [
    ("spec.clusterIP", "10.0.0.300", "not a valid IP address"),
    ("spec.clusterIP", "10.0.0.01", "not a valid IP address"),
    ("spec.clusterIP", "fe80::1%eth0", "not a valid IP address"),
    ("spec.externalIPs", ["1.2.3.4", "::g"], "not a valid IP address"),
    ("spec.ports[0].port", 0, "not a valid port"),
    ("spec.ports[0].port", 65536, "not a valid port"),
    ("spec.ports[0].port", "80", "not a valid port"),
    ("spec.ports[0].port", True, "not a valid port"),
    ("spec.ports[0].nodePort", 70000, "not a valid port"),
    ("spec.ports[0].targetPort", "Http", "not a valid port name"),
    ("spec.ports[0].targetPort", "a-very-long-port-name", "port name"),
    ("spec.ports[0].protocol", "ICMP", "'TCP', 'UDP' or 'SCTP'"),
    ("spec.type", "Fancy", "ClusterIP"),
    ("spec.sessionAffinityConfig.clientIP.timeoutSeconds", 0, "greater than or equal to 1"),
    ("spec.publishNotReadyAddresses", "yes", "valid boolean"),
    ("spec.trafficDistribution", "Nearby", "PreferClose"),
    ("spec.selector", {"app": "a" * 64}, "longer than 63"),
]


@pytest.mark.parametrize(("path", "value", "needle"), SERVICE_TABLE)
def test_service_validation_names_field(path: str, value: Any, needle: str) -> None:
    with pytest.raises(ContractError) as err:
        from_k8s("service", _with(path, value))
    field = err.value.field
    if isinstance(value, list):
        assert field == f"{path}[1]"
    elif isinstance(value, dict):
        assert field.startswith(path)
    else:
        assert field == path
    assert needle in err.value.message
    assert str(err.value).startswith(f"service default/web: {field}: ")


LABEL_TABLE: list[tuple[dict[str, str], str, str]] = [
    ({"x" * 64: "v"}, "metadata.labels[" + "x" * 64 + "]", "longer than 63"),
    ({("p" * 254) + "/k": "v"}, "metadata.labels[" + "p" * 254 + "/k]", "prefix"),
    ({"Bad_Prefix/k": "v"}, "metadata.labels[Bad_Prefix/k]", "prefix"),
    ({"-k": "v"}, "metadata.labels[-k]", "alphanumeric"),
    ({"k": "v" * 64}, "metadata.labels[k]", "longer than 63"),
    ({"k": "a b"}, "metadata.labels[k]", "label value"),
    ({f"k{i}": "v" for i in range(MAX_LABELS + 1)}, "metadata.labels", "limit of 64 labels"),
    ({f"{'p' * 200}/{i:02}{'k' * 60}": "v" * 63 for i in range(30)}, "metadata.labels", "bytes"),
]


@pytest.mark.parametrize(("labels", "field", "needle"), LABEL_TABLE)
def test_label_validation_names_field(labels: dict[str, str], field: str, needle: str) -> None:
    raw = {"metadata": {"name": "n1", "labels": labels}}
    with pytest.raises(ContractError) as err:
        from_k8s("node", raw)
    assert err.value.field == field
    assert needle in err.value.message


NP_BASE = {"metadata": {"name": "p", "namespace": "d"}, "spec": {"podSelector": {}}}


def _policy(ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {**NP_BASE, "spec": {"podSelector": {}, "ingress": ingress}}


POLICY_TABLE = [
    ([{"ports": [{"endPort": 90}]}], "spec.ingress[0].ports[0].endPort", "numeric port"),
    ([{"ports": [{"port": "http", "endPort": 90}]}], "spec.ingress[0].ports[0].endPort", "numeric"),
    ([{"ports": [{"port": 100, "endPort": 90}]}], "spec.ingress[0].ports[0].endPort", "below"),
    ([{"ports": [{"port": 0}]}], "spec.ingress[0].ports[0].port", "not a valid port"),
    (
        [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}],
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "inside cidr",
    ),
    (
        [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}],
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "strictly inside",
    ),
    (
        [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["fd00::/64"]}}]}],
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "inside cidr",
    ),
    (
        [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}],
        "spec.ingress[0].from[0].ipBlock.cidr",
        "CIDR",
    ),
    (
        [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}],
        "spec.ingress[0].from[0].ipBlock",
        "cannot be combined",
    ),
    ([{"from": [{}]}], "spec.ingress[0].from[0]", "a peer needs"),
    (
        [{"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]}],
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        "at least one value",
    ),
    (
        [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {"key": "a", "operator": "Exists", "values": ["x"]}
                            ]
                        }
                    }
                ]
            }
        ],
        "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        "takes no values",
    ),
    ([{"ports": [{"protocol": "ICMP"}]}], "spec.ingress[0].ports[0].protocol", "TCP"),
]


@pytest.mark.parametrize(("ingress", "field", "needle"), POLICY_TABLE)
def test_policy_validation_names_field(
    ingress: list[dict[str, Any]], field: str, needle: str
) -> None:
    with pytest.raises(ContractError) as err:
        from_k8s("networkpolicy", _policy(ingress))
    assert err.value.field == field
    assert needle in err.value.message


def test_policy_types_validation() -> None:
    raw = {**NP_BASE, "spec": {"policyTypes": ["Ingress", "Ingress"]}}
    with pytest.raises(ContractError) as err:
        from_k8s("networkpolicy", raw)
    assert err.value.field == "spec.policyTypes"
    raw = {**NP_BASE, "spec": {"policyTypes": ["Sideways"]}}
    with pytest.raises(ContractError) as err:
        from_k8s("networkpolicy", raw)
    assert err.value.field == "spec.policyTypes[0]"


def test_service_empty_cluster_ip_means_not_allocated() -> None:
    svc = from_k8s("service", _with("spec.clusterIP", ""))
    assert isinstance(svc, Service) and svc.cluster_ips == [] and not svc.headless


def test_service_port_zero_node_port_means_unset() -> None:
    svc = from_k8s("service", _with("spec.ports[0].nodePort", 0))
    assert isinstance(svc, Service) and svc.ports[0].node_port is None


def test_envelope_consistency() -> None:
    base: dict[str, Any] = {
        "kind": "service",
        "op": "UPSERT",
        "namespace": "default",
        "name": "web",
        "uid": "u",
        "resource_version": "1",
        "observed_at": NOW,
        "producer": "p",
        "object": {"kind": "service"},
    }
    assert K8sEvent.model_validate(base).msg_id() == "service/default/web/u/1/UPSERT"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"object": None}, "object"),
        ({"object": {"kind": "pod"}}, "object"),
        ({"namespace": None}, "namespace"),
        ({"kind": "node", "namespace": "x", "object": {"kind": "node"}}, "namespace"),
        ({"name": "Web"}, "name"),
        ({"observed_at": datetime(2024, 1, 1)}, "observed_at"),
        ({"api_version": "weir.v2"}, "api_version"),
    ]
    for change, field in bad:
        with pytest.raises(ValidationError) as err:
            K8sEvent.model_validate({**base, **change})
        assert _full_loc(err.value)[0] == field, change
    tomb = K8sEvent.model_validate({**base, "op": "DELETE", "object": None})
    assert tomb.msg_id().endswith("/DELETE")


def _full_loc(exc: ValidationError) -> tuple[str | int, ...]:
    """Location of the first error, including the sub-field named by a FieldIssue."""
    first = exc.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    return tuple(first["loc"]) + (cause.loc if isinstance(cause, FieldIssue) else ())


IDENTITY_BAD = [
    ({"id": 0}, "id"),
    ({"id": 65536}, "id"),
    ({"labels": ["k8s:b=1", "k8s:a=1"]}, "labels"),
    ({"labels": ["k8s:a=1", "k8s:a=1"]}, "labels"),
    ({"labels": ["app=web"]}, "labels"),
    ({"labels": ["k8s:app"]}, "labels"),
]


@pytest.mark.parametrize(("change", "field"), IDENTITY_BAD)
def test_identity_validation(change: dict[str, Any], field: str) -> None:
    data = {"id": 300, "labels": ["k8s:app=web"], "observed_at": NOW, **change}
    with pytest.raises(ValidationError) as err:
        Identity.model_validate(data)
    assert _full_loc(err.value)[0] == field


def test_ipcache_flow_status_validation() -> None:
    with pytest.raises(ValidationError, match="needs an identity"):
        IPCacheEntry(ip="10.0.0.1", observed_at=NOW)
    with pytest.raises(ValidationError, match="not a valid IP"):
        IPCacheEntry(ip="10.0.0", identity=5, observed_at=NOW)
    with pytest.raises(ValidationError, match="exactly one"):
        flow(l4={"tcp": None, "udp": None})
    with pytest.raises(ValidationError, match="only set on DROPPED"):
        flow(verdict="FORWARDED")
    with pytest.raises(ValidationError, match="not IPv6"):
        flow(ip={"source": "10.0.0.1", "destination": "fd00::1", "ip_version": "IPv6"})
    with pytest.raises(ValidationError):
        flow(verdict="LOST")
    with pytest.raises(ValidationError, match="exceed capacity"):
        NodeStatus(node="n", maps={"m": {"entries": 3, "capacity": 2}}, time=NOW)
    assert identity_label("k8s", "app", "web") == "k8s:app=web"


@given(st.sampled_from(VERDICTS), st.integers(1, 65535), st.integers(1, 65535))
def test_flow_round_trip_property(verdict: str, sport: int, dport: int) -> None:
    f = flow(
        verdict=verdict,
        drop_reason_desc="POLICY_DENIED" if verdict == "DROPPED" else None,
        l4={"udp": {"source_port": sport, "destination_port": dport}},
    )
    assert Flow.model_validate_json(f.model_dump_json()) == f


@pytest.mark.parametrize(
    "name", sorted(p.name for p in FIXTURES.glob("*-realistic*.yaml")), ids=lambda n: n[:-5]
)
@pytest.mark.parametrize("op", [Op.UPSERT, Op.DELETE])
def test_encoded_is_model_dump_json_byte_for_byte(name: str, op: Op) -> None:
    raw = load(name)
    raw["metadata"].update(uid="u-1", resourceVersion="9")
    kind = name.split("-", 1)[0]
    event = to_event(kind, op, raw, "producer-1", NOW)
    body, data = event.encoded()
    assert data == event.model_dump_json().encode()
    assert event.object is not None and body == event.object.model_dump_json().encode()
    assert K8sEvent.model_validate_json(data) == event


def test_encoded_tombstone_without_payload() -> None:
    tomb = K8sEvent(**_event_fields(op=Op.DELETE, object=None))
    body, data = tomb.encoded()
    assert body == b"null"
    assert data == tomb.model_dump_json().encode()


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["service", "endpointslice", "node"]),
    st.sampled_from([Op.UPSERT, Op.DELETE]),
    st.text(min_size=1, max_size=12),
    st.text(min_size=1, max_size=12),
    st.text(min_size=1, max_size=12),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3))])),
)
def test_encoded_head_is_the_models_for_any_text_and_time(
    kind: str, op: Op, uid: str, rv: str, producer: str, at: datetime
) -> None:
    """encoded() serialises the envelope from its fields (not the model's serializer): escaping
    of any text, timestamps with and without microseconds, cluster-scoped null namespace."""
    raw = {"metadata": {"name": "web", "namespace": "shop"}, "addressType": "IPv4"}
    payload = None if op is Op.DELETE else from_k8s(kind, raw)
    try:
        event = K8sEvent.checked(
            kind=kind,
            op=op,
            namespace=None if kind == "node" else "shop",
            name="web",
            uid=uid,
            resource_version=rv,
            observed_at=at,
            producer=producer,
            object=payload,
        )
    except ValidationError:
        return  # e.g. a lone surrogate: not a valid event, nothing to encode
    try:
        expected = event.model_dump_json().encode()
    except PydanticSerializationError:
        with pytest.raises(PydanticSerializationError):
            event.encoded()
        return
    body, data = event.encoded()
    assert data == expected
    assert body == (b"null" if payload is None else payload.model_dump_json().encode())


def _event_fields(**change: Any) -> dict[str, Any]:
    raw = load("service-realistic.yaml")
    payload = from_k8s("service", raw)
    fields: dict[str, Any] = dict(
        kind="service",
        op=Op.UPSERT,
        namespace="default",
        name="web",
        uid="u-1",
        resource_version="7",
        observed_at=datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        producer="p",
        object=payload,
    )
    return fields | change


def test_checked_event_equals_the_validated_one() -> None:
    fields = _event_fields()
    fast, full = K8sEvent.checked(**fields), K8sEvent(**fields)
    assert fast == full
    assert fast.observed_at == NOW and fast.observed_at.tzinfo is UTC
    assert fast.model_dump_json() == full.model_dump_json()
    assert fast.model_fields_set == full.model_fields_set


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"namespace": None}, "namespace"),
        ({"namespace": "Not_A_Label"}, "namespace"),
        ({"name": "Bad_Name"}, "name"),
        ({"name": ""}, "name"),
        ({"uid": ""}, "uid"),
        ({"producer": ""}, "producer"),
        ({"object": None}, "object"),
        ({"kind": "pod"}, "object"),
        ({"kind": "widget"}, "kind"),
        ({"observed_at": datetime(2024, 5, 1, 10, 0)}, "observed_at"),
    ],
)
def test_checked_event_rejects_like_the_model(change: dict[str, Any], field: str) -> None:
    fields = _event_fields(**change)
    with pytest.raises(ValidationError) as fast:
        K8sEvent.checked(**fields)
    with pytest.raises(ValidationError) as full:
        K8sEvent(**fields)

    def summary(exc: ValidationError) -> list[tuple[Any, ...]]:
        return [(e["type"], e["loc"], e["msg"]) for e in exc.errors()]

    assert summary(fast.value) == summary(full.value)
    assert field in str(fast.value)
