"""The span-file reader and the waterfall: bad lines are named and skipped, order is a tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.ops.trace_read import (
    TraceInputError,
    load_spans,
    parse_object,
    trace_json,
    traces_for,
)
from services.ops.trace_view import bar, key_attributes


def span(span_id: str, parent: str, start: int, **attrs: Any) -> dict[str, Any]:
    return {
        "trace_id": "t1",
        "span_id": span_id,
        "parent_span_id": parent,
        "name": f"op {span_id}",
        "kind": attrs.pop("kind", "INTERNAL"),
        "start_time_unix_nano": start,
        "end_time_unix_nano": start + 1_000_000,
        "attributes": attrs,
        "resource": {"service.name": "svc", "attributes": {"weir.node": attrs.get("node", "")}},
    }


def test_bad_lines_are_named_and_the_rest_is_read(tmp_path: Path) -> None:
    good = span("a", "", 10, **{"messaging.destination.name": "weir.v1.k8s.service.default.web"})
    path = tmp_path / "w.jsonl"
    bad_start = dict(good, span_id="b", start_time_unix_nano="soon")
    path.write_text("\n".join([json.dumps(good), "{torn", json.dumps(bad_start), "[1]"]) + "\n")
    spans, problems = load_spans([path, tmp_path / "missing.jsonl"])
    assert [s.span_id for s in spans] == ["a"]
    assert "missing.jsonl: cannot read" in problems[0]  # files are read in sorted order
    assert f"{path}:2: not JSON" in problems[1]
    assert f"{path}:3: field 'start_time_unix_nano' must be int" in problems[2]
    assert f"{path}:4: a span line must be a JSON object" in problems[3]


def test_waterfall_is_parent_child_ordered_and_counts_orphans(tmp_path: Path) -> None:
    lines = [
        span("c2", "p", 30, node="n2", kind="CONSUMER"),
        span("p", "root", 20, kind="PRODUCER"),
        span("c1", "p", 25, node="n1", kind="CONSUMER"),
        span("root", "", 10, **{"weir.object": "service default/web"}),
        span("lost", "gone", 40),
    ]
    other = dict(span("x", "", 5), trace_id="t2")
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in [*lines, other]))
    spans, _ = load_spans([path])
    [trace] = traces_for(spans, parse_object("service/default/web"))
    assert [(d, s.span_id) for d, s in trace.rows] == [
        (0, "root"),
        (1, "p"),
        (2, "c1"),
        (2, "c2"),
        (0, "lost"),
    ]
    assert trace.orphans == 1
    doc = trace_json(trace)
    assert doc["spans"][2]["start_offset_ms"] == pytest.approx(15e-6)
    assert doc["spans"][2]["process"] == "svc@n1"
    assert traces_for(spans, parse_object("service/default/api")) == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("gadget/default/x", "kind 'gadget'"),
        ("service/x", "service/NAMESPACE/NAME"),
        ("node/a/b", "node/NAME"),
        ("service//x", "service/NAMESPACE/NAME"),
    ],
)
def test_bad_object_names_say_how_to_write_it(text: str, needle: str) -> None:
    with pytest.raises(TraceInputError, match=needle):
        parse_object(text)
    assert parse_object("node/n1.example").subject == "weir.v1.k8s.node._cluster.n1_2eexample"


def test_bar_and_attributes() -> None:
    assert bar(0, 50, 0, 100, width=10) == "█████     "
    assert bar(90, 100, 0, 100, width=10) == "         █"
    attrs = {"weir.network_programming_seconds": 0.0123, "weir.maps_touched": ["a", "b"]}
    assert key_attributes(attrs) == "maps=a,b programmed=12.3ms"
