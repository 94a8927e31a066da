"""Prometheus metrics of one stand-in instance, in its own registry.

A registry per server (not the global default) lets several stand-ins run in one test process
without "duplicated timeseries" errors, and keeps /metrics to exactly this server's numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class ApiMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "weir_apiserver_requests_total",
            "API requests by verb, resource and HTTP status code",
            ["verb", "resource", "code"],
            registry=self.registry,
        )
        self.watches = Gauge(
            "weir_apiserver_watches_open", "Watch streams currently open", registry=self.registry
        )
        self.objects = Gauge(
            "weir_apiserver_resource_version",
            "Current global resourceVersion",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
