"""Server-side ``Table`` rendering for ``kubectl get`` (meta.k8s.io/v1 Table), pure.

kubectl asks for ``application/json;as=Table;v=v1;g=meta.k8s.io`` and prints whatever columns the
server returns; giving it the same columns as kube-apiserver makes ``kubectl get svc`` show the
ClusterIP and ports here as it does on a real cluster. Rows embed the full object so ``-A``,
``--show-labels`` and sorting work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from services.apiserver.resources import Resource

Obj = dict[str, Any]
Column = tuple[str, str, int, Callable[[Obj], Any]]  # name, type, priority, cell


def wants_table(accept: str) -> bool:
    return any("as=Table" in part for part in accept.split(","))


def age(obj: Obj, now: dt.datetime | None = None) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not isinstance(ts, str):
        return "<unknown>"
    try:
        created = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return "<unknown>"
    secs = int(((now or dt.datetime.now(dt.UTC)) - created).total_seconds())
    secs = max(secs, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * 2 or (unit == "m" and secs >= 120):
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _get(obj: Obj, *path: str, default: Any = "") -> Any:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, dict):
            return default
        cur = cur.get(p)
    return default if cur is None else cur


def _svc_ports(o: Obj) -> str:
    ports = _get(o, "spec", "ports", default=[]) or []
    out = []
    for p in ports:
        if isinstance(p, dict):
            node = f":{p['nodePort']}" if p.get("nodePort") else ""
            out.append(f"{p.get('port')}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _pod_ready(o: Obj) -> str:
    statuses = _get(o, "status", "containerStatuses", default=[]) or []
    total = len(_get(o, "spec", "containers", default=[]) or [])
    ready = sum(1 for s in statuses if isinstance(s, dict) and s.get("ready"))
    return f"{ready}/{total}"


def _slice_endpoints(o: Obj) -> str:
    addrs = [a for e in o.get("endpoints") or [] for a in (e.get("addresses") or [])]
    if not addrs:
        return "<unset>"
    more = f" + {len(addrs) - 3} more..." if len(addrs) > 3 else ""
    return ",".join(addrs[:3]) + more


def _selector(o: Obj) -> str:
    labels = _get(o, "spec", "podSelector", "matchLabels", default={}) or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


COLUMNS: dict[str, list[Column]] = {
    "namespaces": [("Status", "string", 0, lambda o: _get(o, "status", "phase"))],
    "nodes": [("Status", "string", 0, lambda o: "Ready")],
    "pods": [
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, lambda o: _get(o, "status", "phase")),
        ("IP", "string", 1, lambda o: _get(o, "status", "podIP", default="<none>")),
        ("Node", "string", 1, lambda o: _get(o, "spec", "nodeName", default="<none>")),
    ],
    "services": [
        ("Type", "string", 0, lambda o: _get(o, "spec", "type")),
        ("Cluster-IP", "string", 0, lambda o: _get(o, "spec", "clusterIP", default="<none>")),
        ("Port(s)", "string", 0, _svc_ports),
    ],
    "endpointslices": [
        ("AddressType", "string", 0, lambda o: o.get("addressType", "")),
        ("Endpoints", "string", 0, _slice_endpoints),
    ],
    "networkpolicies": [("Pod-Selector", "string", 0, _selector)],
}


def to_table(res: Resource, body: Obj) -> Obj:
    objs = body.get("items") if "items" in body else [body]
    cols: list[Column] = [("Name", "name", 0, lambda o: _get(o, "metadata", "name"))]
    cols += COLUMNS.get(res.plural, [])
    cols.append(("Age", "string", 0, age))
    defs = [
        {
            "name": name,
            "type": "string",
            "format": "name" if kind == "name" else "",
            "description": "",
            "priority": prio,
        }
        for name, kind, prio, _ in cols
    ]
    rows = [{"cells": [cell(o) for *_, cell in cols], "object": o} for o in objs or []]
    meta = body.get("metadata") or {}
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": meta.get("resourceVersion", "")},
        "columnDefinitions": defs,
        "rows": rows,
    }
