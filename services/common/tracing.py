"""W3C trace context across the bus, and OpenTelemetry setup for entry points.

Why this shape: libraries (the bus helpers, the services) only use the OpenTelemetry *API*, so
they cost nothing until an entry point calls :func:`setup_tracing`, which configures the SDK from
the standard ``OTEL_*`` variables. Every message carries ``traceparent``/``tracestate`` headers:
:func:`producer_span` wraps a publish, :func:`consumer_span` wraps the handling of one message and
is both a child of the producer's context (one trace per change, end to end) and linked to it
(what the messaging semantic conventions ask for when a consumer may batch).

Span names follow ``"{operation} {destination}"`` with a low-cardinality destination: the subject
with its per-object tokens replaced by ``*`` (see :func:`subject_template`); the full subject is in
``messaging.destination.name``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind

TRACER_NAME = "weir"
SYSTEM = "nats"
ATTR_STREAM = "messaging.nats.stream"
ATTR_STREAM_SEQUENCE = "messaging.nats.stream_sequence"

# How many leading subject tokens name a *kind* of destination, per category under weir.v1.
_TEMPLATE_KEEP = {"k8s": 4, "identity": 3, "ipcache": 3, "flows": 3, "errors": 4, "status": 3}


class _HasHeaders(Protocol):
    @property
    def subject(self) -> str: ...

    @property
    def headers(self) -> dict[str, str] | None: ...


def subject_template(subject: str) -> str:
    """``weir.v1.k8s.pod.ns.name`` -> ``weir.v1.k8s.pod.*.*``: a low-cardinality span name part."""
    tokens = subject.split(".")
    if len(tokens) < 3 or tokens[0] != "weir":
        return subject
    keep = _TEMPLATE_KEEP.get(tokens[2], 3)
    return ".".join(tokens[:keep] + ["*"] * (len(tokens) - keep))


def inject(
    headers: Mapping[str, str] | None = None, *, context: Context | None = None
) -> dict[str, str]:
    """A copy of ``headers`` with the current (or given) trace context added."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier, context=context)
    return carrier


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried in message headers (an empty context when there is none)."""
    return propagate.extract(dict(headers or {}))


_TRACER: trace.Tracer | None = None


def _tracer() -> trace.Tracer:
    # get_tracer() builds a new tracer (and its instrumentation scope) on every call: a
    # measurable cost per message. The API returns a proxy until setup_tracing() installs the
    # SDK provider and the proxy then forwards to it, so caching it here is safe.
    global _TRACER  # noqa: PLW0603
    if _TRACER is None:
        _TRACER = trace.get_tracer(TRACER_NAME)
    return _TRACER


def start_producer_span(subject: str, msg_id: str | None = None) -> Span:
    """Start (not activate) a PRODUCER span ``publish <template>``; the caller must end it."""
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": subject,
        "messaging.destination.template": subject_template(subject),
    }
    if msg_id is not None:
        attributes["messaging.message.id"] = msg_id
    name = f"publish {subject_template(subject)}"
    return _tracer().start_span(name, kind=SpanKind.PRODUCER, attributes=attributes)


@contextmanager
def producer_span(subject: str, msg_id: str | None = None) -> Iterator[Span]:
    """A PRODUCER span current while the message is being sent (see start_producer_span)."""
    with trace.use_span(start_producer_span(subject, msg_id), end_on_exit=True) as span:
        yield span


def inject_span(headers: Mapping[str, str] | None, span: Span) -> dict[str, str]:
    """A copy of ``headers`` carrying ``span`` as the parent for consumers."""
    return inject(headers, context=trace.set_span_in_context(span))


def _stream_metadata(msg: object) -> tuple[str | None, int | None]:
    try:
        meta = msg.metadata  # type: ignore[attr-defined]
    except Exception:  # a plain (non-JetStream) message has no metadata
        return None, None
    return meta.stream, meta.sequence.stream


def start_consumer_span(
    msg: _HasHeaders,
    *,
    operation: str = "process",
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    """Start (not activate) a CONSUMER span for ``msg``; the caller must end it.

    For batch consumers (a datapath worker applies a whole fetch in one reconcile): every
    message gets its own span, child of and linked to its producer's context, open from when the
    batch is absorbed until it is acked, so each change's trace shows that node's work.
    """
    headers = msg.headers or {}
    parent = extract(headers)
    producer_ctx = trace.get_current_span(parent).get_span_context()
    links = [Link(producer_ctx)] if producer_ctx.is_valid else []
    attrs: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": operation,
        "messaging.operation.type": "process",
        "messaging.destination.name": msg.subject,
        "messaging.destination.template": subject_template(msg.subject),
    }
    msg_id = headers.get("Nats-Msg-Id")
    if msg_id:
        attrs["messaging.message.id"] = msg_id
    stream, seq = _stream_metadata(msg)
    if stream is not None:
        attrs[ATTR_STREAM] = stream
    if seq is not None:
        attrs[ATTR_STREAM_SEQUENCE] = seq
    attrs.update(attributes or {})
    name = f"{operation} {subject_template(msg.subject)}"
    return _tracer().start_span(
        name, context=parent, kind=SpanKind.CONSUMER, links=links, attributes=attrs
    )


@contextmanager
def consumer_span(msg: _HasHeaders, *, operation: str = "process") -> Iterator[Span]:
    """A CONSUMER span for handling ``msg``: child of and linked to the producer's context."""
    with trace.use_span(start_consumer_span(msg, operation=operation), end_on_exit=True) as span:
        yield span


def setup_tracing(
    service_name: str,
    *,
    node: str | None = None,
    trace_file: str | None = None,
    set_global: bool = True,
) -> Any:
    """Configure the OpenTelemetry SDK for one process; returns the SDK ``TracerProvider``.

    Exporters: OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-specific variable)
    is set; a JSON-lines file when ``trace_file`` or ``WEIR_TRACE_FILE`` is set. With neither,
    spans are still created (context still propagates) but not exported. ``OTEL_SDK_DISABLED``,
    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and the sampler variables are honoured by
    the SDK itself.
    """
    # Imported here, not at module level: libraries import this module for the API helpers and
    # must not pull in the SDK and exporters; only entry points pay for them.
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    from services.common.tracefile import JsonLinesSpanExporter  # noqa: PLC0415

    attrs: dict[str, Any] = {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}
    if node:
        attrs["weir.node"] = node
        attrs["host.name"] = node
    provider = TracerProvider(resource=Resource.create(attrs))
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    path = trace_file or os.environ.get("WEIR_TRACE_FILE")
    if path:
        provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(path)))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider
