"""W3C trace context across the bus, and OpenTelemetry setup for entry points.

Why this shape: libraries (the bus helpers, the services) only use the OpenTelemetry *API*, so
they cost nothing until an entry point calls :func:`setup_tracing`, which configures the SDK from
the standard ``OTEL_*`` variables. Every message carries ``traceparent``/``tracestate`` headers:
:func:`producer_span` wraps a publish, :func:`consumer_span` wraps the handling of one message and
is both a child of the producer's context (one trace per change, end to end) and linked to it
(what the messaging semantic conventions ask for when a consumer may batch).

Cost, because consumer spans are per message on the hot path: with no SDK provider installed
(:func:`setup_tracing` installs one only when an exporter is configured) :func:`start_consumer_span`
returns one cached non-recording span without reading the headers, and producers inject nothing.
When tracing is on, the ``traceparent`` header is parsed by a small strict parser (the common
case: W3C version 00, no ``tracestate``/``baggage``); anything else goes through
``propagate.extract``, so the configured propagators still decide every other case.

Span names follow ``"{operation} {destination}"`` with a low-cardinality destination: the subject
with its per-object tokens replaced by ``*`` (see :func:`subject_template`); the full subject is in
``messaging.destination.name``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
)

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


# W3C trace context, version 00, lower-case hex (what every Weir producer sends)
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_SLOW_HEADERS = ("tracestate", "baggage")


def parse_traceparent(value: str) -> SpanContext | None:
    """The remote span context of a version-00 ``traceparent``; None when it is not one (the
    caller falls back to the configured propagators) or names an all-zero trace or span."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)))


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried in message headers (an empty context when there is none)."""
    if headers:
        value = headers.get("traceparent")
        if value is not None and not any(h in headers for h in _SLOW_HEADERS):
            parent = parse_traceparent(value)
            if parent is not None:
                return trace.set_span_in_context(NonRecordingSpan(parent))
    return propagate.extract(dict(headers or {}))


def is_recording_provider(provider: object) -> bool:
    """False for the API's default (proxy) and no-op providers: spans would go nowhere."""
    return not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)


# trace.get_tracer_provider() looks OTEL_PYTHON_TRACER_PROVIDER up in os.environ on every call
# until a provider is set (~10 % of the watcher's relist in a profile, per message). The global
# it guards is read directly instead; with that variable set (a provider loaded lazily by name)
# or an API without the global, the public call decides.
_UNSET = object()
_LAZY_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def enabled() -> bool:
    """Whether a real (SDK) tracer provider is installed globally, i.e. spans are recorded."""
    provider = getattr(trace, "_TRACER_PROVIDER", _UNSET)
    if provider is _UNSET or (provider is None and _LAZY_PROVIDER):
        provider = trace.get_tracer_provider()
    return provider is not None and is_recording_provider(provider)


_TRACER: trace.Tracer | None = None


def _tracer() -> trace.Tracer:
    # get_tracer() builds a new tracer (and its instrumentation scope) on every call: a
    # measurable cost per message. The API returns a proxy until setup_tracing() installs the
    # SDK provider and the proxy then forwards to it, so caching it here is safe.
    global _TRACER  # noqa: PLW0603
    if _TRACER is None:
        _TRACER = trace.get_tracer(TRACER_NAME)
    return _TRACER


def start_producer_span(
    subject: str, msg_id: str | None = None, *, context: Context | None = None
) -> Span:
    """Start (not activate) a PRODUCER span ``publish <template>``; the caller must end it.
    ``context``: its parent (default: the current context)."""
    if not enabled():
        return INVALID_SPAN
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
    return _tracer().start_span(
        name, context=context, kind=SpanKind.PRODUCER, attributes=attributes
    )


@contextmanager
def producer_span(
    subject: str, msg_id: str | None = None, *, context: Context | None = None
) -> Iterator[Span]:
    """A PRODUCER span current while the message is being sent (see start_producer_span)."""
    span = start_producer_span(subject, msg_id, context=context)
    with trace.use_span(span, end_on_exit=True):
        yield span


def inject_span(headers: Mapping[str, str] | None, span: Span) -> dict[str, str]:
    """A copy of ``headers`` carrying ``span`` as the parent for consumers."""
    if not span.get_span_context().is_valid:  # tracing off: nothing to carry
        return dict(headers or {})
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
    if not enabled():
        return INVALID_SPAN  # nothing records: skip the header parsing and the attributes
    headers = msg.headers or {}
    parent = extract(headers)
    producer_ctx = trace.get_current_span(parent).get_span_context()
    links = [Link(producer_ctx)] if producer_ctx.is_valid else []
    template = subject_template(msg.subject)
    attrs: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": operation,
        "messaging.operation.type": "process",
        "messaging.destination.name": msg.subject,
        "messaging.destination.template": template,
    }
    msg_id = headers.get("Nats-Msg-Id")
    if msg_id:
        attrs["messaging.message.id"] = msg_id
    stream, seq = _stream_metadata(msg)
    if stream is not None:
        attrs[ATTR_STREAM] = stream
    if seq is not None:
        attrs[ATTR_STREAM_SEQUENCE] = seq
    if attributes:
        attrs.update(attributes)
    return _tracer().start_span(
        f"{operation} {template}", context=parent, kind=SpanKind.CONSUMER, links=links,
        attributes=attrs,
    )  # fmt: skip


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
    the provider is returned but not installed globally: spans would be created for nothing
    (per message, on the hot path), so the process runs on the API's no-op tracer instead
    (consumer spans are skipped and producers add no ``traceparent``). ``OTEL_SDK_DISABLED``,
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
    if set_global and (endpoint or path):
        trace.set_tracer_provider(provider)
    return provider
