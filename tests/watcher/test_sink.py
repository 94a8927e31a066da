"""The NATS sink's pipelined path (a relist's batch) on a real nats-server.

What must hold however the batch is sent: every action reaches the stream once with its
deterministic msg id, a re-created object's DELETE lands before its new UPSERT, invalid objects
go out as validation reports, the sink returns exactly what was accepted, and with tracing on
every message's PRODUCER span is a child of that object's watcher span.
"""

from __future__ import annotations

from typing import Any

from nats.js.api import RawStreamMsg
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from contracts.subjects import STREAM_K8S, k8s_subject
from contracts.v1 import K8sEvent, ValidationReport
from services.common.bus import Bus
from services.watcher.observe import make_normaliser
from services.watcher.sink import SEQUENTIAL_MAX, NatsSink
from services.watcher.state import Action, Delete, Invalid, Report, Upsert, Valid
from tests.watcher.samples import sample

N = 40


def _service(name: str, uid: str, rv: str) -> dict[str, Any]:
    obj = sample("service", name)
    obj["metadata"] |= {"uid": uid, "resourceVersion": rv}
    return obj


def _upsert(obj: dict[str, Any]) -> Upsert:
    obs = make_normaliser("sink-test")("service", obj)
    assert isinstance(obs, Valid)
    return Upsert(obs.key, obs.fingerprint, obs.payload)


def _published(kind: str, op: str) -> float:
    value = REGISTRY.get_sample_value("weir_watcher_published_total", {"kind": kind, "op": op})
    return value or 0.0


async def _stream(bus: Bus, first: int) -> list[RawStreamMsg]:
    info = await bus.js.stream_info(STREAM_K8S)
    return [await bus.js.get_msg(STREAM_K8S, seq) for seq in range(first, info.state.last_seq + 1)]


async def test_relist_batch_reaches_the_stream_in_a_safe_order(bus: Bus) -> None:
    upserts = [_upsert(_service(f"s{i}", f"uid-{i}", "7")) for i in range(N)]
    # "s0" was re-created: the old uid's DELETE comes after the new UPSERT in the action list
    old = _upsert(_service("s0", "uid-old", "3"))
    tombstone = Delete(old.key, old.fingerprint)
    bad = make_normaliser("sink-test")("service", {"metadata": {"name": "Bad_Name"}})
    assert isinstance(bad, Invalid)
    actions: list[Action] = [*upserts, tombstone, Report(bad)]
    assert len(actions) > SEQUENTIAL_MAX  # the pipelined path
    before = _published("service", "UPSERT")
    start = (await bus.js.stream_info(STREAM_K8S)).state.last_seq + 1

    accepted = await NatsSink(bus.js, "sink-test", window=8).send(actions)

    assert list(accepted) == [tombstone, *upserts, Report(bad)]
    assert _published("service", "UPSERT") == before + N
    msgs = await _stream(bus, start)
    k8s = [m for m in msgs if (m.subject or "").startswith("weir.v1.k8s.")]
    assert len(k8s) == N + 1
    s0 = k8s_subject("service", "default", "s0")
    ops = [K8sEvent.model_validate_json(m.data or b"").op.value for m in k8s if m.subject == s0]
    assert ops == ["DELETE", "UPSERT"]
    want_ids = {u.payload.msg_id() for u in upserts}
    got_ids = {(m.headers or {}).get("Nats-Msg-Id") for m in k8s}
    assert want_ids < got_ids and len(got_ids) == N + 1

    # the same batch again: every msg id is a duplicate, nothing new on the stream
    last = (await bus.js.stream_info(STREAM_K8S)).state.last_seq
    assert len(await NatsSink(bus.js, "sink-test").send(actions)) == len(actions)
    assert (await bus.js.stream_info(STREAM_K8S)).state.last_seq == last


async def test_report_of_a_batch_is_published(bus: Bus) -> None:
    bad = [
        make_normaliser("sink-test")("service", {"metadata": {"name": f"Bad_{i}"}})
        for i in range(SEQUENTIAL_MAX + 1)
    ]
    assert all(isinstance(b, Invalid) for b in bad)
    sub = await bus.nc.subscribe("weir.v1.errors.>")
    try:
        sent = await NatsSink(bus.js, "sink-test").send([Report(b) for b in bad])  # type: ignore[arg-type]
        assert len(sent) == len(bad)
        reports = [ValidationReport.model_validate_json((await sub.next_msg(5)).data) for _ in bad]
    finally:
        await sub.unsubscribe()
    assert sorted(r.name or "" for r in reports) == sorted(f"Bad_{i}" for i in range(len(bad)))


async def test_traced_batch_parents_each_producer_span(
    bus: Bus, span_exporter: InMemorySpanExporter
) -> None:
    upserts = [_upsert(_service(f"t{i}", f"uid-t{i}", "1")) for i in range(SEQUENTIAL_MAX + 4)]
    await NatsSink(bus.js, "sink-test").send(upserts)
    spans = span_exporter.get_finished_spans()
    watcher = {s.context.span_id: s for s in spans if s.name == "watcher UPSERT"}
    producers = [s for s in spans if s.kind == SpanKind.PRODUCER]
    assert len(watcher) == len(producers) == len(upserts)
    for p in producers:
        assert p.parent is not None
        parent = watcher[p.parent.span_id]
        assert parent.attributes is not None and p.attributes is not None
        assert (
            parent.attributes["messaging.destination.name"]
            == (p.attributes["messaging.destination.name"])
        )
