"""Kubernetes objects for the control-plane benchmarks: N Services with EndpointSlices (pure).

The load is written once as a manifest (a ``List``) that ``weir apiserver --manifests`` creates at
start, so loading 10k Services costs seconds instead of 20k HTTP round trips; the changes made
during a measurement go through the real API (kubernetes-asyncio) like any client's would.
Addresses are derived from indices, so every Service's VIP and every backend IP is unique and a
change can carry a backend IP nobody used before (what the map probe looks for).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

NAMESPACE = "bench"
SERVICE_PORT = 80
TARGET_PORT = 8080
PORT_NAME = "http"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
VIP_BASE = ipaddress.IPv4Address("10.96.0.0")  # the stand-in runs with 10.96.0.0/12
BACKEND_BASE = ipaddress.IPv4Address("10.128.0.0")  # loaded backends: 10.128.0.0/10
FRESH_BASE = ipaddress.IPv4Address("10.192.0.0")  # backends introduced by changes: 10.192/10


def service_name(i: int) -> str:
    return f"svc-{i}"


def slice_name(service: str) -> str:
    return f"{service}-bench"


def vip(i: int) -> str:
    return str(VIP_BASE + 1 + i)


def backend_ip(i: int, k: int, per_service: int) -> str:
    return str(BACKEND_BASE + i * per_service + k)


def fresh_ip(n: int) -> str:
    """The n-th never-used backend address (n < 4M)."""
    return str(FRESH_BASE + n)


def service(name: str, cluster_ip: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"app": name},
        "ports": [
            {"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}
        ],
    }
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def endpoint_slice(service_: str, ips: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(service_),
            "namespace": NAMESPACE,
            "labels": {SERVICE_NAME_LABEL: service_},
        },
        "addressType": "IPv4",
        "ports": [{"name": PORT_NAME, "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


def manifest(services: int, per_service: int) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    ]
    for i in range(services):
        name = service_name(i)
        items.append(service(name, vip(i)))
        ips = [backend_ip(i, k, per_service) for k in range(per_service)]
        items.append(endpoint_slice(name, ips))
    return {"apiVersion": "v1", "kind": "List", "items": items}


def write_manifest(path: Path, services: int, per_service: int) -> Path:
    path.write_text(json.dumps(manifest(services, per_service)))
    return path
