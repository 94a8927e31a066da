"""A span exporter that appends one JSON object per span to a file (OTLP/JSON-ish).

Why a file: no OTel collector can run here, yet an operator must be able to follow one change
from the watcher through the bus to every node's maps (``weir trace``). Every process appends to
the same file with ``O_APPEND`` and writes each batch in a single ``write`` call, so lines from
concurrent processes never interleave (Linux guarantees this for appends of whole buffers on a
local file). IDs are lower-case hex as in OTLP/JSON; times are unix nanoseconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import format_span_id, format_trace_id


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """The JSON shape of one span, as read back by ``weir trace``."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    return {
        "trace_id": format_trace_id(ctx.trace_id),
        "span_id": format_span_id(ctx.span_id),
        "parent_span_id": format_span_id(parent.span_id) if parent is not None else "",
        "name": span.name,
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "attributes": {k: _jsonable(v) for k, v in (span.attributes or {}).items()},
        "status": {"code": span.status.status_code.name, "message": span.status.description or ""},
        "links": [
            {
                "trace_id": format_trace_id(link.context.trace_id),
                "span_id": format_span_id(link.context.span_id),
            }
            for link in span.links
        ],
        "events": [
            {
                "name": ev.name,
                "time_unix_nano": ev.timestamp,
                "attributes": dict(ev.attributes or {}),
            }
            for ev in span.events
        ],
        "resource": {
            "service.name": span.resource.attributes.get("service.name", ""),
            "attributes": {k: _jsonable(v) for k, v in span.resource.attributes.items()},
        },
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Sequence):
        return [_jsonable(v) for v in value]
    return str(value)


class JsonLinesSpanExporter(SpanExporter):
    """Append spans to ``path`` as JSON lines."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)  # e.g. the sandbox's <state>/traces/

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        data = "".join(json.dumps(span_to_dict(s), separators=(",", ":")) + "\n" for s in spans)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data.encode())
            finally:
                os.close(fd)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
