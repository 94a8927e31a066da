"""Prometheus metrics of the worker's policy loop and flow publisher (default registry).

Kept apart from ``metrics.py`` (the LB loop's) so the two loops can change independently; the
names follow the same conventions (no node label: one process serves one node).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

POLICY_ENTRIES = Gauge("weir_policy_entries", "Entries in each policy map.", ["map"])
POLICY_CAPACITY = Gauge("weir_policy_capacity", "max_entries of each policy map.", ["map"])
POLICY_RESOLVE = Histogram(
    "weir_policy_resolve_seconds",
    "Time to resolve NetworkPolicies into this node's policy state and write the diff.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
POLICY_WRITES = Counter("weir_policy_map_writes_total", "Entry writes to the policy maps.")
POLICY_WRITE_ERRORS = Counter(
    "weir_policy_map_write_errors_total", "Failed policy map writes, by map.", ["map"]
)
POLICY_ENDPOINTS = Gauge("weir_policy_endpoints", "Local pods enforced by the policy programs.")
POLICY_ISSUES = Gauge(
    "weir_policy_issues", "Current problems with the policy input (bad objects, missing veths)."
)
POLICY_BAD_MESSAGES = Counter(
    "weir_policy_bad_messages_total", "Policy-loop messages that did not decode.", ["stream"]
)
FLOWS_PUBLISHED = Counter("weir_flows_published_total", "Flows published on the bus.")
FLOW_EVENTS_LOST = Counter(
    "weir_flow_events_lost_total",
    "Events the datapath could not record (ring buffer full), as counted in the kernel.",
)
FLOWS_DROPPED = Counter(
    "weir_flows_dropped_total", "Flow events dropped in the worker (queue full, publish failed)."
)
FLOWS_MALFORMED = Counter(
    "weir_flow_events_malformed_total", "Flow events that did not decode or convert."
)
