"""``weir status`` as data: per-node convergence, cluster counts, streams, recent errors (pure).

Why pure: "is every node caught up?" is a computation over numbers the bus already holds (what
each node says it applied, where the streams end, when it last reported), and it is what an
operator acts on, so it is table-tested without a server. Lag is counted in stream sequences per
stream a node reports: ``last - applied`` where ``last`` is the newest sequence of the subjects
that node consumes (a datapath ignores pods, so a pod change must not show as lag). A node that
does not report a stream has unknown lag (None), not zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from contracts.subjects import STREAM_K8S
from contracts.v1 import NodeStatus, ValidationReport


def fill_percent(entries: int, capacity: int) -> float:
    return round(100.0 * entries / capacity, 1) if capacity > 0 else 0.0


def lag(applied: int | None, last: int) -> int | None:
    """Sequences not yet applied; None when the node did not report this stream."""
    if applied is None:
        return None
    return max(0, last - applied)


def node_row(status: NodeStatus, *, last: Mapping[str, int], now: datetime) -> dict[str, Any]:
    """One node: applied positions, lag per stream, age of its status, map fill, programs."""
    lags = {stream: lag(status.applied.get(stream), seq) for stream, seq in sorted(last.items())}
    maps = {
        name: {
            "entries": fill.entries,
            "capacity": fill.capacity,
            "percent": fill_percent(fill.entries, fill.capacity),
        }
        for name, fill in sorted(status.maps.items())
    }
    return {
        "node": status.node,
        "applied": dict(sorted(status.applied.items())),
        "lag": lags,
        "k8s_lag": lags.get(STREAM_K8S),
        "status_time": status.time.isoformat(),
        "age_seconds": round(max(0.0, (now - status.time).total_seconds()), 3),
        "maps": maps,
        "programs": dict(sorted(status.program_versions.items())),
        "errors": list(status.errors),
    }


def maps_cell(maps: Mapping[str, Mapping[str, Any]]) -> str:
    """``services 12/1024 (1.2%)`` per map, one per line, for the nodes table."""
    return "\n".join(
        f"{name} {m['entries']}/{m['capacity']} ({m['percent']:.1f}%)" for name, m in maps.items()
    )


def error_row(subject: str, report: ValidationReport) -> dict[str, Any]:
    ns = f"{report.namespace}/" if report.namespace else ""
    return {
        "time": report.observed_at.isoformat(),
        "object": f"{report.kind} {ns}{report.name or '-'}",
        "kind": report.kind,
        "namespace": report.namespace,
        "name": report.name,
        "field": report.field,
        "message": report.message,
        "subject": subject,
    }


def report(
    *,
    nats_url: str,
    statuses: Sequence[NodeStatus],
    last: Mapping[str, int],
    now: datetime,
    identities: int | None,
    services: int,
    errors: Sequence[tuple[str, ValidationReport]],
    streams: Sequence[Mapping[str, Any]],
    problems: Sequence[str],
) -> dict[str, Any]:
    """The whole status document (the ``-o json`` output; tables render from it)."""
    nodes = sorted((node_row(s, last=last, now=now) for s in statuses), key=lambda r: r["node"])
    lagging = [n["node"] for n in nodes if n["k8s_lag"] is None or n["k8s_lag"] > 0]
    return {
        "nats": nats_url,
        "time": now.isoformat(),
        "nodes": nodes,
        "converged": bool(nodes) and not lagging,
        "lagging_nodes": lagging,
        "identities": identities,
        "services": services,
        "recent_errors": [error_row(subject, r) for subject, r in errors],
        "streams": [dict(s) for s in streams],
        "problems": list(problems),
    }
