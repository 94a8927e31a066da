"""PullFeed against a real nats-server: messages arrive without a pull round trip each, the next
ones travel while a batch is held, expired requests are renewed, a deleted consumer is reported
and recovers after reset, a server restart does not stall the feed. Plus the pure decisions."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import AckPolicy, DeliverPolicy

from contracts import subjects as s
from services.common.bus import Bus, connect_bus, provision, publish
from services.common.consume import DurableSpec
from services.common.pullfeed import (
    ConsumerGoneError,
    PullFeed,
    StatusOutcome,
    request_size,
    status_outcome,
)
from tests.conftest import NatsServer, eventually

pytestmark = pytest.mark.timeout(60)

DURABLE = "t-feed"


@pytest.mark.parametrize(
    ("status", "description", "pending", "expected"),
    [
        ("100", "Idle Heartbeat", None, StatusOutcome("ignore")),
        ("408", "Request Timeout", "7", StatusOutcome("ended", 7)),
        ("408", "Request Timeout", None, StatusOutcome("ended", None)),
        ("404", "No Messages", "x", StatusOutcome("ended", None)),
        ("409", "Consumer Deleted", None, StatusOutcome("gone")),
        ("503", "", None, StatusOutcome("gone")),
        ("409", "Exceeded MaxWaiting", "3", StatusOutcome("error", 3)),
        ("400", "Bad Request", None, StatusOutcome("error", None)),
    ],
)
def test_status_outcome(
    status: str, description: str, pending: str | None, expected: StatusOutcome
) -> None:
    assert status_outcome(status, description, pending) == expected


@pytest.mark.parametrize(
    ("outstanding", "window", "expected"),
    [(0, 8, 8), (4, 8, 4), (5, 8, 0), (8, 8, 0), (1, 2, 1), (2, 2, 0)],
)
def test_request_size_tops_up_at_half(outstanding: int, window: int, expected: int) -> None:
    assert request_size(outstanding, window) == expected


async def _consumer(bus: Bus) -> None:
    spec = DurableSpec(
        stream=s.STREAM_K8S,
        durable=DURABLE,
        filter_subjects=(s.k8s_filter("pod"),),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.ALL,
    )
    await bus.js.add_consumer(s.STREAM_K8S, spec.config())


async def _publish(bus: Bus, first: int, n: int) -> None:
    for i in range(first, first + n):
        await publish(bus.js, s.k8s_subject("pod", "ns", f"p{i}"), f"{i}".encode(), msg_id=f"m{i}")


async def _take(feed: PullFeed, n: int, limit: int = 100, within: float = 10.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + within
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} messages arrived"
        msgs = await feed.next_batch(limit, wait=0.2)
        got.extend(m.data for m in msgs)
        if msgs:
            await msgs[-1].ack()
    return got


async def test_single_changes_need_no_request_each(bus: Bus) -> None:
    await _consumer(bus)
    feed = PullFeed(bus.nc, s.STREAM_K8S, DURABLE, window=64)
    await feed.start()
    try:
        for i in range(20):  # one at a time, each taken before the next is published
            await _publish(bus, i, 1)
            assert await _take(feed, 1) == [f"{i}".encode()]
        # 20 messages against a window of 64: the first request (plus none or one top-up)
        assert feed.requests <= 2, feed.requests
        for _ in range(100):  # acks are fire-and-forget: the server settles them shortly
            info = await bus.js.consumer_info(s.STREAM_K8S, DURABLE)
            if not info.num_ack_pending:
                break
            await asyncio.sleep(0.02)
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        await feed.close()


async def test_next_messages_arrive_while_a_batch_is_held(bus: Bus) -> None:
    await _consumer(bus)
    await _publish(bus, 0, 30)
    feed = PullFeed(bus.nc, s.STREAM_K8S, DURABLE, window=16)
    await feed.start()
    try:
        await eventually(lambda: feed.buffered == 16)  # the first request: one window
        first = await feed.next_batch(10, wait=5.0)
        # before the caller applies these (no ack, no further call), the feed asked for more:
        # the other 14 messages come into its buffer while the batch is held
        await eventually(lambda: feed.buffered == 20, within=5.0)
        rest = await feed.next_batch(100, wait=1.0)
        assert [m.data for m in [*first, *rest]] == [f"{i}".encode() for i in range(30)]
    finally:
        await feed.close()


async def test_expired_requests_are_renewed(bus: Bus) -> None:
    await _consumer(bus)
    feed = PullFeed(bus.nc, s.STREAM_K8S, DURABLE, window=8, expires=0.3)
    await feed.start()
    try:
        assert await feed.next_batch(8, wait=1.0) == []  # the 0.3 s request expired meanwhile
        assert feed.requests >= 2  # ... and was asked again after its 408
        await _publish(bus, 0, 3)
        assert await _take(feed, 3) == [b"0", b"1", b"2"]
    finally:
        await feed.close()


async def test_deleted_consumer_is_reported_and_reset_recovers(bus: Bus) -> None:
    await _consumer(bus)
    feed = PullFeed(bus.nc, s.STREAM_K8S, DURABLE, window=8)
    await feed.start()
    try:
        await _publish(bus, 0, 1)
        assert await _take(feed, 1) == [b"0"]
        await bus.js.delete_consumer(s.STREAM_K8S, DURABLE)
        with pytest.raises(ConsumerGoneError, match=DURABLE):
            for _ in range(50):
                await feed.next_batch(8, wait=0.1)
        await _consumer(bus)  # recreated: delivers from the start again
        feed.reset()
        assert await _take(feed, 1) == [b"0"]
    finally:
        await feed.close()


async def test_feed_survives_server_restart(nats_server: NatsServer) -> None:
    bus = await connect_bus(nats_server.url, "pytest-feed")
    try:
        await provision(bus.js)
        await _consumer(bus)
        feed = PullFeed(bus.nc, s.STREAM_K8S, DURABLE, window=8, expires=30.0)
        await feed.start()
        await _publish(bus, 0, 1)
        assert await _take(feed, 1) == [b"0"]
        nats_server.restart()  # the outstanding request dies with the server
        await eventually(lambda: bus.nc.is_connected, within=20.0)
        await _publish(bus, 1, 2)
        # long before the 30 s request would expire: the reconnect made the feed ask again
        assert await _take(feed, 2, within=10.0) == [b"1", b"2"]
        await feed.close()
    finally:
        await bus.close()


async def test_close_hands_back_what_was_never_handed_out(bus: Bus) -> None:
    await _consumer(bus)  # ack_wait 30 s: a message kept by a dead feed would wait that long
    await _publish(bus, 0, 5)
    feed = PullFeed(bus.nc, s.STREAM_K8S, DURABLE, window=8)
    await feed.start()
    await eventually(lambda: feed.buffered == 5)  # else next_batch may hand out just the first
    first = await feed.next_batch(2, wait=5.0)
    assert feed.buffered == 3
    await first[-1].ack()  # AckPolicy ALL: 0 and 1 are done
    await feed.close()
    again = PullFeed(bus.nc, s.STREAM_K8S, DURABLE, window=8)
    await again.start()
    try:
        # redelivered well before ack_wait (in the order the server requeued the naks)
        assert sorted(await _take(again, 3, within=5.0)) == [b"2", b"3", b"4"]
    finally:
        await again.close()


async def test_window_must_hold_two(bus: Bus) -> None:
    with pytest.raises(ValueError, match="window"):
        PullFeed(bus.nc, s.STREAM_K8S, DURABLE, window=1)
    await asyncio.sleep(0)
