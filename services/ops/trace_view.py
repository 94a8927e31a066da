"""The terminal waterfall of one trace (rich): who did what, when, for how long.

Why this shape: an operator asks "where did the time go between my kubectl apply and node n2's
maps?". Each row is one span: the process (service@node), the span name indented under its
parent, its start offset from the trace's first span, its duration, a bar placed on a common time
axis, and the few attributes that answer the question (stream sequence, entries written, the
network-programming latency). Rendering is separate from reading (:mod:`.trace_read`) so the
JSON output and the table come from the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text

from services.ops.trace_read import SpanRecord, Trace

BAR_WIDTH = 32

_KEY_ATTRS = (
    ("messaging.nats.stream_sequence", "seq"),
    ("weir.op", "op"),
    ("weir.entries_written", "writes"),
    ("weir.maps_touched", "maps"),
    ("weir.batch.size", "batch"),
)


def bar(start: int, end: int, t0: int, total: int, width: int = BAR_WIDTH) -> str:
    """A bar of ``width`` cells placing [start, end] on the axis [t0, t0 + total] (pure)."""
    if total <= 0:
        return "█".ljust(width)
    first = min(width - 1, int((start - t0) * width / total))
    last = max(first + 1, min(width, round((end - t0) * width / total)))
    return (" " * first + "█" * (last - first)).ljust(width)


def key_attributes(attrs: Mapping[str, Any]) -> str:
    """The few attributes worth a column, as ``k=v`` words."""
    words = []
    for key, short in _KEY_ATTRS:
        value = attrs.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        words.append(f"{short}={value}")
    latency = attrs.get("weir.network_programming_seconds")
    if isinstance(latency, int | float):
        words.append(f"programmed={latency * 1000:.1f}ms")
    if (dup := attrs.get("messaging.nats.duplicate")) is True:
        words.append(f"duplicate={dup}")
    return " ".join(words)


def _style(span: SpanRecord) -> str:
    if span.status == "ERROR":
        return "red"
    return {"PRODUCER": "cyan", "CONSUMER": "green"}.get(span.kind, "white")


def waterfall_table(trace: Trace, title: str) -> Table:
    t0, total = trace.start, trace.end - trace.start
    table = Table(
        title=f"{title}  trace {trace.trace_id}  {total / 1e6:.2f} ms  "
        f"{len(trace.spans)} spans in {len(trace.processes())} processes",
        title_justify="left",
        expand=False,
    )
    table.add_column("process", no_wrap=True)
    table.add_column("span", no_wrap=True)
    table.add_column("start ms", justify="right")
    table.add_column("dur ms", justify="right")
    table.add_column("", no_wrap=True)
    table.add_column("attributes")
    for depth, span in trace.rows:
        style = _style(span)
        table.add_row(
            span.process,
            Text("  " * depth + span.name, style=style),
            f"{(span.start - t0) / 1e6:.2f}",
            f"{span.duration_ns / 1e6:.2f}",
            Text(bar(span.start, span.end, t0, total), style=style),
            key_attributes(span.attributes),
        )
    if trace.orphans:
        table.caption = f"{trace.orphans} span(s) whose parent is in no span file"
    return table
