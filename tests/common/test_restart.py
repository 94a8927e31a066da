"""The bus survives a nats-server restart: reconnect, publishes resume, consumers continue."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

from contracts import subjects as s
from services.common import metrics
from services.common.bus import Bus, Outgoing, connect_bus, consume, publish, publish_batch
from tests.conftest import NatsServer, eventually, free_port


def _value(counter: object, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())  # type: ignore[attr-defined]


async def test_bus_survives_server_restart(nats_server: NatsServer, bus: Bus) -> None:
    disconnects = _value(metrics.BUS_DISCONNECTS, bus.name)
    reconnects = _value(metrics.BUS_RECONNECTS, bus.name)
    received: list[bytes] = []

    async def handler(msg: Msg) -> None:
        received.append(msg.data)

    consumer = asyncio.create_task(
        consume(
            bus.js,
            stream=s.STREAM_K8S,
            durable="t-restart",
            filter_subjects=[s.k8s_filter()],
            handler=handler,
            fetch_timeout=0.2,
        )
    )
    try:
        await publish(bus.js, s.k8s_subject("pod", "ns", "before"), b"before", msg_id="before")
        await eventually(lambda: received == [b"before"])

        nats_server.stop()
        await eventually(lambda: not bus.connected)
        during = asyncio.create_task(
            publish(bus.js, s.k8s_subject("pod", "ns", "during"), b"during", msg_id="during")
        )
        await asyncio.sleep(1.5)  # several reconnect attempts fail meanwhile
        assert not during.done()
        nats_server.start()

        ack = await asyncio.wait_for(during, 15)
        assert ack.seq == 2  # the stream (file storage) kept message 1 across the restart
        await publish(bus.js, s.k8s_subject("pod", "ns", "after"), b"after", msg_id="after")
        await eventually(lambda: received == [b"before", b"during", b"after"], within=15)
    finally:
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    assert bus.connected
    assert _value(metrics.BUS_DISCONNECTS, bus.name) >= disconnects + 1
    assert _value(metrics.BUS_RECONNECTS, bus.name) >= reconnects + 1


async def test_publish_batch_completes_across_restart(nats_server: NatsServer, bus: Bus) -> None:
    items = [
        Outgoing(s.k8s_subject("pod", "ns", f"p{i}"), f"{i}".encode(), f"pod-{i}")
        for i in range(2000)
    ]
    await publish_batch(bus.js, items[:500])
    nats_server.stop()
    await eventually(lambda: not bus.connected)
    batch = asyncio.create_task(publish_batch(bus.js, items, window=100, ack_timeout=1.0))
    await asyncio.sleep(0.5)
    nats_server.start()
    acks = await asyncio.wait_for(batch, 30)
    assert len(acks) == 2000
    assert [a.seq for a in acks[:500]] == list(range(1, 501))  # first 500 were duplicates
    assert all(a.duplicate for a in acks[:500])
    assert sorted(a.seq for a in acks[500:]) == list(range(501, 2001))
    info = await bus.js.stream_info(s.STREAM_K8S)
    assert info.state.messages == 2000 and info.state.last_seq == 2000


async def test_connect_gives_up_after_bounded_attempts() -> None:
    port = free_port()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        await connect_bus(f"nats://127.0.0.1:{port}", "nobody", max_initial_attempts=2)


async def test_connect_waits_for_a_late_server(nats_server: NatsServer) -> None:
    nats_server.stop()
    connecting = asyncio.create_task(connect_bus(nats_server.url, "late"))
    await asyncio.sleep(0.4)
    assert not connecting.done()
    nats_server.start()
    late = await asyncio.wait_for(connecting, 10)
    try:
        assert late.connected
    finally:
        await late.close()
