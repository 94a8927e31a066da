"""Valid sample objects of every kind, as a client would POST them (camelCase JSON).

``change(kind, obj)`` returns a copy with a difference the contract carries (a label), so a
replace must produce a new UPSERT; :data:`PLACEHOLDER_SERVICE` is a Kubernetes API round-trip
fixture style object (placeholder strings in typed fields) that only an ``--accept-invalid``
stand-in stores.
"""

from __future__ import annotations

import copy
from typing import Any

Obj = dict[str, Any]


def sample(kind: str, name: str, namespace: str = "default") -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": {"app": name}}
    if kind == "service":
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        }
    if kind == "endpointslice":
        meta["labels"]["kubernetes.io/service-name"] = name
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": meta,
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
    if kind == "pod":
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "containers": [
                    {"name": "c", "image": "weir/echo", "ports": [{"containerPort": 8080}]}
                ]
            },
        }
    if kind == "namespace":
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    if kind == "node":
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"role": "worker"}},
            "spec": {"podCIDR": "10.244.7.0/24"},
        }
    if kind == "networkpolicy":
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta,
            "spec": {
                "podSelector": {"matchLabels": {"app": name}},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}]}],
            },
        }
    raise ValueError(f"no sample for kind {kind!r}")


def change(kind: str, obj: Obj) -> Obj:
    """A copy with one more label (carried by every kind's contract payload)."""
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("labels", {})["changed"] = "yes"
    return out


def placeholder_service(name: str, namespace: str = "default") -> Obj:
    svc = sample("service", name, namespace)
    svc["spec"]["ports"] = [{"name": "http", "port": "placeholder", "protocol": "TCP"}]
    return svc
