"""Bus helpers against a real nats-server: provisioning, dedup, ack-after-effect, snapshots."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from contracts import subjects as s
from services.common.bus import (
    Bus,
    Outgoing,
    ProvisionError,
    PublishError,
    consume,
    last_per_subject,
    provision,
    publish,
    publish_batch,
)
from services.common.consume import ack_position
from services.common.streams import K8S_HISTORY
from services.common.tracing import ATTR_STREAM_SEQUENCE


async def test_provision_is_idempotent(bus: Bus) -> None:
    again = await provision(bus.js)
    assert set(again.values()) == {"unchanged"}
    assert s.STREAM_K8S in again and "KV_WEIR_LEADER" in again
    info = await bus.js.stream_info(s.STREAM_K8S)
    assert info.config.max_msgs_per_subject == K8S_HISTORY
    assert info.config.duplicate_window == pytest.approx(120.0)
    leader = await bus.js.stream_info("KV_WEIR_LEADER")
    assert leader.config.max_age == pytest.approx(5.0)


async def test_provision_updates_changed_config(bus: Bus) -> None:
    await bus.js.update_stream(
        (await bus.js.stream_info(s.STREAM_K8S)).config.evolve(max_msgs_per_subject=3)
    )
    await bus.js.update_stream(
        (await bus.js.stream_info("KV_WEIR_LEADER")).config.evolve(max_age=60.0)
    )
    outcome = await provision(bus.js)
    assert outcome[s.STREAM_K8S] == "updated"
    assert outcome["KV_WEIR_LEADER"] == "updated"
    assert outcome[s.STREAM_FLOWS] == "unchanged"
    assert (await bus.js.stream_info(s.STREAM_K8S)).config.max_msgs_per_subject == K8S_HISTORY
    assert (await bus.js.stream_info("KV_WEIR_LEADER")).config.max_age == pytest.approx(5.0)


async def test_provision_reports_unchangeable_field(bus: Bus) -> None:
    await bus.js.delete_stream(s.STREAM_STATUS)
    await bus.js.add_stream(
        StreamConfig(
            name=s.STREAM_STATUS, subjects=["weir.v1.status.>"], storage=StorageType.MEMORY
        )
    )
    with pytest.raises(ProvisionError, match=r"WEIR_STATUS.*storage"):
        await provision(bus.js)


async def test_publish_dedups_by_msg_id(bus: Bus) -> None:
    subject = s.k8s_subject("service", "default", "web")
    first = await publish(bus.js, subject, b"v1", msg_id="svc-default-web-1")
    second = await publish(bus.js, subject, b"v1", msg_id="svc-default-web-1")
    third = await publish(bus.js, subject, b"v2", msg_id="svc-default-web-2")
    assert not first.duplicate and second.duplicate and not third.duplicate
    assert second.seq == first.seq
    info = await bus.js.stream_info(s.STREAM_K8S)
    assert info.state.messages == 2


async def test_publish_batch_pipelines_in_order(bus: Bus) -> None:
    items = [
        Outgoing(s.k8s_subject("pod", "ns", f"p{i}"), f"{i}".encode(), f"pod-{i}")
        for i in range(500)
    ]
    acks = await publish_batch(bus.js, items, window=64)
    assert len(acks) == 500 and len({a.seq for a in acks}) == 500
    again = await publish_batch(bus.js, items[:10], window=4)
    assert all(a.duplicate for a in again)
    assert (await bus.js.stream_info(s.STREAM_K8S)).state.messages == 500


async def test_consume_acks_only_after_handler_success(bus: Bus) -> None:
    for i in range(5):
        await publish(bus.js, s.k8s_subject("pod", "ns", f"p{i}"), f"{i}".encode(), msg_id=f"m{i}")
    attempts: dict[str, int] = {}
    done: list[str] = []
    finished = asyncio.Event()

    async def handler(msg: Msg) -> None:
        attempts[msg.subject] = attempts.get(msg.subject, 0) + 1
        if msg.data == b"2" and attempts[msg.subject] < 3:
            raise RuntimeError("transient failure")
        done.append(msg.data.decode())
        if len(done) == 5:
            finished.set()

    task = asyncio.create_task(
        consume(
            bus.js,
            stream=s.STREAM_K8S,
            durable="t-ack",
            filter_subjects=[s.k8s_filter("pod")],
            handler=handler,
            batch=2,
            fetch_timeout=0.2,
            nak_delay=0.05,
        )
    )
    try:
        await asyncio.wait_for(finished.wait(), 10)
        await asyncio.sleep(0.3)  # let the last ack reach the server
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sorted(done) == ["0", "1", "2", "3", "4"]
    assert attempts[s.k8s_subject("pod", "ns", "p2")] == 3
    info = await bus.js.consumer_info(s.STREAM_K8S, "t-ack")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.delivered.stream_seq == 5 and info.ack_floor.stream_seq == 5


async def test_consume_terminates_poison_after_max_deliver(bus: Bus) -> None:
    await publish(bus.js, s.k8s_subject("pod", "ns", "bad"), b"bad", msg_id="bad")
    await publish(bus.js, s.k8s_subject("pod", "ns", "good"), b"good", msg_id="good")
    seen: list[bytes] = []
    good = asyncio.Event()

    async def handler(msg: Msg) -> None:
        seen.append(msg.data)
        if msg.data == b"bad":
            raise ValueError("cannot parse")
        good.set()

    task = asyncio.create_task(
        consume(
            bus.js,
            stream=s.STREAM_K8S,
            durable="t-poison",
            filter_subjects=[s.k8s_filter()],
            handler=handler,
            fetch_timeout=0.2,
            max_deliver=3,
            nak_delay=0.01,
        )
    )
    try:
        await asyncio.wait_for(good.wait(), 10)
        for _ in range(100):
            if seen.count(b"bad") >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen.count(b"bad") == 3
    info = await bus.js.consumer_info(s.STREAM_K8S, "t-poison")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_last_per_subject_returns_latest_including_tombstones(bus: Bus) -> None:
    a = s.k8s_subject("service", "default", "a")
    b = s.k8s_subject("service", "default", "b.with.dots")
    c = s.k8s_subject("service", "other", "c")
    await publish(bus.js, a, b"a1", msg_id="a1")
    await publish(bus.js, b, b"b1", msg_id="b1")
    await publish(bus.js, a, b"a2", msg_id="a2")
    await publish(bus.js, b, b"DELETE", msg_id="b-del")
    await publish(bus.js, c, b"c1", msg_id="c1")
    await publish(bus.js, s.k8s_subject("pod", "default", "x"), b"p", msg_id="p")
    snap = await last_per_subject(bus.js, s.STREAM_K8S, s.k8s_filter("service"))
    assert [(m.subject, m.data) for m in snap.messages] == [
        (a, b"a2"),
        (b, b"DELETE"),
        (c, b"c1"),
    ]
    assert snap.sequence == 6
    msgs, seq = await last_per_subject(bus.js, s.STREAM_K8S, s.k8s_filter("node"))
    assert msgs == [] and seq == 6
    consumers = await bus.js.consumers_info(s.STREAM_K8S)
    assert consumers == []


async def test_last_per_subject_streams_to_on_message_without_keeping(bus: Bus) -> None:
    a = s.k8s_subject("service", "default", "a")
    b = s.k8s_subject("service", "default", "b")
    await publish(bus.js, a, b"a1", msg_id="a1")
    await publish(bus.js, b, b"b1", msg_id="b1")
    await publish(bus.js, a, b"a2", msg_id="a2")
    got: list[tuple[str, bytes]] = []
    snap = await last_per_subject(
        bus.js,
        s.STREAM_K8S,
        s.k8s_filter("service"),
        on_message=lambda m: got.append((m.subject, m.data)),
    )
    assert sorted(got) == [(a, b"a2"), (b, b"b1")]  # the newest of each subject, handed over
    assert snap.messages == [] and snap.sequence == 3  # and not kept


async def test_ack_position_reads_what_metadata_reads(bus: Bus) -> None:
    for i in range(4):
        await publish(bus.js, s.k8s_subject("service", "default", f"p{i}"), b"x", msg_id=f"p{i}")
    got: list[Msg] = []
    await last_per_subject(bus.js, s.STREAM_K8S, s.k8s_filter("service"), on_message=got.append)
    assert len(got) == 4
    for msg in got:  # the server's own v1 ack subjects
        assert ack_position(msg) == (msg.metadata.sequence.stream, msg.metadata.num_pending)
    assert [ack_position(m)[1] for m in got] == [3, 2, 1, 0]
    # the domain-qualified v2 form goes the general way
    v2 = Msg(got[0]._client, subject="x", reply="$JS.ACK.dom.acc.K8S.c.1.17.3.1700000000.5.r")
    assert ack_position(v2) == (17, 5)


class _Obj(BaseModel):
    kind: str
    name: str


async def test_publish_pydantic_model_and_bad_input(bus: Bus) -> None:
    subject = s.k8s_subject("pod", "ns", "m")
    ack = await publish(bus.js, subject, _Obj(kind="pod", name="m"), msg_id="model-1")
    stored = await bus.js.get_msg(s.STREAM_K8S, ack.seq)
    assert json.loads(stored.data or b"") == {"kind": "pod", "name": "m"}
    with pytest.raises(TypeError, match=r"publish to weir\.v1\.k8s\.pod\.ns\.m: .*str"):
        await publish(bus.js, subject, "not bytes", msg_id="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weir\.v1\.k8s\.pod\.ns\.m: msg_id"):
        await publish(bus.js, subject, b"x", msg_id="")
    with pytest.raises(PublishError, match="no-such-stream"):
        await publish(bus.js, "no-such-stream.x", b"x", msg_id="y", attempts=2)


async def test_consume_multiple_filters_and_cancel_hands_back(bus: Bus) -> None:
    svc = s.k8s_subject("service", "ns", "a")
    await publish(bus.js, s.k8s_subject("pod", "ns", "skip"), b"skip", msg_id="skip")
    await publish(bus.js, svc, b"svc", msg_id="svc")
    await publish(bus.js, s.k8s_subject("node", None, "n1"), b"node", msg_id="node")
    seen: list[bytes] = []
    entered = asyncio.Event()

    async def slow(msg: Msg) -> None:
        seen.append(msg.data)
        entered.set()
        await asyncio.sleep(3600)

    kwargs = {
        "stream": s.STREAM_K8S,
        "durable": "t-multi",
        "filter_subjects": [s.k8s_filter("service"), s.k8s_filter("node")],
        "fetch_timeout": 0.2,
        "ack_wait": 60.0,
    }
    task = asyncio.create_task(consume(bus.js, handler=slow, **kwargs))  # type: ignore[arg-type]
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [b"svc"]

    got: list[bytes] = []
    both = asyncio.Event()

    async def fast(msg: Msg) -> None:
        got.append(msg.data)
        if len(got) == 2:
            both.set()

    task = asyncio.create_task(consume(bus.js, handler=fast, **kwargs))  # type: ignore[arg-type]
    try:
        # Well before ack_wait (60 s): the cancelled handler's message was nak'ed at once.
        await asyncio.wait_for(both.wait(), 10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert got == [b"svc", b"node"]


async def test_last_per_subject_while_publishing(bus: Bus) -> None:
    subjects = [s.k8s_subject("endpointslice", "ns", f"e{i}") for i in range(50)]
    await publish_batch(bus.js, [Outgoing(sub, b"0", f"{sub}-0") for sub in subjects], window=50)

    async def churn() -> None:
        for gen in range(1, 6):
            await publish_batch(
                bus.js, [Outgoing(sub, str(gen).encode(), f"{sub}-{gen}") for sub in subjects]
            )

    writer = asyncio.create_task(churn())
    snap = await last_per_subject(bus.js, s.STREAM_K8S, s.k8s_filter("endpointslice"))
    await writer
    # Consistency: the snapshot equals the stream's per-subject latest as of snap.sequence.
    expected: dict[str, bytes] = {}
    for seq in range(1, snap.sequence + 1):
        raw = await bus.js.get_msg(s.STREAM_K8S, seq)
        assert raw.subject is not None
        expected[raw.subject] = raw.data or b""
    assert {m.subject: m.data for m in snap.messages} == expected
    seqs = [m.metadata.sequence.stream for m in snap.messages]
    assert seqs == sorted(seqs) and max(seqs) <= snap.sequence


async def test_publish_batch_traces_each_message_when_tracing_is_on(
    bus: Bus, span_exporter: InMemorySpanExporter
) -> None:
    items = [
        Outgoing(s.k8s_subject("pod", "ns", f"t{i}"), f"{i}".encode(), f"traced-{i}")
        for i in range(20)
    ]
    acks = await publish_batch(bus.js, items, window=8)
    producers = [sp for sp in span_exporter.get_finished_spans() if sp.kind.name == "PRODUCER"]
    by_id = {(sp.attributes or {}).get("messaging.message.id"): sp for sp in producers}
    assert set(by_id) >= {o.msg_id for o in items}
    for o, ack in zip(items, acks, strict=True):
        attrs = by_id[o.msg_id].attributes or {}
        assert attrs.get(ATTR_STREAM_SEQUENCE) == ack.seq
        msg = await bus.js.get_last_msg(s.STREAM_K8S, o.subject)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == o.msg_id
        trace_id = f"{by_id[o.msg_id].context.trace_id:032x}"
        assert trace_id in msg.headers["traceparent"]
