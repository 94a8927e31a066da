"""What each inspect command reads from the bus, assembled into its document (I/O + pure views).

Why a layer between the reader and the CLI: the CLI only parses options and renders; the views
only compute. This module decides which queries answer a command (e.g. the lag reference is the
newest sequence of the subjects a datapath consumes, not the whole stream's) and hands the
results to the pure views, so tests can call it directly against a real server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from contracts.subjects import (
    KV_IDENTITIES,
    PREFIX,
    STREAM_ERRORS,
    STREAM_FLOWS,
    STREAM_IDENTITY,
    STREAM_K8S,
    STREAM_STATUS,
    k8s_filter,
)
from contracts.v1 import (
    EndpointSlice,
    IPCacheEntry,
    K8sEvent,
    NodeStatus,
    Op,
    Service,
    ValidationReport,
)
from services.datapath.worker import KINDS as DATAPATH_KINDS
from services.ops import identity_view, status_view, svc_view
from services.ops.busread import Reader
from services.ops.output import OpsError

STREAMS = (STREAM_K8S, STREAM_IDENTITY, STREAM_FLOWS, STREAM_ERRORS, STREAM_STATUS)
KV_STREAM = f"KV_{KV_IDENTITIES}"


async def status_document(
    r: Reader, *, recent: int = 10, now: datetime | None = None
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    statuses, problems = await r.latest(STREAM_STATUS, f"{PREFIX}.status.>", NodeStatus)
    last = {STREAM_K8S: await r.last_seq(STREAM_K8S, [k8s_filter(k) for k in DATAPATH_KINDS])}
    for stream in sorted({s for _, st in statuses for s in st.applied} - {STREAM_K8S}):
        state = await r.stream(stream)
        last[stream] = state.last_seq if state else 0
    services, svc_problems = await _live(r, "service", Service)
    errors, err_problems = await r.newest(STREAM_ERRORS, recent, ValidationReport)
    kv = await r.stream(KV_STREAM)
    identities = None if kv is None else sum(1 for e in await _kv(r) if e.key.startswith("id."))
    streams = [vars(s) for s in await r.streams([*STREAMS, KV_STREAM])]
    return status_view.report(
        nats_url=r.url,
        statuses=[st for _, st in statuses],
        last=last,
        now=now,
        identities=identities,
        services=len(services),
        errors=errors,
        streams=streams,
        problems=[*problems, *svc_problems, *err_problems],
    )


async def _live(r: Reader, kind: str, payload: type[Any]) -> tuple[dict[Any, Any], list[str]]:
    events, problems = await r.latest(STREAM_K8S, k8s_filter(kind), K8sEvent)
    return svc_view.live((ev for _, ev in events), payload), problems


async def _kv(r: Reader) -> list[Any]:
    return list(await r.kv_entries(KV_IDENTITIES))


async def service_list(r: Reader, namespace: str | None) -> dict[str, Any]:
    services, p1 = await _live(r, "service", Service)
    slices, p2 = await _live(r, "endpointslice", EndpointSlice)
    return {
        "namespace": namespace,
        "services": svc_view.service_rows(services, slices, namespace),
        "problems": [*p1, *p2],
    }


async def service_get(r: Reader, ref: svc_view.Ref) -> dict[str, Any]:
    services, p1 = await _live(r, "service", Service)
    svc = services.get(ref)
    if svc is None:
        raise OpsError(f"service {ref[0]}/{ref[1]} not found on the bus ({r.url})")
    slices, p2 = await _live(r, "endpointslice", EndpointSlice)
    doc = svc_view.service_detail(ref, svc, slices)
    doc["problems"] = [*doc["problems"], *p1, *p2]
    return doc


async def identity_list(r: Reader, *, reserved: bool) -> dict[str, Any]:
    rows, problems = identity_view.identity_rows(await _kv(r))
    if reserved:
        rows = [*identity_view.reserved_rows(), *rows]
    return {"identities": rows, "problems": problems}


async def identity_get(r: Reader, ident: int) -> dict[str, Any]:
    """One identity's row plus the pod IPs the ipcache maps to it."""
    rows = {row["id"]: row for row in identity_view.reserved_rows()}
    found, problems = identity_view.identity_rows(await _kv(r))
    rows.update({row["id"]: row for row in found})
    row = rows.get(ident)
    if row is None:
        raise OpsError(f"identity {ident} not found in KV bucket {KV_IDENTITIES} ({r.url})")
    entries, p2 = await r.latest(STREAM_IDENTITY, f"{PREFIX}.ipcache.>", IPCacheEntry)
    endpoints = [
        {
            "ip": e.ip,
            "namespace": e.namespace,
            "pod": e.pod_name,
            "node": e.node_name,
        }
        for _, e in entries
        if e.op is Op.UPSERT and e.identity == ident
    ]
    return {
        **row,
        "endpoints": sorted(endpoints, key=lambda x: x["ip"]),
        "problems": [*problems, *p2],
    }
