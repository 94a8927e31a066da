"""Create, replace and delete objects of any kind through kubernetes-asyncio (raw JSON bodies)."""

from __future__ import annotations

import json
from typing import Any

from contracts.subjects import CLUSTER_SCOPED_KINDS
from tests.apiserver.conftest import Kube

Obj = dict[str, Any]


def _api(kube: Kube, kind: str) -> tuple[Any, str, bool]:
    """(api object, method suffix, namespaced?) for ``kind``."""
    return {
        "service": (kube.core, "service", True),
        "pod": (kube.core, "pod", True),
        "namespace": (kube.core, "namespace", False),
        "node": (kube.core, "node", False),
        "endpointslice": (kube.discovery, "endpoint_slice", True),
        "networkpolicy": (kube.networking, "network_policy", True),
    }[kind]


async def _call(kube: Kube, kind: str, verb: str, *args: Any, **kw: Any) -> Obj:
    api, noun, namespaced = _api(kube, kind)
    method = getattr(api, f"{verb}_namespaced_{noun}" if namespaced else f"{verb}_{noun}")
    resp = await method(*args, _preload_content=False, **kw)
    try:
        body = await resp.read()
    finally:
        resp.release()
    assert 200 <= resp.status < 300, f"{verb} {kind}: HTTP {resp.status}: {body[:300]!r}"
    result: Obj = json.loads(body)
    return result


def _ns(kind: str, obj: Obj) -> list[str]:
    if kind in CLUSTER_SCOPED_KINDS:
        return []
    return [obj["metadata"].get("namespace", "default")]


async def create(kube: Kube, kind: str, obj: Obj) -> Obj:
    return await _call(kube, kind, "create", *_ns(kind, obj), body=obj)


async def replace(kube: Kube, kind: str, obj: Obj) -> Obj:
    name = obj["metadata"]["name"]
    current = await _call(kube, kind, "read", name, *_ns(kind, obj))
    body = dict(obj)
    body["metadata"] = dict(obj["metadata"], resourceVersion=current["metadata"]["resourceVersion"])
    if kind == "service":  # clusterIP is immutable once allocated
        body["spec"] = dict(obj["spec"], clusterIP=current["spec"].get("clusterIP"))
    return await _call(kube, kind, "replace", name, *_ns(kind, obj), body=body)


async def delete(kube: Kube, kind: str, obj: Obj) -> Obj:
    return await _call(kube, kind, "delete", obj["metadata"]["name"], *_ns(kind, obj))
