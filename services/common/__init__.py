"""Shared plumbing of every Weir process: bus, tracing, settings, logging, metrics and health.

Why one package below the services: the rules for talking to NATS (deterministic msg ids, trace
context in headers, ack only after effect, bounded retries) must be the same everywhere, so they
live here once and the services stay pure logic plus thin edges.

Modules: ``bus`` (connect_bus, Bus, publish, publish_batch, and re-exports of provision,
consume, last_per_subject), ``streams`` (stream/bucket table, provision), ``consume``,
``tracing`` (+ ``tracefile``), ``settings``, ``logging``, ``metrics``, ``ops`` (HTTP server).
"""
