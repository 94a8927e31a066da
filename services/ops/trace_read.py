"""Reading span files back and finding one object's traces: pure, so ``weir trace`` is testable.

Why this shape: every Weir process appends its spans as JSON lines (one file per process, see
:mod:`services.common.tracefile`); a change's trace is spread over those files, so the reader
loads them all, groups spans by trace id and keeps the traces in which some span names the
object's subject (``messaging.destination.name``: the watcher's publish, every consumer's
process span) or the object itself (``weir.object``). A torn or foreign line is reported with its
file, line and field and skipped: a half-written file must not hide the other processes' spans.

A trace becomes rows of a waterfall: spans in parent/child order (children by start time), with
their depth; a span whose parent is in no file (the process that wrote it is gone, or its batch
was not flushed yet) is shown at depth 0 and counted as an orphan.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.subjects import CLUSTER_SCOPED_KINDS, K8S_KINDS, SubjectError, k8s_subject


class TraceInputError(ValueError):
    """An object designator or a span line that cannot be read; the message names it."""


@dataclass(frozen=True, slots=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start: int  # unix ns
    end: int
    attributes: Mapping[str, Any]
    service: str
    node: str
    status: str = "UNSET"
    status_message: str = ""
    links: tuple[tuple[str, str], ...] = ()
    source: str = ""

    @property
    def process(self) -> str:
        return f"{self.service}@{self.node}" if self.node else self.service

    @property
    def duration_ns(self) -> int:
        return max(0, self.end - self.start)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    kind: str
    namespace: str | None
    name: str

    @property
    def subject(self) -> str:
        return k8s_subject(self.kind, self.namespace, self.name)

    def names(self) -> set[str]:
        """Spellings of this object in ``weir.object`` attributes (worker and watcher style)."""
        ns = self.namespace or "-"
        where = f"{self.namespace}/" if self.namespace else ""
        return {f"{self.kind}/{ns}/{self.name}", f"{self.kind} {where}{self.name}"}

    def __str__(self) -> str:
        return (
            f"{self.kind}/{self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind}/{self.name}")
        )


def parse_object(text: str) -> ObjectRef:
    """``KIND/NAMESPACE/NAME`` (``KIND/NAME`` for nodes and namespaces)."""
    parts = text.strip().split("/")
    kind = parts[0].lower() if parts else ""
    if kind not in K8S_KINDS:
        raise TraceInputError(
            f"object {text!r}: kind {kind!r} is not one of {', '.join(K8S_KINDS)}"
        )
    if kind in CLUSTER_SCOPED_KINDS:
        if len(parts) == 3 and parts[1] in ("", "-"):
            parts = [parts[0], parts[2]]
        if len(parts) != 2 or not parts[1]:
            raise TraceInputError(f"object {text!r}: a {kind} is written {kind}/NAME")
        ref = ObjectRef(kind, None, parts[1])
    else:
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise TraceInputError(f"object {text!r}: a {kind} is written {kind}/NAMESPACE/NAME")
        ref = ObjectRef(kind, parts[1], parts[2])
    try:
        _ = ref.subject
    except SubjectError as exc:
        raise TraceInputError(f"object {text!r}: {exc}") from None
    return ref


def _field(raw: Mapping[str, Any], name: str, typ: type, source: str) -> Any:
    value = raw.get(name)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
        raise TraceInputError(f"{source}: field {name!r} must be {typ.__name__}, got {value!r}")
    return value


def parse_span(line: str, source: str) -> SpanRecord:
    """One JSON line as written by :class:`services.common.tracefile.JsonLinesSpanExporter`."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceInputError(f"{source}: not JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise TraceInputError(f"{source}: a span line must be a JSON object")
    resource = raw.get("resource") or {}
    res_attrs = resource.get("attributes") or {} if isinstance(resource, dict) else {}
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise TraceInputError(f"{source}: field 'attributes' must be an object")
    status = raw.get("status") or {}
    links = tuple(
        (str(link.get("trace_id", "")), str(link.get("span_id", "")))
        for link in raw.get("links") or []
        if isinstance(link, dict)
    )
    return SpanRecord(
        trace_id=_field(raw, "trace_id", str, source),
        span_id=_field(raw, "span_id", str, source),
        parent_span_id=str(raw.get("parent_span_id") or ""),
        name=_field(raw, "name", str, source),
        kind=str(raw.get("kind") or "INTERNAL"),
        start=_field(raw, "start_time_unix_nano", int, source),
        end=_field(raw, "end_time_unix_nano", int, source),
        attributes=attributes,
        service=str(resource.get("service.name") or res_attrs.get("service.name") or "?"),
        node=str(res_attrs.get("weir.node") or attributes.get("weir.node") or ""),
        status=str(status.get("code", "UNSET")) if isinstance(status, dict) else "UNSET",
        status_message=str(status.get("message", "")) if isinstance(status, dict) else "",
        links=links,
        source=source,
    )


def load_spans(paths: Iterable[Path]) -> tuple[list[SpanRecord], list[str]]:
    """Every readable span in ``paths``, and one problem line per unreadable line or file."""
    spans: list[SpanRecord] = []
    problems: list[str] = []
    for path in sorted(set(paths)):
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                spans.append(parse_span(line, f"{path}:{number}"))
            except TraceInputError as exc:
                problems.append(str(exc))
    return spans, problems


@dataclass
class Trace:
    trace_id: str
    spans: list[SpanRecord]
    rows: list[tuple[int, SpanRecord]] = field(default_factory=list)
    orphans: int = 0

    @property
    def start(self) -> int:
        return min(s.start for s in self.spans)

    @property
    def end(self) -> int:
        return max(s.end for s in self.spans)

    def processes(self) -> list[str]:
        return sorted({s.process for s in self.spans})


def _mentions(span: SpanRecord, ref: ObjectRef) -> bool:
    attrs = span.attributes
    return attrs.get("messaging.destination.name") == ref.subject or (
        attrs.get("weir.object") in ref.names()
    )


def waterfall(spans: list[SpanRecord]) -> tuple[list[tuple[int, SpanRecord]], int]:
    """Rows (depth, span) in parent/child order; and how many spans have an unknown parent."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[SpanRecord]] = {}
    roots: list[SpanRecord] = []
    orphans = 0
    for s in spans:
        if s.parent_span_id and s.parent_span_id in ids:
            children.setdefault(s.parent_span_id, []).append(s)
        else:
            roots.append(s)
            orphans += bool(s.parent_span_id)

    def order(items: list[SpanRecord]) -> list[SpanRecord]:
        return sorted(items, key=lambda s: (s.start, s.process, s.span_id))

    rows: list[tuple[int, SpanRecord]] = []
    stack = [(0, s) for s in reversed(order(roots))]
    while stack:
        depth, span = stack.pop()
        rows.append((depth, span))
        stack.extend((depth + 1, c) for c in reversed(order(children.get(span.span_id, []))))
    return rows, orphans


def traces_for(spans: Iterable[SpanRecord], ref: ObjectRef, last: int = 0) -> list[Trace]:
    """The traces that involve ``ref``, oldest first; only the ``last`` N when N > 0."""
    by_trace: dict[str, list[SpanRecord]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    found: list[Trace] = []
    for trace_id, members in by_trace.items():
        if any(_mentions(s, ref) for s in members):
            unique = list({s.span_id: s for s in members}.values())
            rows, orphans = waterfall(unique)
            found.append(Trace(trace_id, unique, rows, orphans))
    found.sort(key=lambda t: (t.start, t.trace_id))
    return found[-last:] if last > 0 else found


def trace_json(trace: Trace) -> dict[str, Any]:
    """The JSON shape of one trace for ``weir trace -o json``."""
    t0 = trace.start
    return {
        "trace_id": trace.trace_id,
        "start_time_unix_nano": t0,
        "duration_ms": (trace.end - t0) / 1e6,
        "processes": trace.processes(),
        "orphans": trace.orphans,
        "spans": [
            {
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id,
                "depth": depth,
                "name": s.name,
                "kind": s.kind,
                "service": s.service,
                "node": s.node,
                "process": s.process,
                "start_offset_ms": (s.start - t0) / 1e6,
                "duration_ms": s.duration_ns / 1e6,
                "status": s.status,
                "attributes": dict(s.attributes),
                "links": [{"trace_id": t, "span_id": sp} for t, sp in s.links],
            }
            for depth, s in trace.rows
        ],
    }
