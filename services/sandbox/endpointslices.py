"""EndpointSlice computation for the sandbox's controller: Services + Pods in, slices out.

A real cluster runs kube-controller-manager's EndpointSlice controller; the sandbox has no such
thing, so it computes slices itself. This module is the pure half (raw Kubernetes dicts in, raw
dicts out) so it can be table-tested; ``controllers.py`` does the list/watch/write I/O.

Semantics follow the upstream controller:

* only pods in the Service's namespace whose labels match ``spec.selector``, with an IP, not in
  phase Succeeded/Failed;
* ``ready`` = pod Ready and not terminating (or ``publishNotReadyAddresses``), ``serving`` = pod
  Ready, ``terminating`` = pod has a deletionTimestamp;
* a named ``targetPort`` resolves per pod through its containers' ports, so pods that resolve a
  port differently land in different slices (one slice per distinct port mapping);
* at most ``MAX_ENDPOINTS_PER_SLICE`` endpoints per slice (the upstream default is 100).

Slice names are deterministic (``<service>-<hash of the port mapping and chunk>``) so that a
restarted controller converges onto the slices it wrote before instead of duplicating them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

MAX_ENDPOINTS_PER_SLICE = 100
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "weir-sandbox"

Obj = Mapping[str, Any]


def _pod_ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _resolve_port(target: int | str | None, port: int, pod: Obj) -> int | None:
    """A service port's target on one pod: the number, or the named container port."""
    if target is None:
        return port
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for cport in container.get("ports") or []:
            if cport.get("name") == target:
                value = cport.get("containerPort")
                return int(value) if value is not None else None
    return None


def _endpoint(pod: Obj, publish_not_ready: bool) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    terminating = meta.get("deletionTimestamp") is not None
    ready = _pod_ready(pod)
    ips = [entry["ip"] for entry in status.get("podIPs") or [] if entry.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    endpoint: dict[str, Any] = {
        "addresses": ips[:1],
        "conditions": {
            "ready": publish_not_ready or (ready and not terminating),
            "serving": ready,
            "terminating": terminating,
        },
        "targetRef": {
            "kind": "Pod",
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
        },
    }
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        endpoint["nodeName"] = node
    return endpoint


def desired_slices(service: Obj, pods: Iterable[Obj]) -> list[dict[str, Any]]:
    """The EndpointSlices (raw discovery.k8s.io/v1 dicts) one Service should have."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    if not selector or spec.get("type") == "ExternalName":
        return []  # upstream: no selector => slices are managed by someone else
    namespace, name = meta["namespace"], meta["name"]
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    svc_ports = spec.get("ports") or []

    groups: dict[tuple[tuple[str, str, int], ...], list[dict[str, Any]]] = {}
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        pmeta = pod.get("metadata") or {}
        if pmeta.get("namespace") != namespace or not _selects(selector, pmeta.get("labels") or {}):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        endpoint = _endpoint(pod, publish_not_ready)
        if not endpoint["addresses"]:
            continue
        resolved_ports: list[tuple[str, str, int]] = []
        for sp in svc_ports:
            resolved = _resolve_port(sp.get("targetPort"), int(sp["port"]), pod)
            if resolved is not None:
                resolved_ports.append((sp.get("name") or "", sp.get("protocol") or "TCP", resolved))
        groups.setdefault(tuple(resolved_ports), []).append(endpoint)

    slices: list[dict[str, Any]] = []
    for mapping, endpoints in sorted(groups.items()):
        for start in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
            digest = hashlib.sha256(json.dumps([mapping, start]).encode()).hexdigest()[:5]
            slices.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": f"{name}-{digest}"[:253],
                        "namespace": namespace,
                        "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Service",
                                "name": name,
                                "uid": meta.get("uid", ""),
                                "controller": True,
                            }
                        ],
                    },
                    "addressType": "IPv4",
                    "endpoints": endpoints[start : start + MAX_ENDPOINTS_PER_SLICE],
                    "ports": [
                        {"name": pname, "protocol": proto, "port": number}
                        for pname, proto, number in mapping
                    ],
                }
            )
    return slices


def slice_content(obj: Obj) -> tuple[Any, ...]:
    """What the controller compares to decide whether an existing slice needs a replace."""
    return (
        json.dumps(obj.get("endpoints") or [], sort_keys=True),
        json.dumps(obj.get("ports") or [], sort_keys=True),
        json.dumps(((obj.get("metadata") or {}).get("labels") or {}), sort_keys=True),
    )
