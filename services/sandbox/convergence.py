"""Has the whole pipeline caught up? API -> EndpointSlices -> bus -> every node's datapath.

"Ready" for a sandbox means a client in a pod can use every Service right now, so readiness
follows the pipeline stage by stage and names the first stage that lags (that text is what the
``up`` spinner shows):

1. the EndpointSlices in the API equal what the Services and Pods ask for (the controller ran);
2. every Service and EndpointSlice in the API is on the bus at its current resourceVersion (the
   watcher published it), which gives the stream sequence S of the newest of them;
3. every node's datapath reports (``weir.v1.status.<node>``) ``applied[WEIR_K8S] >= S``.

:func:`lagging` is the pure comparison; :func:`check` fetches the inputs (the API side comes from
the in-process controllers' informer caches, the bus side from ``get_last_msg``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from contracts.subjects import STREAM_K8S, STREAM_STATUS, k8s_subject, status_subject
from services.sandbox.endpointslices import MANAGED_BY, MANAGED_BY_LABEL, desired_slices
from services.sandbox.endpointslices import slice_content as content

Published = tuple[str, int]  # (resourceVersion, stream sequence)


def slices_pending(
    services: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
) -> list[str]:
    """Services whose EndpointSlices in the API differ from the desired ones."""
    pods = list(pods)
    have: dict[tuple[str, str], Any] = {}
    for obj in slices:
        meta = obj.get("metadata") or {}
        if (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY:
            have[(meta.get("namespace") or "", meta.get("name") or "")] = content(obj)
    out = []
    for svc in services:
        meta = svc.get("metadata") or {}
        ns = meta.get("namespace") or ""
        mine = [p for p in pods if (p.get("metadata") or {}).get("namespace") == ns]
        for want in desired_slices(svc, mine):
            if have.get((ns, want["metadata"]["name"])) != content(want):
                out.append(f"endpointslices of service {ns}/{meta.get('name')}")
                break
    return out


def lagging(
    api_objects: Mapping[str, str],
    published: Mapping[str, Published | None],
    applied: Mapping[str, int | None],
) -> list[str]:
    """What is behind: objects (subject -> API resourceVersion) not yet on the bus at that
    version, or nodes whose applied sequence is below the newest such message."""
    behind = []
    newest = 0
    for subject, rv in sorted(api_objects.items()):
        got = published.get(subject)
        if got is None or got[0] != rv:
            behind.append(f"bus: {subject.removeprefix('weir.v1.k8s.')} at {rv}")
        else:
            newest = max(newest, got[1])
    if behind:
        return behind
    for node, seq in sorted(applied.items()):
        if seq is None:
            behind.append(f"datapath {node}: no status yet")
        elif seq < newest:
            behind.append(f"datapath {node}: applied {seq} < {newest}")
    return behind


def api_subjects(
    services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]
) -> dict[str, str]:
    out = {}
    for kind, objs in (("service", services), ("endpointslice", slices)):
        for obj in objs:
            meta = obj.get("metadata") or {}
            subject = k8s_subject(kind, meta.get("namespace"), meta.get("name") or "")
            out[subject] = str(meta.get("resourceVersion") or "")
    return out


async def _last(js: JetStreamContext, stream: str, subject: str) -> tuple[bytes, int] | None:
    try:
        msg = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    return (msg.data or b""), int(msg.seq or 0)


async def check(
    js: JetStreamContext,
    services: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
    nodes: Iterable[str],
) -> list[str]:
    """Read the bus and compare (the API side comes from the caller's informer caches)."""
    wanted = api_subjects(services, slices)
    published: dict[str, Published | None] = {}
    for subject in wanted:
        last = await _last(js, STREAM_K8S, subject)
        if last is not None:
            rv = json.loads(last[0]).get("resource_version")
            published[subject] = (str(rv), last[1])
    applied: dict[str, int | None] = {}
    for node in nodes:
        last = await _last(js, STREAM_STATUS, status_subject(node))
        applied[node] = None
        if last is not None:
            applied[node] = int((json.loads(last[0]).get("applied") or {}).get(STREAM_K8S, 0))
    return lagging(wanted, published, applied)
