"""Pure pieces: ClusterIP allocation, selectors, patches, tables, discovery, paths."""

from __future__ import annotations

from typing import Any

import pytest

from services.apiserver import resources
from services.apiserver.clusterip import ClusterIPAllocator
from services.apiserver.http import Target, parse_path
from services.apiserver.patch import json_patch, merge_patch
from services.apiserver.selectors import parse_field_selector, parse_label_selector
from services.apiserver.status import ApiError
from services.apiserver.tables import to_table, wants_table


def test_clusterip_sequential_skips_reserved_and_used() -> None:
    a = ClusterIPAllocator("10.0.0.0/29")  # .0 network, .1 kubernetes, .7 broadcast
    assert a.reserve("10.0.0.3") is None
    assert [a.allocate() for _ in range(4)] == ["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    with pytest.raises(ApiError) as exc:
        a.allocate()
    assert exc.value.code == 500 and "is full" in exc.value.message
    a.release("10.0.0.4")
    assert a.allocate() == "10.0.0.4"
    assert "already allocated" in (a.reserve("10.0.0.4") or "")
    assert "not in the valid range" in (a.reserve("10.1.0.4") or "")
    assert "not in the valid range" in (a.reserve("10.0.0.0") or "")
    assert a.reserve("10.0.0.1") is None  # the kubernetes service may ask for it


def test_clusterip_bad_cidr() -> None:
    with pytest.raises(ValueError, match="not an IPv4 network"):
        ClusterIPAllocator("10.0.0.1/16")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", {"a", "b", "c"}),
        ("app=web", {"a", "b"}),
        ("app==web,tier!=fe", {"b"}),
        ("app in (web, db)", {"a", "b", "c"}),
        ("app notin (web)", {"c"}),
        ("tier", {"a"}),
        ("!tier", {"b", "c"}),
    ],
)
def test_label_selectors(selector: str, expected: set[str]) -> None:
    objs = {
        "a": {"app": "web", "tier": "fe"},
        "b": {"app": "web"},
        "c": {"app": "db"},
    }
    pred = parse_label_selector(selector)
    got = {n for n, labels in objs.items() if pred({"metadata": {"labels": labels}})}
    assert got == expected


def test_field_selectors() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}}
    assert parse_field_selector("spec.nodeName=n1,metadata.namespace=ns", "pods")(pod)
    assert not parse_field_selector("spec.nodeName!=n1", "pods")(pod)
    with pytest.raises(ApiError) as exc:
        parse_field_selector("spec.nodeName=n1", "services")
    assert exc.value.code == 400 and "spec.nodeName" in exc.value.message
    with pytest.raises(ApiError):
        parse_label_selector("a in (b")


def test_patches() -> None:
    doc: dict[str, Any] = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [1, 2]}}
    assert merge_patch(
        doc, {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"ports": [3]}}
    ) == {
        "metadata": {"labels": {"b": "2", "c": "3"}},
        "spec": {"ports": [3]},
    }
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/spec/ports/-", "value": 9},
            {"op": "replace", "path": "/metadata/labels/a", "value": "x"},
            {"op": "remove", "path": "/metadata/labels/b"},
            {"op": "test", "path": "/spec/ports/0", "value": 1},
        ],
    )
    assert out == {"metadata": {"labels": {"a": "x"}}, "spec": {"ports": [1, 2, 9]}}
    assert doc["spec"]["ports"] == [1, 2]  # input untouched
    with pytest.raises(ApiError) as exc:
        json_patch(doc, [{"op": "test", "path": "/spec/ports/0", "value": 7}])
    assert exc.value.code == 422


def test_paths() -> None:
    t = parse_path("/api/v1/namespaces/ns1/pods/p1/status")
    assert isinstance(t, Target)
    assert (t.res.plural, t.namespace, t.name, t.sub) == ("pods", "ns1", "p1", "status")
    t = parse_path("/api/v1/namespaces/ns1")
    assert isinstance(t, Target) and (t.res.plural, t.name) == ("namespaces", "ns1")
    t = parse_path("/apis/discovery.k8s.io/v1/endpointslices")
    assert isinstance(t, Target) and t.namespace is None and t.name is None
    assert parse_path("/api/v1/namespaces/ns1/nodes") is None
    assert parse_path("/api/v1/services/x/status") is None
    assert parse_path("/apis/apps/v1/deployments") is None
    assert parse_path("/api/v1") == resources.api_resource_list("", "v1")


def test_discovery_documents() -> None:
    groups = resources.api_group_list()["groups"]
    assert [g["name"] for g in groups] == ["discovery.k8s.io", "networking.k8s.io"]
    v1 = resources.api_resource_list("", "v1")
    assert v1 is not None
    names = [r["name"] for r in v1["resources"]]
    assert names == ["namespaces", "nodes", "pods", "pods/status", "services"]


def test_table() -> None:
    assert wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert not wants_table("application/json")
    svc = {
        "metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.2", "ports": [{"port": 80}]},
    }
    t = to_table(resources.BY_PATH[("", "v1", "services")], {"items": [svc], "metadata": {}})
    assert [c["name"] for c in t["columnDefinitions"]] == [
        "Name",
        "Type",
        "Cluster-IP",
        "Port(s)",
        "Age",
    ]
    assert t["rows"][0]["cells"][:4] == ["web", "ClusterIP", "10.96.0.2", "80/TCP"]
    assert t["rows"][0]["cells"][4].endswith("d")
