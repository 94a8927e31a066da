"""The bus survives a nats-server restart: reconnect, publishes resume, consumers continue."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

from contracts import subjects as s
from services.common import metrics
from services.common.bus import Bus, consume, publish
from tests.conftest import NatsServer, eventually


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
        await asyncio.sleep(0.5)
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
