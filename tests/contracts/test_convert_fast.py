"""The fast Service / EndpointSlice converter against the contract path: same event, or declined.

For every input, :func:`upsert_event` must either return None (the caller then takes the contract
path) or an event equal to ``to_event(kind, UPSERT, ...)`` in every model of the tree: same
class, same field values in the same order, the same fields set (what ``exclude_unset`` reads),
and the same JSON. It must never accept what the contract rejects. Inputs: the realistic
fixtures, the benchmark's objects, a table of edge shapes (IPv6, FQDN slices, named target ports,
ExternalName, labels at the limits, nulls, unknown fields) and Hypothesis objects drawn from
valid, edge and invalid values for every field the converter reads. The common shapes must take
the fast path (else the fast path silently stops paying).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from bench import objects as bench_objects
from contracts.v1 import ContractError, K8sEvent, Op, to_event
from contracts.v1.convert_fast import _LABEL_KEY_MAX, _SERVICE_EVENT, upsert_event
from contracts.v1.meta import MAX_LABELS
from tests.contracts.conftest import load

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def assert_same_model(fast: Any, slow: Any, where: str = "event") -> None:
    """Equal values, and for models the same class, field order, fields set and extras."""
    assert type(fast) is type(slow), where
    if isinstance(slow, BaseModel):
        assert list(fast.__dict__) == list(slow.__dict__), where
        assert fast.__pydantic_fields_set__ == slow.__pydantic_fields_set__, where
        assert fast.__pydantic_extra__ == slow.__pydantic_extra__, where
        assert getattr(fast, "__pydantic_private__", None) == getattr(
            slow, "__pydantic_private__", None
        ), where
        for name, value in slow.__dict__.items():
            assert_same_model(fast.__dict__[name], value, f"{where}.{name}")
    elif isinstance(slow, list):
        assert len(fast) == len(slow), where
        for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
            assert_same_model(a, b, f"{where}[{i}]")
    elif isinstance(slow, dict):
        assert list(fast.items()) == list(slow.items()), where  # order too: labels are sorted
    else:
        assert fast == slow, where


def contract(kind: str, obj: Any, at: datetime = AT) -> K8sEvent | ContractError:
    try:
        return to_event(kind, Op.UPSERT, copy.deepcopy(obj), "watcher-0", at)
    except ContractError as exc:
        return exc


def check(kind: str, obj: Any, at: datetime = AT) -> K8sEvent | None:
    """The fast result, held to the contract's; returns it (None when declined)."""
    expected = contract(kind, obj, at)
    before = copy.deepcopy(obj)
    fast = upsert_event(kind, obj, "watcher-0", at)
    assert obj == before  # the input is read, never changed
    if fast is None:
        return None
    assert isinstance(expected, K8sEvent), f"fast accepted what the contract rejects: {expected}"
    assert_same_model(fast, expected)
    assert fast == expected
    assert fast.encoded() == expected.encoded()
    assert fast.model_dump_json().encode() == expected.encoded()[1]
    return fast


def service(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "type": "ClusterIP",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        "selector": {"app": "web"},
        "sessionAffinity": "None",
    }
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "0b1c-77",
            "resourceVersion": "4711",
            "labels": {"app.kubernetes.io/name": "web", "tier": "front"},
            "annotations": {"note": "x"},
            "creationTimestamp": "2024-05-01T00:00:00Z",
        },
        "spec": body,
        "status": {"loadBalancer": {}},
    }


def eps(address_type: str = "IPv4", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc12",
            "namespace": "shop",
            "uid": "e-1",
            "resourceVersion": "99",
            "labels": {"kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/x": "y"},
        },
        "addressType": address_type,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": ["10.0.0.1"],
                "conditions": {"ready": True},
                "nodeName": "node-a",
                "zone": "z1",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "p1"},
            },
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "terminating": True}},
            {"addresses": ["10.0.0.3"], "conditions": {}, "hints": {"forZones": [{"name": "z1"}]}},
        ],
    }
    body.update(extra)
    return body


def with_meta(obj: dict[str, Any], **meta: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"].update(meta)
    return obj


many_labels = {f"k{i}": "v" * 63 for i in range(MAX_LABELS)}
long_key = "a" * (_LABEL_KEY_MAX - 4) + "/b.c"

# (name, kind, object, takes the fast path?)
CASES: list[tuple[str, str, Any, bool]] = [
    ("service", "service", service(), True),
    ("service, nothing but ports", "service", {"metadata": service()["metadata"],
                                               "spec": {"ports": [{"port": 80}]}}, True),
    ("service, no spec", "service", {"metadata": service()["metadata"]}, True),
    ("service, every fast field", "service", service(
        type="LoadBalancer", externalIPs=["192.0.2.1"], externalTrafficPolicy="Local",
        internalTrafficPolicy="Local", publishNotReadyAddresses=True, sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        trafficDistribution="PreferClose",
        ports=[{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080,
                "appProtocol": "http"},
               {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353,
                "nodePort": 0}],
    ) | {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "lb"}]}}},
     True),
    ("service, topology annotation", "service", with_meta(
        service(), annotations={"service.kubernetes.io/topology-mode": "Auto"}), True),
    ("service, headless", "service", service(clusterIP="None", clusterIPs=["None"]), True),
    ("service, headless with selector none", "service",
     service(clusterIP="None", clusterIPs=None, selector=None), True),
    ("service, ExternalName", "service",
     service(type="ExternalName", externalName="db.example.com", clusterIP=None,
             clusterIPs=None), True),
    ("service, ExternalName without a name", "service",
     service(type="ExternalName", clusterIP=None, clusterIPs=None), False),
    ("service, IPv6", "service", service(clusterIP="fd00::a", clusterIPs=["fd00::a"]), False),
    ("service, dual stack", "service",
     service(clusterIPs=["10.96.0.10", "fd00::a"]), False),
    ("service, two IPv4", "service", service(clusterIPs=["10.96.0.10", "10.96.0.11"]), False),
    ("service, non-canonical IPv4", "service",
     service(clusterIP="010.96.0.10", clusterIPs=None), False),
    ("service, clusterIP None wins over clusterIPs", "service",
     service(clusterIP="None", clusterIPs=["1.2.3.4"]), True),
    ("service, digit target port", "service",
     service(ports=[{"port": 80, "targetPort": "8080"}]), False),
    ("service, target port a--b", "service", service(ports=[{"port": 80, "targetPort": "a--b"}]),
     False),
    ("service, target port 0", "service", service(ports=[{"port": 80, "targetPort": 0}]), False),
    ("service, bool port", "service", service(ports=[{"port": True}]), False),
    ("service, duplicate ports", "service",
     service(ports=[{"name": "a", "port": 80}, {"name": "b", "port": 80}]), False),
    ("service, unnamed ports", "service", service(ports=[{"port": 80}, {"port": 81}]), False),
    ("service, 64 labels of 63", "service", with_meta(service(), labels=many_labels), True),
    ("service, 65 labels", "service",
     with_meta(service(), labels=many_labels | {"x": "y"}), False),
    ("service, longest fast label key", "service",
     with_meta(service(), labels={long_key: "v"}), True),
    ("service, longer label key", "service",
     with_meta(service(), labels={"a" * 200 + "/b": "v"}), False),
    ("service, bad label", "service", with_meta(service(), labels={"a/b/c": "v"}), False),
    ("service, labels a list", "service", with_meta(service(), labels=["x"]), False),
    ("service, empty labels", "service", with_meta(service(), labels={}), True),
    ("service, selector empty", "service", service(selector={}), True),
    ("service, unknown fields", "service",
     service(ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack", fancy={"a": 1}), True),
    ("service, null type", "service", service(type=None), True),
    ("service, spec a list", "service", {**service(), "spec": []}, False),
    ("service, bad name", "service", with_meta(service(), name="Web"), False),
    ("service, dotted name", "service", with_meta(service(), name="a.b"), False),
    ("service, no uid", "service", with_meta(service(), uid=""), False),
    ("service, no namespace", "service", with_meta(service(), namespace=None), False),
    ("service, int resourceVersion", "service", with_meta(service(), resourceVersion=5), False),
    ("service, affinity 0", "service",
     service(sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}), False),
    ("service, bad policy", "service", service(externalTrafficPolicy="Nope"), False),
    ("service, string bool", "service", service(publishNotReadyAddresses="true"), False),
    ("slice", "endpointslice", eps(), True),
    ("slice, no endpoints", "endpointslice", eps(endpoints=None, ports=None), True),
    ("slice, dotted name", "endpointslice", with_meta(eps(), name="web.abc"), True),
    ("slice, all-ports port", "endpointslice", eps(ports=[{"name": "", "protocol": "UDP"}]),
     True),
    ("slice, hints for nodes", "endpointslice", eps(endpoints=[
        {"addresses": ["10.0.0.9"], "conditions": {"ready": True, "serving": False},
         "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]}}]), True),
    ("slice, empty hints", "endpointslice",
     eps(endpoints=[{"addresses": ["10.0.0.9"], "hints": {}}]), True),
    ("slice, IPv6", "endpointslice",
     eps("IPv6", endpoints=[{"addresses": ["fd00::1"], "conditions": {}}]), False),
    ("slice, FQDN", "endpointslice",
     eps("FQDN", endpoints=[{"addresses": ["db.example.com"]}]), False),
    ("slice, IPv6 address in IPv4", "endpointslice",
     eps(endpoints=[{"addresses": ["fd00::1"]}]), False),
    ("slice, no addresses", "endpointslice", eps(endpoints=[{"addresses": []}]), False),
    ("slice, null ready", "endpointslice",
     eps(endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"ready": None}}]), True),
    ("slice, string ready", "endpointslice",
     eps(endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]), False),
    (
        "slice, ready 1 (equal to True, not a bool)",
        "endpointslice",
        eps(endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"ready": 1}}]),
        False,
    ),
    (
        "slice, terminating 0",
        "endpointslice",
        eps(endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"terminating": 0}}]),
        False,
    ),
    ("slice, bad node", "endpointslice",
     eps(endpoints=[{"addresses": ["10.0.0.1"], "nodeName": "Node_A"}]), False),
    ("slice, empty zone name", "endpointslice",
     eps(endpoints=[{"addresses": ["10.0.0.1"], "hints": {"forZones": [{}]}}]), False),
    ("slice, long port name", "endpointslice", eps(ports=[{"name": "p" * 64}]), False),
    ("slice, bad service label", "endpointslice",
     with_meta(eps(), labels={"kubernetes.io/service-name": "Web"}), False),
    ("slice, no labels", "endpointslice", with_meta(eps(), labels=None), True),
    ("slice, endpoint a string", "endpointslice", eps(endpoints=["10.0.0.1"]), False),
    ("slice, bad name", "endpointslice", with_meta(eps(), name="web_abc"), False),
    ("slice, unknown fields", "endpointslice",
     eps(endpoints=[{"addresses": ["10.0.0.1"], "deprecatedTopology": {"a": "b"}}]), True),
]  # fmt: skip


@pytest.mark.parametrize(("name", "kind", "obj", "fast"), CASES, ids=[c[0] for c in CASES])
def test_fast_event_is_the_contract_event(name: str, kind: str, obj: Any, fast: bool) -> None:
    event = check(kind, obj)
    assert (event is not None) == fast, name


def test_realistic_fixtures() -> None:
    """The slice takes the fast path; the dual-stack Service takes the contract path (IPv6 is
    not a fast shape) and its single-stack twin the fast one."""
    assert check("endpointslice", load("endpointslice-realistic.yaml")) is not None
    dual_stack = load("service-realistic.yaml")
    assert check("service", dual_stack) is None
    single_stack = copy.deepcopy(dual_stack)
    single_stack["spec"].update(clusterIPs=["10.96.12.34"], ipFamilies=["IPv4"])
    assert check("service", single_stack) is not None


def test_benchmark_objects_take_the_fast_path() -> None:
    for i in range(3):
        svc = bench_objects.service(bench_objects.service_name(i), bench_objects.vip(i))
        ips = [bench_objects.backend_ip(i, k, 4) for k in range(4)]
        es = bench_objects.endpoint_slice(bench_objects.service_name(i), ips)
        for kind, obj in (("service", svc), ("endpointslice", es)):
            obj["metadata"].update(uid=f"u{i}", resourceVersion=str(i + 1))
            assert check(kind, obj) is not None


@pytest.mark.parametrize(
    "at",
    [AT, AT.replace(microsecond=0), AT.astimezone(timezone(timedelta(hours=-5)))],
    ids=["utc", "whole-second", "utc-5"],
)
def test_observed_at_is_stored_in_utc(at: datetime) -> None:
    event = check("service", service(), at)
    assert event is not None and event.observed_at.tzinfo is UTC


def test_declines_other_kinds_naive_times_and_non_dicts() -> None:
    assert upsert_event("pod", service(), "w", AT) is None
    assert upsert_event("service", service(), "w", AT.replace(tzinfo=None)) is None
    assert upsert_event("service", service(), "", AT) is None
    assert upsert_event("service", [service()], "w", AT) is None
    assert upsert_event("service", {"metadata": []}, "w", AT) is None


def test_fast_schema_is_its_own_not_the_contract_validators() -> None:
    """pydantic-core would reuse a model class's own validator (Python callbacks) for a schema
    naming the class; the fast schema's errors must be its own (Rust constraint errors)."""
    bad = {"kind": "service", "op": Op.UPSERT, "namespace": "a", "name": "b", "uid": "u",
           "resource_version": "1", "observed_at": AT, "producer": "p",
           "object": {"ports": [{"port": 0, "target_port": 1}]}}  # fmt: skip
    with pytest.raises(ValidationError) as exc:
        _SERVICE_EVENT.validate_python(bad)
    errors = exc.value.errors()
    assert [e["type"] for e in errors] == ["greater_than_equal"]


# --- Hypothesis: every field the converters read, drawn from valid, edge and invalid values ---

ips = st.sampled_from(
    ["10.0.0.1", "10.96.0.10", "255.255.255.255", "010.0.0.1", "fd00::1", "::ffff:10.0.0.1",
     "None", "", "10.0.0.256", "db.example.com"]
)  # fmt: skip
names = st.sampled_from(["web", "http", "a.b", "Web", "", "a--b", "8080", "x" * 63, "x" * 64])
ports = st.one_of(st.sampled_from([80, 8080, 0, 65535, 65536, -1, True]), names, st.none())
protocols = st.sampled_from(["TCP", "UDP", "SCTP", "tcp", None])
label_keys = st.sampled_from(
    ["app", "kubernetes.io/service-name", "a/b/c", "/x", "-a", "A.b_c", long_key, "a" * 64,
     "b" * 70 + "/c"]
)  # fmt: skip
label_values = st.sampled_from(["web", "", "v" * 63, "v" * 64, "-x", "a_b.C"])
labels = st.one_of(
    st.none(),
    st.dictionaries(label_keys, label_values, max_size=4),
    st.just(many_labels),
    st.just(["app"]),
)
nulls = st.none()


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(nulls, strategy)


service_ports = st.lists(
    st.fixed_dictionaries(
        {"port": ports},
        optional={
            "name": maybe(names),
            "protocol": protocols,
            "targetPort": ports,
            "nodePort": st.sampled_from([0, 30080, 70000, None]),
            "appProtocol": st.sampled_from(["http", "", None, 3]),
        },
    ),
    max_size=3,
)
service_specs = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "X"]),
        "clusterIP": maybe(ips),
        "clusterIPs": maybe(st.lists(ips, max_size=3)),
        "externalIPs": maybe(st.lists(ips, max_size=2)),
        "externalName": maybe(names),
        "ports": st.one_of(service_ports, st.just({"port": 80})),
        "selector": labels,
        "sessionAffinity": st.sampled_from(["None", "ClientIP", "Sticky"]),
        "sessionAffinityConfig": st.sampled_from(
            [
                {},
                {"clientIP": {"timeoutSeconds": 60}},
                {"clientIP": {"timeoutSeconds": 0}},
                {"clientIP": None},
                {"clientIP": 3},
            ]
        ),
        "externalTrafficPolicy": st.sampled_from(["Cluster", "Local", "Other"]),
        "internalTrafficPolicy": st.sampled_from(["Cluster", "Local"]),
        "publishNotReadyAddresses": st.sampled_from([True, False, "true"]),
        "trafficDistribution": st.sampled_from(["PreferClose", "PreferSameNode", "Nearby"]),
        "unknownField": st.just({"x": 1}),
    },
)
metas = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["web", "web.x", "Web", ""]),
        "namespace": st.sampled_from(["shop", "Shop", ""]),
        "uid": st.sampled_from(["u-1", ""]),
        "resourceVersion": st.sampled_from(["7", ""]),
    },
    optional={
        "labels": labels,
        "annotations": st.sampled_from(
            [
                {},
                {"service.kubernetes.io/topology-mode": "auto"},
                {"service.kubernetes.io/topology-aware-hints": "Auto"},
                ["x"],
            ]
        ),
    },
)
statuses = st.sampled_from(
    [{}, {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}},
     {"loadBalancer": {"ingress": [{"ip": "fd00::9"}, {"hostname": "x"}]}},
     {"loadBalancer": {"ingress": ["x"]}}, {"loadBalancer": []}]
)  # fmt: skip


def valid_meta(draw: st.DrawFn, meta: dict[str, Any]) -> dict[str, Any]:
    """Mostly valid metadata, so that most examples reach the payload."""
    if draw(st.integers(0, 3)):
        meta.update(name="web", namespace="shop", uid="u-1", resourceVersion="7")
    return meta


@st.composite
def services(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": valid_meta(draw, draw(metas))}
    spec = draw(service_specs)
    if draw(st.integers(0, 7)):
        obj["spec"] = spec
    if draw(st.booleans()):
        obj["status"] = draw(statuses)
    return obj


conditions = st.fixed_dictionaries(
    {},
    optional={"ready": st.sampled_from([True, False, None, "yes"]),
              "serving": st.sampled_from([True, False, None]),
              "terminating": st.sampled_from([True, False, None, 1])},
)  # fmt: skip
endpoints = st.fixed_dictionaries(
    {"addresses": st.lists(ips, max_size=2)},
    optional={
        "conditions": conditions,
        "nodeName": st.sampled_from(["node-a", "node.a", "Node", ""]),
        "zone": st.sampled_from(["z1", ""]),
        "hints": st.sampled_from(
            [
                {},
                {"forZones": [{"name": "z1"}]},
                {"forNodes": [{"name": "n1"}, {}]},
                {"forZones": "z1"},
            ]
        ),
        "targetRef": st.sampled_from(
            [
                {"kind": "Pod", "name": "p", "namespace": "shop", "uid": "1"},
                {"kind": "Pod"},
                {"kind": "Pod", "name": "p", "namespace": "Shop"},
                {},
            ]
        ),
        "extra": st.just(1),
    },
)
endpoint_ports = st.fixed_dictionaries(
    {},
    optional={"name": st.sampled_from(["http", "", "p" * 64, None]), "protocol": protocols,
              "port": ports, "appProtocol": st.sampled_from(["h2", None])},
)  # fmt: skip


@st.composite
def slices(draw: st.DrawFn) -> dict[str, Any]:
    meta = valid_meta(draw, draw(metas))
    if draw(st.integers(0, 3)) and isinstance(meta.get("labels"), dict):
        meta["labels"] = meta["labels"] | {
            "kubernetes.io/service-name": draw(st.sampled_from(["web", "Web"]))
        }
    obj: dict[str, Any] = {"metadata": meta}
    obj |= draw(
        st.fixed_dictionaries(
            {"addressType": st.sampled_from(["IPv4", "IPv4", "IPv6", "FQDN", "ipv4"])},
            optional={
                "endpoints": st.lists(endpoints, max_size=3),
                "ports": st.lists(endpoint_ports, max_size=2),
            },
        )
    )
    return obj


settings_ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings_
@given(services())
def test_services_fast_or_declined(obj: dict[str, Any]) -> None:
    event("fast" if check("service", obj) is not None else "declined")


@settings_
@given(slices())
def test_slices_fast_or_declined(obj: dict[str, Any]) -> None:
    event("fast" if check("endpointslice", obj) is not None else "declined")


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))]),
    )
)
def test_any_aware_time(at: datetime) -> None:
    assert check("endpointslice", eps(), at) is not None
