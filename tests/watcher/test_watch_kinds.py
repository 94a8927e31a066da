"""Create/replace/delete of every kind reach the bus as contract events within a second."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.subjects import K8S_KINDS, k8s_subject
from contracts.v1 import K8sEvent
from services.watcher.state import ObjectKey
from tests.apiserver.conftest import Kube
from tests.watcher import kubeops
from tests.watcher.conftest import RunningWatcher, Seen, Tap
from tests.watcher.samples import change, sample

WITHIN = 1.0


def _event(m: Seen) -> K8sEvent:
    return K8sEvent.model_validate(m.data)


@pytest.mark.parametrize("kind", K8S_KINDS)
async def test_create_replace_delete(
    kind: str,
    kube: Kube,
    tap: Tap,
    span_exporter: InMemorySpanExporter,
    watcher: RunningWatcher,
) -> None:
    name = f"w-{kind}-1"
    obj = sample(kind, name)
    ns = None if kind in ("namespace", "node") else "default"
    subject = k8s_subject(kind, ns, name)

    created = await kubeops.create(kube, kind, obj)
    uid = created["metadata"]["uid"]
    up = await tap.wait_for(lambda m: m.subject == subject, WITHIN)
    ev = _event(up)
    assert (ev.op.value, ev.uid, ev.resource_version) == (
        "UPSERT",
        uid,
        created["metadata"]["resourceVersion"],
    )
    assert ev.object is not None and ev.object.kind == kind
    assert up.headers["Nats-Msg-Id"] == ev.msg_id()
    assert "traceparent" in up.headers
    # the spans end when the stream's ack is back at the watcher, which can be after the tap
    # has the message: wait for them
    for _ in range(200):
        finished = span_exporter.get_finished_spans()
        spans = [(s.kind.name, dict(s.attributes or {})) for s in finished]
        mine = [(k, a) for k, a in spans if a.get("messaging.destination.name") == subject]
        if {k for k, _ in mine} >= {"PRODUCER", "INTERNAL"}:
            break
        await asyncio.sleep(0.01)
    assert {k for k, _ in mine} >= {"PRODUCER", "INTERNAL"}
    assert any(a.get("weir.object") == str(ObjectKey(kind, ns, name)) for _, a in mine)

    replaced = await kubeops.replace(kube, kind, change(kind, obj))
    rv2 = replaced["metadata"]["resourceVersion"]
    up2 = await tap.wait_for(
        lambda m: m.subject == subject and m.data["resource_version"] == rv2, WITHIN
    )
    assert _event(up2).object != ev.object

    await kubeops.delete(kube, kind, obj)
    gone = await tap.wait_for(lambda m: m.subject == subject and m.data["op"] == "DELETE", WITHIN)
    assert _event(gone).uid == uid
    # one message per change, nothing twice
    assert [m.data["op"] for m in tap.messages if m.subject == subject] == [
        "UPSERT",
        "UPSERT",
        "DELETE",
    ]
    assert tap.schema_violations() == []
