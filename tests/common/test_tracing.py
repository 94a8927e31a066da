"""Trace context travels in message headers; consumer spans continue the producer's trace."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from contracts import subjects as s
from services.common import tracing
from services.common.bus import Bus, consume, publish


def test_subject_template_hides_object_names() -> None:
    assert tracing.subject_template("weir.v1.k8s.pod.ns.p1") == "weir.v1.k8s.pod.*.*"
    assert tracing.subject_template("weir.v1.identity.300") == "weir.v1.identity.*"
    assert tracing.subject_template("weir.v1.flows.node1.DROPPED") == "weir.v1.flows.*.*"
    assert tracing.subject_template("other.subject") == "other.subject"


def test_inject_extract_roundtrip(span_exporter: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        headers = tracing.inject({"x": "1"})
    assert headers["x"] == "1"
    ctx = outer.get_span_context()
    assert headers["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    extracted = trace.get_current_span(tracing.extract(headers)).get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (ctx.trace_id, ctx.span_id)
    assert not trace.get_current_span(tracing.extract({})).get_span_context().is_valid


async def test_consumer_span_is_child_of_producer_span(
    bus: Bus, span_exporter: InMemorySpanExporter
) -> None:
    subject = s.k8s_subject("service", "default", "web")
    got: list[Msg] = []
    seen = asyncio.Event()

    async def handler(msg: Msg) -> None:
        got.append(msg)
        seen.set()

    await publish(bus.js, subject, b"{}", msg_id="svc-1", headers={"x-extra": "kept"})
    task = asyncio.create_task(
        consume(
            bus.js,
            stream=s.STREAM_K8S,
            durable="t-trace",
            filter_subjects=[s.k8s_filter("service")],
            handler=handler,
            fetch_timeout=0.2,
        )
    )
    try:
        await asyncio.wait_for(seen.wait(), 10)
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    headers = got[0].headers or {}
    assert headers["Nats-Msg-Id"] == "svc-1" and headers["x-extra"] == "kept"
    assert headers["traceparent"].startswith("00-")
    spans = span_exporter.get_finished_spans()
    producer = next(sp for sp in spans if sp.kind == SpanKind.PRODUCER)
    consumer = next(sp for sp in spans if sp.kind == SpanKind.CONSUMER)
    pctx, cctx = producer.get_span_context(), consumer.get_span_context()
    assert pctx is not None and cctx is not None
    assert producer.name == "publish weir.v1.k8s.service.*.*"
    assert consumer.name == "process weir.v1.k8s.service.*.*"
    assert cctx.trace_id == pctx.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == pctx.span_id
    assert [link.context.span_id for link in consumer.links] == [pctx.span_id]
    assert headers["traceparent"].split("-")[2] == f"{pctx.span_id:016x}"
    for sp in (producer, consumer):
        attrs = sp.attributes or {}
        assert attrs["messaging.system"] == "nats"
        assert attrs["messaging.destination.name"] == subject
        assert attrs["messaging.message.id"] == "svc-1"
        assert attrs[tracing.ATTR_STREAM_SEQUENCE] == 1
        assert attrs[tracing.ATTR_STREAM] == s.STREAM_K8S


def test_setup_tracing_writes_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    path = tmp_path / "trace.jsonl"
    provider = tracing.setup_tracing("weir-test", node="n1", trace_file=str(path), set_global=False)
    tracer = provider.get_tracer("t")
    with (
        tracer.start_as_current_span("parent") as parent,
        tracer.start_as_current_span("child", attributes={"k": "v", "n": [1, 2]}),
    ):
        pass
    provider.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["child", "parent"]
    child, par = lines
    pctx = parent.get_span_context()
    assert par["span_id"] == f"{pctx.span_id:016x}" and par["parent_span_id"] == ""
    assert child["parent_span_id"] == par["span_id"]
    assert child["trace_id"] == par["trace_id"] == f"{pctx.trace_id:032x}"
    assert child["attributes"] == {"k": "v", "n": [1, 2]}
    assert child["resource"]["service.name"] == "weir-test"
    assert child["resource"]["attributes"]["weir.node"] == "n1"
    assert child["kind"] == "INTERNAL"
    assert par["start_time_unix_nano"] <= child["start_time_unix_nano"]
    assert child["end_time_unix_nano"] <= par["end_time_unix_nano"]


def test_parse_traceparent_is_strict() -> None:
    tid, sid = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    ctx = tracing.parse_traceparent(f"00-{tid:032x}-{sid:016x}-01")
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, int(ctx.trace_flags), ctx.is_remote) == (tid, sid, 1, True)
    for bad in (
        f"00-{tid:032X}-{sid:016x}-01",  # upper case: the propagator decides
        f"ff-{tid:032x}-{sid:016x}-01",  # unknown version
        f"00-{tid:032x}-{sid:016x}-01-extra",
        f"00-{0:032x}-{sid:016x}-01",  # all-zero trace id
        f"00-{tid:032x}-{0:016x}-01",  # all-zero span id
        "garbage",
        "",
    ):
        assert tracing.parse_traceparent(bad) is None, bad


def test_extract_fast_path_matches_the_propagator() -> None:
    tid, sid = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    headers = {"traceparent": f"00-{tid:032x}-{sid:016x}-01", "Nats-Msg-Id": "x"}
    fast = trace.get_current_span(tracing.extract(headers)).get_span_context()
    slow = trace.get_current_span(propagate.extract(headers)).get_span_context()
    assert fast == slow and fast.trace_id == tid and fast.span_id == sid
    # tracestate present: the configured propagators handle it (and keep it)
    headers["tracestate"] = "vendor=abc"
    ctx = trace.get_current_span(tracing.extract(headers)).get_span_context()
    assert ctx.trace_id == tid and ctx.trace_state.get("vendor") == "abc"
    # malformed: same answer as the propagator (an invalid context)
    bad = {"traceparent": "00-xyz"}
    assert not trace.get_current_span(tracing.extract(bad)).get_span_context().is_valid


def test_recording_provider_detection() -> None:
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

    assert not tracing.is_recording_provider(trace.ProxyTracerProvider())
    assert not tracing.is_recording_provider(trace.NoOpTracerProvider())
    assert tracing.is_recording_provider(TracerProvider())


_UNCONFIGURED = """
import json, os, sys
from opentelemetry import propagate, trace
from services.common import tracing

class M:
    subject = "weir.v1.k8s.service.default.web"
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

os.environ.pop("WEIR_TRACE_FILE", None)
os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
os.environ.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
tracing.setup_tracing("t")  # no exporter: nothing installed
out = {"enabled_before": tracing.enabled()}
span = tracing.start_consumer_span(M(), attributes={"a": 1})
out["consumer_invalid"] = span is trace.INVALID_SPAN
prod = tracing.start_producer_span(M.subject, "id-1")
out["producer_invalid"] = prod is trace.INVALID_SPAN
out["injected"] = sorted(tracing.inject_span({"k": "v"}, prod))
tracing.setup_tracing("t", trace_file=sys.argv[1])  # an exporter: installed, spans record
out["enabled_after"] = tracing.enabled()
span = tracing.start_consumer_span(M(), attributes={"a": 1})
out["consumer_recording"] = span.is_recording()
out["consumer_trace"] = f"{span.get_span_context().trace_id:032x}"
span.end()
print(json.dumps(out))
"""


def test_consumer_spans_are_skipped_until_an_exporter_is_configured(tmp_path: Path) -> None:
    """In a fresh process (the global provider can be set only once per process)."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    proc = subprocess.run(
        [sys.executable, "-c", _UNCONFIGURED, str(tmp_path / "t.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "enabled_before": False,
        "consumer_invalid": True,
        "producer_invalid": True,
        "injected": ["k"],
        "enabled_after": True,
        "consumer_recording": True,
        "consumer_trace": "0af7651916cd43dd8448eb211c80319c",
    }
