"""Prometheus metrics of the identity allocator.

Why separate from :mod:`services.common.metrics`: these only exist in ``weir identity``, and the
labels are bounded outcome names, never identities or label sets.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ALLOCATIONS = Counter(
    "weir_identity_allocations_total",
    "Allocation steps by outcome: new id, id already taken, labels race lost, resolved.",
    ["outcome"],
)
EXHAUSTED = Counter(
    "weir_identity_exhausted_total", "Allocations refused because the identity range is full."
)
GC_COLLECTED = Counter(
    "weir_identity_gc_collected_total", "Identities deleted by garbage collection."
)
IDENTITIES = Gauge("weir_identity_known", "Identities this allocator knows about.")
REJECTED = Counter(
    "weir_identity_rejected_total",
    "Objects whose labels could not be used (oversized label set, bad message).",
    ["reason"],
)
