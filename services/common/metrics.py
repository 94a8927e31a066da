"""Prometheus metrics shared by every Weir process.

Why module-level collectors in the default registry: each process serves exactly one
``/metrics`` page, and the bus helpers (connect, publish, consume) must count events without every
caller threading a registry through. Labels are bounded: stream and durable names, never subjects
or object names, so cardinality stays fixed however many objects flow through the bus.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry

BUS_DISCONNECTS = Counter(
    "weir_bus_disconnects_total", "Times the NATS connection was lost.", ["client"]
)
BUS_RECONNECTS = Counter(
    "weir_bus_reconnects_total", "Times the NATS connection was re-established.", ["client"]
)
BUS_ERRORS = Counter(
    "weir_bus_errors_total", "Asynchronous errors reported by the NATS client.", ["client"]
)
PUBLISH_ERRORS = Counter(
    "weir_publish_errors_total",
    "Publishes that failed after all retries.",
    ["destination"],
)
PUBLISH_RETRIES = Counter(
    "weir_publish_retries_total",
    "Publish attempts repeated after a transient error.",
    ["destination"],
)
MESSAGES_CONSUMED = Counter(
    "weir_messages_consumed_total", "Messages handed to a handler.", ["stream", "durable"]
)
MESSAGES_ACKED = Counter(
    "weir_messages_acked_total",
    "Messages acked after their handler succeeded.",
    ["stream", "durable"],
)
MESSAGES_NAKED = Counter(
    "weir_messages_naked_total",
    "Messages negatively acked (redelivered later) after their handler failed.",
    ["stream", "durable"],
)
MESSAGES_TERMED = Counter(
    "weir_messages_termed_total",
    "Messages given up on after too many failed deliveries.",
    ["stream", "durable"],
)
HANDLER_DURATION = Histogram(
    "weir_handler_duration_seconds",
    "Time a consume handler took per message.",
    ["stream", "durable"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
