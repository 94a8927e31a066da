"""Table tests for the sandbox's EndpointSlice computation (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from services.sandbox.endpointslices import (
    MAX_ENDPOINTS_PER_SLICE,
    SERVICE_NAME_LABEL,
    desired_slices,
)


def pod(
    name: str,
    ip: str | None = "10.244.1.5",
    *,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    terminating: bool = False,
    phase: str = "Running",
    ports: list[dict[str, Any]] | None = None,
    namespace: str = "demo",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": {"app": "web"} if labels is None else labels,
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {
        "metadata": meta,
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "ports": ports or []}]},
        "status": status,
    }


def service(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "selector": {"app": "web"},
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
    }
    base.update(spec)
    return {"metadata": {"name": "web", "namespace": "demo", "uid": "svc-uid"}, "spec": base}


def conditions(slices: list[dict[str, Any]]) -> dict[str, tuple[bool, bool, bool]]:
    out = {}
    for s in slices:
        for ep in s["endpoints"]:
            c = ep["conditions"]
            out[ep["targetRef"]["name"]] = (c["ready"], c["serving"], c["terminating"])
    return out


@pytest.mark.parametrize(
    ("pod_kwargs", "svc_kwargs", "expected"),
    [
        ({}, {}, (True, True, False)),
        ({"ready": False}, {}, (False, False, False)),
        ({"terminating": True}, {}, (False, True, True)),
        ({"terminating": True, "ready": False}, {}, (False, False, True)),
        ({"ready": False}, {"publishNotReadyAddresses": True}, (True, False, False)),
    ],
    ids=["ready", "not-ready", "terminating-serving", "terminating", "publish-not-ready"],
)
def test_endpoint_conditions(
    pod_kwargs: dict[str, Any], svc_kwargs: dict[str, Any], expected: tuple[bool, bool, bool]
) -> None:
    slices = desired_slices(service(**svc_kwargs), [pod("a", **pod_kwargs)])
    assert conditions(slices) == {"a": expected}


@pytest.mark.parametrize(
    "excluded",
    [
        pod("other-labels", labels={"app": "db"}),
        pod("other-ns", namespace="prod"),
        pod("no-ip", ip=None),
        pod("done", phase="Succeeded"),
        pod("failed", phase="Failed"),
    ],
    ids=lambda p: p["metadata"]["name"],
)
def test_pods_not_selected(excluded: dict[str, Any]) -> None:
    assert conditions(desired_slices(service(), [pod("a"), excluded])) == {"a": (True, True, False)}


def test_no_selector_or_external_name_has_no_slices() -> None:
    assert desired_slices(service(selector={}), [pod("a")]) == []
    assert desired_slices(service(type="ExternalName"), [pod("a")]) == []


def test_named_target_port_splits_slices_by_resolution() -> None:
    svc = service(ports=[{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}])
    pods = [
        pod("a", "10.244.1.2", ports=[{"name": "web", "containerPort": 8080}]),
        pod("b", "10.244.1.3", ports=[{"name": "web", "containerPort": 9090}]),
        pod("c", "10.244.1.4", ports=[{"name": "web", "containerPort": 8080}]),
    ]
    slices = desired_slices(svc, pods)
    by_port = {
        s["ports"][0]["port"]: [e["targetRef"]["name"] for e in s["endpoints"]] for s in slices
    }
    assert by_port == {8080: ["a", "c"], 9090: ["b"]}
    for s in slices:
        assert s["metadata"]["labels"][SERVICE_NAME_LABEL] == "web"
        assert s["ports"][0]["name"] == "http"


def test_large_services_are_chunked_with_stable_names() -> None:
    pods = [pod(f"p{i:03d}", f"10.244.{i // 250}.{i % 250 + 1}") for i in range(250)]
    first = desired_slices(service(), pods)
    assert [len(s["endpoints"]) for s in first] == [MAX_ENDPOINTS_PER_SLICE] * 2 + [50]
    again = desired_slices(service(), list(reversed(pods)))
    assert [s["metadata"]["name"] for s in first] == [s["metadata"]["name"] for s in again]
    assert len({s["metadata"]["name"] for s in first}) == 3
