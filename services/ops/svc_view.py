"""Services as the bus describes them: list rows and one service's frontends and backends (pure).

Why it reads the bus and not the maps: the bus holds the cluster's desired state, the same input
every node programs from, so ``weir svc`` answers "what should every node do" (``weir bpf dump``
answers "what does this node do"). Backends are resolved with the datapath's own
:func:`services.datapath.model.port_candidates` (port names, deduplication across slices), so
this view cannot disagree with what a node programs. Deleted objects are tombstones on the bus
and are dropped here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from contracts.v1 import EndpointSlice, K8sEvent, Op, Service
from services.datapath.model import port_candidates

Ref = tuple[str, str]  # (namespace, name)


def live(events: Iterable[K8sEvent], payload: type[Any]) -> dict[Ref, Any]:
    """(namespace, name) -> object of the newest events, tombstones removed."""
    out: dict[Ref, Any] = {}
    for ev in events:
        ref = (ev.namespace or "", ev.name)
        if ev.op is Op.DELETE or not isinstance(ev.object, payload):
            out.pop(ref, None)
        else:
            out[ref] = ev.object
    return out


def slices_of(ref: Ref, slices: Mapping[Ref, EndpointSlice]) -> list[tuple[str, EndpointSlice]]:
    return sorted(
        (name, es)
        for (ns, name), es in slices.items()
        if ns == ref[0] and es.service_name == ref[1]
    )


def port_text(svc: Service) -> list[str]:
    """``80/TCP->8080`` (``:30080`` appended when a node port is allocated)."""
    out = []
    for p in svc.ports:
        text = f"{p.port}/{p.protocol}->{p.target_port}"
        if p.node_port:
            text += f" :{p.node_port}"
        out.append(f"{p.name}:{text}" if p.name else text)
    return out


def endpoint_counts(slices: Iterable[tuple[str, EndpointSlice]]) -> tuple[int, int]:
    """(ready addresses, all addresses) across the slices, each address counted once."""
    ready: set[str] = set()
    every: set[str] = set()
    for _name, es in slices:
        for ep in es.endpoints:
            every.update(ep.addresses)
            if ep.conditions.ready:
                ready.update(ep.addresses)
    return len(ready), len(every)


def service_row(ref: Ref, svc: Service, slices: Mapping[Ref, EndpointSlice]) -> dict[str, Any]:
    ready, total = endpoint_counts(slices_of(ref, slices))
    return {
        "namespace": ref[0],
        "name": ref[1],
        "type": svc.type,
        "headless": svc.headless,
        "cluster_ips": list(svc.cluster_ips),
        "external_ips": [*svc.external_ips, *svc.load_balancer_ips],
        "ports": port_text(svc),
        "ready_endpoints": ready,
        "endpoints": total,
    }


def service_rows(
    services: Mapping[Ref, Service],
    slices: Mapping[Ref, EndpointSlice],
    namespace: str | None = None,
) -> list[dict[str, Any]]:
    return [
        service_row(ref, svc, slices)
        for ref, svc in sorted(services.items())
        if namespace is None or ref[0] == namespace
    ]


def service_detail(ref: Ref, svc: Service, slices: Mapping[Ref, EndpointSlice]) -> dict[str, Any]:
    """The service row plus, per port, its frontends (every VIP) and resolved backends."""
    own = slices_of(ref, slices)
    vips = [*svc.cluster_ips, *svc.external_ips, *svc.load_balancer_ips]
    ports = []
    problems: list[str] = []
    for sp in svc.ports:
        candidates, errors = port_candidates(ref, sp, own)
        problems.extend(errors)
        ports.append(
            {
                "name": sp.name,
                "port": sp.port,
                "protocol": sp.protocol,
                "target_port": sp.target_port,
                "node_port": sp.node_port,
                "frontends": [
                    f"[{vip}]:{sp.port}/{sp.protocol}"
                    if ":" in vip
                    else f"{vip}:{sp.port}/{sp.protocol}"
                    for vip in dict.fromkeys(vips)
                ],
                "backends": [
                    {
                        "address": f"{c.ip}:{c.port}",
                        "ready": c.ready,
                        "serving": c.serving,
                        "terminating": c.terminating,
                        "node": c.node_name,
                    }
                    for c in candidates
                ],
            }
        )
    return {
        **service_row(ref, svc, slices),
        "selector": dict(svc.selector),
        "session_affinity": svc.session_affinity,
        "internal_traffic_policy": svc.internal_traffic_policy,
        "external_traffic_policy": svc.external_traffic_policy,
        "endpointslices": [name for name, _ in own],
        "port_details": ports,
        "problems": problems,
    }


def parse_ref(text: str) -> Ref:
    """``NAMESPACE/NAME`` (or ``NAME`` for the default namespace); ValueError naming the input."""
    ns, sep, name = text.partition("/")
    if not sep:
        ns, name = "default", text
    if not ns or not name or "/" in name:
        raise ValueError(f"service {text!r}: expected NAMESPACE/NAME")
    return ns, name
