"""Prometheus metrics of the datapath worker (default registry, served by the ops server).

Kept in one module so names are defined once and tests can read them by name; no node label,
because one process serves one node (tests running several workers share the counters, which
is why tests compare deltas).

:func:`observe_many` records a batch's observations with one lock round per bucket touched
instead of ``len(amounts)`` calls of ``Histogram.observe`` (a lock for the sum and one for the
bucket each, ~1 us per event: the network-programming histogram observes every event).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

SYNC_DURATION = Histogram(
    "weir_datapath_sync_duration_seconds",
    "Time to turn a batch of changes (or the full bootstrap state) into map writes "
    "(like kubeproxy_sync_proxy_rules_duration_seconds).",
    ["kind"],  # full | incremental | retry
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MAP_ENTRIES = Gauge("weir_datapath_map_entries", "Entries in each LB map.", ["map"])
MAP_CAPACITY = Gauge("weir_datapath_map_capacity", "max_entries of each LB map.", ["map"])
MAP_FILL = Gauge("weir_datapath_map_fill_ratio", "entries / capacity of each LB map.", ["map"])
MAP_WRITES = Counter("weir_datapath_map_writes_total", "Entry writes issued to the LB maps.")
MAP_WRITE_ERRORS = Counter(
    "weir_datapath_map_write_errors_total",
    "Failed map writes, by map and kind (full: no room; error: anything else).",
    ["map", "kind"],
)
PENDING_FRONTENDS = Gauge(
    "weir_datapath_pending_frontends", "Frontends whose last write failed, awaiting retry."
)
SERVICES = Gauge("weir_datapath_services", "Services that yield at least one frontend.")
FRONTENDS = Gauge("weir_datapath_frontends", "Desired frontends (vip, port, proto).")
BACKENDS = Gauge("weir_datapath_backends", "Distinct desired backends (ip, port, proto).")
APPLIED_SEQUENCE = Gauge(
    "weir_datapath_applied_sequence", "Last WEIR_K8S stream sequence applied to the maps."
)
BAD_MESSAGES = Counter(
    "weir_datapath_bad_messages_total", "Messages that are not valid K8sEvents (skipped).", ["kind"]
)
MODEL_ERRORS = Gauge(
    "weir_datapath_model_errors", "Current problems in the desired state (e.g. VIP conflicts)."
)
NETWORK_PROGRAMMING = Histogram(
    "weir_network_programming_duration_seconds",
    "From the API change of an object (K8sEvent.observed_at, watcher clock) to its map writes "
    "on this node (like kubeproxy_network_programming_duration_seconds; live changes only).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BOOTSTRAP = Gauge(
    "weir_datapath_bootstrap_duration_seconds",
    "Last bootstrap, by phase: start (interpreter start and imports), loader (bcc compile and "
    "attach in the loader child, overlapping the snapshot), snapshot (bus read, each message "
    "decoded as it arrives), model (desired state to frontends), maps (wait for the loader "
    "and read the maps back), apply (map writes), sync (all of the bootstrap).",
    ["phase"],
)


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts``, bucket by bucket: the same counts and,
    up to float rounding of the order of additions, the same sum. An unlabelled histogram of
    prometheus_client's own layout only; anything else is observed one amount at a time."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    counts: dict[int, int] = {}
    get = counts.get
    n = 0
    sum_ = 0.0
    for amount in amounts:
        # observe() counts an amount in the first bucket whose bound is >= it (the last bound
        # is +Inf); NaN is below no bound: added to the sum, counted in no bucket, as there
        i = bisect_left(bounds, amount)
        if i < len(bounds) and amount <= bounds[i]:
            counts[i] = get(i, 0) + 1
        sum_ += amount
        n += 1
    if not n:
        return
    total.inc(sum_)
    for i, count in counts.items():
        buckets[i].inc(count)
