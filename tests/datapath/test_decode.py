"""The fast decoder against the contract: same Change for valid input, same rejection for bad.

Valid events are built the way the watcher builds them (raw Kubernetes JSON -> ``to_event`` ->
``model_dump_json``), so the shapes are the ones on the bus. For each, the fast path and the
contract path must give equal views; the common shapes must actually take the fast path. Bad
input is made by mutating a valid message field by field: the fast path must decline it (None)
and :func:`decode` must raise the contract's ValidationError naming the field.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.v1 import EndpointSlice, K8sEvent, Op, to_event
from contracts.v1.meta import MAX_LABELS, check_label_key, check_label_value
from services.datapath.decode import _LABEL_KEY_MAX, decode, decode_fast
from services.datapath.model import Change, DesiredState, SliceView
from services.datapath.policy_sync import PolicyInputs, SliceDirectory, SliceIndex

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def service(name: str = "web", **spec: Any) -> dict[str, Any]:
    ports = [{"name": "http", "port": 80, "targetPort": 8080}]
    body: dict[str, Any] = {"clusterIP": "10.96.0.10", "ports": ports}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop", "uid": "u1", "resourceVersion": "7",
                         "labels": {"app.kubernetes.io/name": "web"}},
            "spec": body}  # fmt: skip


def eps(name: str = "web-abc", address_type: str = "IPv4", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "uid": "u2", "resourceVersion": "9",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "nodeName": "node-a",
             "zone": "z1", "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1",
                                         "uid": "p1"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "serving": True,
                                                       "terminating": True}},
            {"addresses": ["10.0.0.3"], "conditions": {}, "hints": {"forZones": [{"name": "z1"}]}},
        ],
    }  # fmt: skip
    body.update(extra)
    return body


def wire(kind: str, raw: dict[str, Any], op: Op = Op.UPSERT) -> bytes:
    return to_event(kind, op, raw, "watcher-0", AT).model_dump_json().encode()


def contract(data: bytes) -> Change:
    return Change.of(K8sEvent.model_validate_json(data))


FAST = {
    "service": wire("service", service()),
    "service multi-port, Local, affinity, external and LB IPs": wire(
        "service",
        service(
            ports=[
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
            ],
            type="LoadBalancer",
            externalTrafficPolicy="Local",
            internalTrafficPolicy="Local",
            sessionAffinity="ClientIP",
            externalIPs=["192.0.2.1"],
            publishNotReadyAddresses=True,
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        ),
    ),
    "headless service": wire("service", service(clusterIP="None")),
    "service delete": wire("service", service(), Op.DELETE),
    "endpointslice": wire("endpointslice", eps()),
    "endpointslice without ports": wire("endpointslice", eps(ports=None)),
    "endpointslice delete": wire("endpointslice", eps(), Op.DELETE),
}
CONTRACT_ONLY = {
    "named target port": wire(
        "service", service(ports=[{"name": "http", "port": 80, "targetPort": "http"}])
    ),
    "dual-stack service": wire(
        "service", service(clusterIP="10.96.0.10", clusterIPs=["10.96.0.10", "fd00::10"])
    ),
    "ExternalName": wire(
        "service", service(type="ExternalName", externalName="db.example.com", clusterIP=None)
    ),
    "IPv6 slice": wire(
        "endpointslice",
        eps(
            address_type="IPv6",
            endpoints=[{"addresses": ["fd00::1"], "conditions": {"ready": True}}],
        ),
    ),
    "FQDN slice": wire(
        "endpointslice",
        eps(
            address_type="FQDN",
            endpoints=[{"addresses": ["db.example.com"], "conditions": {"ready": True}}],
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(FAST))
def test_fast_path_equals_contract(name: str) -> None:
    data = FAST[name]
    fast = decode_fast(data)
    assert fast is not None, "a shape the watcher publishes must take the fast path"
    assert fast == contract(data)
    assert decode(data) == fast


@pytest.mark.parametrize("name", sorted(CONTRACT_ONLY))
def test_other_shapes_take_the_contract_path(name: str) -> None:
    data = CONTRACT_ONLY[name]
    assert decode_fast(data) is None
    assert decode(data) == contract(data)


def test_views_drive_the_model_like_the_contract_objects() -> None:
    """Frontends from decoded views equal frontends from the contract objects."""
    by_view, by_event = DesiredState("node-a"), DesiredState("node-a")
    for data in (FAST["service"], FAST["endpointslice"]):
        by_view.apply(decode(data))
        by_event.apply(K8sEvent.model_validate_json(data))
    assert by_view.flush() == by_event.flush()
    assert by_view.frontends == by_event.frontends
    assert by_view.frontends  # the case is not vacuous


def mutate(data: bytes, path: tuple[Any, ...], value: Any) -> bytes:
    doc = copy.deepcopy(json.loads(data))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    elif isinstance(target, list) and path[-1] == len(target):
        target.append(value)
    else:
        target[path[-1]] = value
    return json.dumps(doc).encode()


DELETE = object()
SVC, SLICE = FAST["service"], FAST["endpointslice"]
BAD = [
    (SVC, ("object", "cluster_ips", 0), "10.96.0.300", "cluster_ips"),
    (SVC, ("object", "ports", 0, "port"), 0, "port"),
    (SVC, ("object", "ports", 0, "port"), True, "port"),
    (SVC, ("object", "ports", 0, "target_port"), 80.0, "target_port"),
    (SVC, ("object", "ports", 0, "protocol"), "ICMP", "protocol"),
    (SVC, ("object", "session_affinity_timeout_seconds"), 0, "session_affinity_timeout_seconds"),
    (SVC, ("object", "selector"), {"bad key!": "x"}, "selector"),
    (SVC, ("object", "labels"), {"a": "-x"}, "labels"),
    (SVC, ("object", "headless"), True, "cluster_ips"),
    (
        SVC,
        ("object", "ports", 1),
        {
            "name": "http",
            "protocol": "TCP",
            "port": 80,
            "target_port": 81,
            "node_port": None,
            "app_protocol": None,
        },
        "ports",
    ),
    (SVC, ("object", "surprise"), 1, "surprise"),
    (SVC, ("object", "kind"), "endpointslice", "object"),
    (SVC, ("name",), "web.v2", "name"),
    (SVC, ("namespace",), "Shop", "namespace"),
    (SVC, ("namespace",), None, "namespace"),
    (SVC, ("observed_at",), "2026-01-02T03:04:05", "observed_at"),
    (SVC, ("op",), "PATCH", "op"),
    (SVC, ("object",), None, "object"),
    (SVC, ("uid",), "", "uid"),
    (SVC, ("producer",), DELETE, "producer"),
    (SLICE, ("object", "endpoints", 0, "addresses", 0), "10.0.0.01", "addresses"),
    (SLICE, ("object", "endpoints", 0, "addresses", 0), "fd00::1", "endpoints"),
    (SLICE, ("object", "endpoints", 0, "addresses"), [], "addresses"),
    (SLICE, ("object", "endpoints", 0, "conditions", "ready"), "true", "ready"),
    (SLICE, ("object", "endpoints", 0, "node_name"), "Node_A", "node_name"),
    (SLICE, ("object", "endpoints", 0, "zone"), "", "zone"),
    (SLICE, ("object", "endpoints", 0, "target_ref", "name"), "", "name"),
    (SLICE, ("object", "ports", 0, "port"), 70000, "port"),
    (SLICE, ("object", "service_name"), "Web", "service_name"),
    (SLICE, ("object", "address_type"), "IPv5", "address_type"),
]


@pytest.mark.parametrize(("base", "path", "value", "field"), BAD)
def test_invalid_input_is_declined_and_rejected_naming_the_field(
    base: bytes, path: tuple[Any, ...], value: Any, field: str
) -> None:
    data = mutate(base, path, value)
    assert decode_fast(data) is None
    with pytest.raises(ValidationError) as info:
        decode(data)
    where = [".".join(str(p) for p in e["loc"]) + " " + e["msg"] for e in info.value.errors()]
    assert any(field in w for w in where), where


def test_not_json_is_rejected() -> None:
    with pytest.raises(ValidationError):
        decode(b"{not json")


def test_policy_slice_index_from_view_equals_from_contract() -> None:
    """The policy loop indexes decoded views; flow naming must see what the objects say."""
    data = FAST["endpointslice"]
    change = decode(data)
    event = K8sEvent.model_validate_json(data)
    assert isinstance(change.obj, SliceView) and isinstance(event.object, EndpointSlice)
    index = SliceIndex.of_view(change.obj, change.owner)
    assert index == SliceIndex.of(event.object)
    inputs = PolicyInputs()
    inputs.absorb_slice(("shop", "web-abc"), index)
    assert inputs.service_of("10.0.0.2", 8080, "TCP") == ("shop", "web")
    assert inputs.service_of("10.0.0.2", 8081, "TCP") is None
    assert inputs.service_of("10.0.0.9", 8080, "TCP") is None
    inputs.absorb_k8s(K8sEvent.model_validate_json(FAST["endpointslice delete"]))
    assert inputs.service_of("10.0.0.2", 8080, "TCP") is None


def test_slice_directory_names_services_like_the_policy_index() -> None:
    """Fed the LB loop's decoded changes, the shared directory answers flow naming exactly as
    the policy loop's own index of the same slices does (upsert, other kinds, delete)."""
    change = decode(FAST["endpointslice"])
    directory = SliceDirectory()
    directory.absorb(change)
    directory.absorb(decode(FAST["service"]))  # other kinds: ignored
    assert len(directory) == 1
    inputs = PolicyInputs()
    inputs.absorb_k8s(K8sEvent.model_validate_json(FAST["endpointslice"]))
    for probe in (
        ("10.0.0.2", 8080, "TCP"),
        ("10.0.0.2", 8081, "TCP"),
        ("10.0.0.2", 8080, "UDP"),
        ("10.0.0.9", 8080, "TCP"),
    ):
        assert directory.service_of(*probe) == inputs.service_of(*probe), probe
    assert directory.service_of("10.0.0.2", 8080, "TCP") == ("shop", "web")
    directory.absorb(decode(FAST["endpointslice delete"]))
    assert len(directory) == 0 and directory.service_of("10.0.0.2", 8080, "TCP") is None


# Label keys and values built from the characters the rules care about, so that both valid and
# invalid ones are common: the fast schema must accept exactly what the contract accepts for
# keys up to its length limit, and send every longer key (valid or not) to the contract path.
_KEY_CHARS = st.sampled_from([*"ab9Z-_./", "é"])


@settings(max_examples=400, deadline=None)
@given(
    key=st.text(_KEY_CHARS, min_size=0, max_size=80),
    value=st.text(_KEY_CHARS, min_size=0, max_size=70),
)
def test_fast_label_rule_equals_the_contract(key: str, value: str) -> None:
    try:
        check_label_key(key)
        check_label_value(value)
        valid = True
    except ValueError:
        valid = False
    data = mutate(SVC, ("object", "labels"), {key: value})
    fast = decode_fast(data)
    if len(key) <= _LABEL_KEY_MAX:
        assert (fast is not None) == valid
    else:
        assert fast is None
    if valid:
        assert decode(data) == contract(data)
    else:
        with pytest.raises(ValidationError) as info:
            decode(data)
        assert any("labels" in str(e["loc"]) for e in info.value.errors())


@pytest.mark.parametrize(
    ("labels", "fast"),
    [
        ({f"k{i}": "v" for i in range(MAX_LABELS)}, True),
        ({f"example.com/{'k' * 50}{i:02}": "v" * 63 for i in range(MAX_LABELS)}, True),
        ({f"{'p' * 200}/k": "v"}, False),  # valid, but longer than the fast limit
    ],
)
def test_label_maps_at_the_limits(labels: dict[str, str], fast: bool) -> None:
    data = mutate(SLICE, ("object", "labels"), labels)
    assert (decode_fast(data) is not None) is fast
    assert decode(data) == contract(data)


def test_too_many_labels_are_rejected_naming_the_field() -> None:
    data = mutate(SLICE, ("object", "labels"), {f"k{i}": "v" for i in range(MAX_LABELS + 1)})
    assert decode_fast(data) is None
    with pytest.raises(ValidationError) as info:
        decode(data)
    assert any("labels" in str(e["loc"]) for e in info.value.errors())
