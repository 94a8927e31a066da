"""Prometheus collectors of the watcher, in the process-wide default registry.

Labels stay bounded: kind, operation, relist reason and the *shape* of the offending field
(list indices folded to ``[*]``, so ``spec.ports[3].port`` and ``spec.ports[0].port`` share one
series). Which object was bad is in the log line and the ``weir.v1.errors.*`` report, never in a
label, so a flood of bad objects cannot blow up the metric cardinality.
"""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge

INVALID_OBJECTS = Counter(
    "weir_watcher_invalid_objects",
    "Kubernetes objects that failed contract validation and were skipped (reported).",
    ["kind", "field"],
)
IS_LEADER = Gauge("weir_watcher_is_leader", "1 while this watcher holds the leader lease.")
PUBLISHED = Counter(
    "weir_watcher_published",
    "Contract events accepted by the bus (UPSERT, DELETE, REPORT).",
    ["kind", "op"],
)
RELISTS = Counter(
    "weir_watcher_relists",
    "Full relists of a kind, by reason (start, gone, idle, error).",
    ["kind", "reason"],
)
WATCH_RESTARTS = Counter(
    "weir_watcher_watch_restarts",
    "Watches resumed from the last resourceVersion after a clean end of stream.",
    ["kind"],
)

_INDEX = re.compile(r"\[\d+\]")


def field_label(field: str) -> str:
    """``spec.ports[3].port`` -> ``spec.ports[*].port`` (bounded label values)."""
    return _INDEX.sub("[*]", field) or "-"
