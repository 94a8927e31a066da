"""``weir status`` as data: per-node convergence, cluster counts, streams, recent errors (pure).

Why pure: "is every node caught up?" is a computation over numbers the bus already holds (what
each node says it applied, where the streams end, when it last reported), and it is what an
operator acts on, so it is table-tested without a server. Lag is counted in stream sequences per
stream a node reports: ``last - applied`` where ``last`` is the newest sequence of the subjects
that node consumes (a datapath ignores pods, so a pod change must not show as lag). A node that
does not report a stream has unknown lag (None), not zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from contracts.subjects import STREAM_K8S
from contracts.v1 import NodeStatus, ValidationReport

# The LB maps first, in the order a connect walks them, then the policy maps; others after.
MAP_ORDER = ("frontends", "services", "backends", "revnat", "affinity", "sk_revnat")
POLICY_PREFIX = "policy_"
SHOW_PERCENT = 50.0  # a fill worth a look; below it the percent is noise in the table
# what services/datapath/policyworker.py puts in NodeStatus.errors when flow events were lost
_FLOWS = re.compile(r"^flows: (\d+) events lost in the datapath, (\d+) dropped, (\d+) malformed$")


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
        "flows": flow_loss(status.errors),
        "errors": list(status.errors),
    }


def flow_loss(errors: Sequence[str]) -> dict[str, int] | None:
    """The node's flow-event loss counters (lost in the kernel's ring buffer, dropped by the
    publisher, malformed), when it reported any; None when it did not."""
    for line in errors:
        found = _FLOWS.match(line)
        if found:
            lost, dropped, malformed = (int(g) for g in found.groups())
            return {"lost": lost, "dropped": dropped, "malformed": malformed}
    return None


def _map_rank(name: str) -> tuple[int, int, str]:
    if name in MAP_ORDER:
        return (0, MAP_ORDER.index(name), name)
    return (1 if name.startswith(POLICY_PREFIX) else 2, 0, name)


def maps_cell(maps: Mapping[str, Mapping[str, Any]]) -> str:
    """``services 12/262144`` per map, one per line, LB maps first, then the policy maps
    without their ``policy_`` prefix; the percent only from SHOW_PERCENT on, so the nodes table
    stays readable at 100 columns."""
    lines = []
    for name in sorted(maps, key=_map_rank):
        m = maps[name]
        short = name.removeprefix(POLICY_PREFIX)
        text = f"{short} {m['entries']}/{m['capacity']}"
        if m["percent"] >= SHOW_PERCENT:
            text += f" {m['percent']:.0f}%"
        lines.append(text)
    return "\n".join(lines)


def programs_cell(programs: Mapping[str, str]) -> str:
    return "\n".join(f"{name} {version}" for name, version in programs.items())


def issues_cell(errors: Sequence[str], flows: Mapping[str, int] | None) -> str:
    """``-`` for a healthy node, else ``errors N`` and the non-zero flow-event loss counters
    (``lost``, ``dropped``, ``malformed``), one per line."""
    lines = [f"errors {len(errors)}"] if errors else []
    lines += [f"{what} {n}" for what, n in (flows or {}).items() if n]
    return "\n".join(lines) or "-"


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
