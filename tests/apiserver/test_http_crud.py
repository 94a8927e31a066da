"""CRUD of every served kind through kubernetes-asyncio, with the real status codes and reasons."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client import ApiException

from tests.apiserver.conftest import Kube, status_of


def svc(name: str, **spec: object) -> dict[str, object]:
    base: dict[str, object] = {"selector": {"app": name}, "ports": [{"port": 80}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": base}


def pod(name: str, node: str = "n1") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }


async def test_initial_namespaces_and_version(kube: Kube) -> None:
    nss = await kube.core.list_namespace()
    assert [n.metadata.name for n in nss.items] == ["default", "kube-system"]
    assert int(nss.metadata.resource_version) >= 2
    assert nss.items[0].status.phase == "Active"


async def test_service_create_get_list_replace_delete(kube: Kube) -> None:
    created = await kube.core.create_namespaced_service("default", svc("web"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    assert created.spec.cluster_ip == "10.96.0.2"
    assert created.spec.cluster_ips == ["10.96.0.2"]
    assert created.spec.ports[0].protocol == "TCP"

    got = await kube.core.read_namespaced_service("web", "default")
    assert got.metadata.resource_version == created.metadata.resource_version

    body = kube.api.sanitize_for_serialization(got)
    body["spec"]["ports"][0]["port"] = 8080
    replaced = await kube.core.replace_namespaced_service("web", "default", body)
    assert replaced.spec.ports[0].port == 8080
    assert replaced.spec.cluster_ip == "10.96.0.2"
    assert replaced.metadata.generation == 2
    assert int(replaced.metadata.resource_version) > int(got.metadata.resource_version)

    lst = await kube.core.list_service_for_all_namespaces()
    assert [s.metadata.name for s in lst.items] == ["web"]

    await kube.core.delete_namespaced_service("web", "default")
    with pytest.raises(ApiException) as exc:
        await kube.core.read_namespaced_service("web", "default")
    assert exc.value.status == 404
    assert exc.value.reason == "Not Found"
    assert status_of(exc.value)["reason"] == "NotFound"


async def test_conflicts_and_missing(kube: Kube) -> None:
    await kube.core.create_namespaced_service("default", svc("a"))
    with pytest.raises(ApiException) as exc:
        await kube.core.create_namespaced_service("default", svc("a"))
    assert exc.value.status == 409
    assert status_of(exc.value)["reason"] == "AlreadyExists"

    stale = await kube.core.read_namespaced_service("a", "default")
    body = kube.api.sanitize_for_serialization(stale)
    await kube.core.replace_namespaced_service("a", "default", body)
    with pytest.raises(ApiException) as exc:
        await kube.core.replace_namespaced_service("a", "default", body)  # stale rv
    assert exc.value.status == 409
    assert status_of(exc.value)["reason"] == "Conflict"

    with pytest.raises(ApiException) as exc:
        await kube.core.replace_namespaced_service("nope", "default", svc("nope"))
    assert exc.value.status == 404
    with pytest.raises(ApiException) as exc:
        await kube.core.delete_namespaced_service("nope", "default")
    assert exc.value.status == 404


async def test_namespace_must_exist_and_names_are_validated(kube: Kube) -> None:
    with pytest.raises(ApiException) as exc:
        await kube.core.create_namespaced_service("ghost", svc("a"))
    assert exc.value.status == 404
    assert status_of(exc.value)["message"] == 'namespaces "ghost" not found'

    with pytest.raises(ApiException) as exc:
        await kube.core.create_namespaced_service("default", svc("Bad_Name"))
    assert exc.value.status == 422
    body = status_of(exc.value)
    assert body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"


async def test_every_kind_round_trips(kube: Kube) -> None:
    await kube.core.create_namespace({"metadata": {"name": "shop"}})
    await kube.core.create_node({"metadata": {"name": "node-1.example"}})
    p = await kube.core.create_namespaced_pod("shop", pod("p1"))
    assert p.status.phase == "Pending"
    eps = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }
    created = await kube.discovery.create_namespaced_endpoint_slice("shop", eps)
    assert created.endpoints[0].addresses == ["10.0.0.5"]
    np = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
    }
    await kube.networking.create_namespaced_network_policy("shop", np)

    assert len((await kube.core.list_node()).items) == 1
    assert len((await kube.discovery.list_endpoint_slice_for_all_namespaces()).items) == 1
    assert len((await kube.networking.list_network_policy_for_all_namespaces()).items) == 1
    got = await kube.networking.read_namespaced_network_policy("deny", "shop")
    assert got.spec.pod_selector.match_labels == {"app": "web"}

    await kube.discovery.delete_namespaced_endpoint_slice("web-abc", "shop")
    await kube.core.delete_node("node-1.example")
    # deleting a namespace deletes what is in it
    await kube.core.delete_namespace("shop")
    assert (await kube.core.list_pod_for_all_namespaces()).items == []
    assert (await kube.networking.list_network_policy_for_all_namespaces()).items == []


async def test_selectors(kube: Kube) -> None:
    await kube.core.create_namespaced_pod("default", pod("p1", "n1"))
    await kube.core.create_namespaced_pod("default", pod("p2", "n2"))
    other = pod("p3", "n1")
    other["metadata"] = {"name": "p3", "labels": {"app": "db"}}
    await kube.core.create_namespaced_pod("default", other)

    by_node = await kube.core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")
    assert sorted(p.metadata.name for p in by_node.items) == ["p1", "p3"]
    by_label = await kube.core.list_namespaced_pod("default", label_selector="app=web")
    assert sorted(p.metadata.name for p in by_label.items) == ["p1", "p2"]
    both = await kube.core.list_namespaced_pod(
        "default", label_selector="app in (web,db)", field_selector="metadata.name!=p2"
    )
    assert sorted(p.metadata.name for p in both.items) == ["p1", "p3"]
    # limit is accepted (and ignored)
    limited = await kube.core.list_namespaced_pod("default", limit=1)
    assert len(limited.items) == 3
    with pytest.raises(ApiException) as exc:
        await kube.core.list_namespaced_pod("default", field_selector="spec.bogus=x")
    assert exc.value.status == 400


async def test_pod_status_subresource(kube: Kube) -> None:
    await kube.core.create_namespaced_pod("default", pod("p1"))
    cur = await kube.core.read_namespaced_pod("p1", "default")
    body = kube.api.sanitize_for_serialization(cur)
    body["status"] = {"phase": "Running", "podIP": "10.1.0.4"}
    updated = await kube.core.replace_namespaced_pod_status("p1", "default", body)
    assert updated.status.pod_ip == "10.1.0.4"
    # a plain PUT cannot change status
    body = kube.api.sanitize_for_serialization(updated)
    body["status"] = {"phase": "Failed"}
    again = await kube.core.replace_namespaced_pod("p1", "default", body)
    assert again.status.phase == "Running"


async def test_delete_collection_with_selector(kube: Kube) -> None:
    await kube.core.create_namespaced_pod("default", pod("p1", "n1"))
    await kube.core.create_namespaced_pod("default", pod("p2", "n2"))
    await kube.core.delete_collection_namespaced_pod("default", field_selector="spec.nodeName=n1")
    left = await kube.core.list_namespaced_pod("default")
    assert [p.metadata.name for p in left.items] == ["p2"]
    await kube.core.delete_collection_namespaced_pod("default")
    assert (await kube.core.list_namespaced_pod("default")).items == []
