"""Leader lease: pure decisions (table tests) and the elector against a real nats-server KV."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from contracts.subjects import KV_LEADER
from services.watcher.elector import LEASE_KEY, Elector
from services.watcher.lease import (
    Create,
    LeaseRecord,
    LeaseTiming,
    Seen,
    StandbyStep,
    TakeOver,
    Wait,
    leader_must_step_down,
    observe,
    standby_step,
)
from tests.conftest import NatsServer

T = LeaseTiming(ttl=3.0, renew_interval=1.0, renew_deadline=2.0)
FAST = LeaseTiming(ttl=0.6, renew_interval=0.1, renew_deadline=0.4)


@pytest.mark.parametrize(
    ("seen", "now", "expected"),
    [
        (Seen(None, None, 0.0), 0.0, Create()),
        (Seen(7, None, 0.0), 0.0, TakeOver(7)),  # delete marker or garbled value
        (Seen(7, "other", 10.0), 12.9, Wait()),
        (Seen(7, "other", 10.0), 13.0, TakeOver(7)),
        (Seen(7, "me", 10.0), 10.0, TakeOver(7)),  # our own record from a previous life
    ],
)
def test_standby_step(seen: Seen, now: float, expected: StandbyStep) -> None:
    assert standby_step(seen, "me", now, T) == expected


def test_observe_resets_only_on_revision_change() -> None:
    first = observe(None, 5, "other", 1.0)
    assert observe(first, 5, "other", 2.5) is first
    assert observe(first, 6, "other", 2.5) == Seen(6, "other", 2.5)


@pytest.mark.parametrize(("now", "expected"), [(11.9, False), (12.0, True)])
def test_leader_step_down_deadline(now: float, expected: bool) -> None:
    assert leader_must_step_down(10.0, now, T) is expected


def test_timing_is_checked() -> None:
    with pytest.raises(ValueError, match="renew_deadline < ttl"):
        LeaseTiming(ttl=2.0, renew_interval=1.0, renew_deadline=2.0)


@pytest.mark.parametrize("data", [b"", b"{", b'{"holder": "x"}', b"[]", None])
def test_garbled_lease_value_decodes_to_none(data: bytes | None) -> None:
    assert LeaseRecord.decode(data) is None


@pytest.fixture
async def kv(nats_server: NatsServer) -> AsyncIterator[KeyValue]:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        yield await js.create_key_value(KeyValueConfig(bucket=KV_LEADER, history=1))
    finally:
        await nc.close()


async def _holder(kv: KeyValue) -> str | None:
    record = LeaseRecord.decode((await kv.get(LEASE_KEY)).value)
    return record.holder if record else None


async def _until(pred: Callable[[], bool], within: float) -> float:
    """Seconds until ``pred()`` holds; fails the test after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not pred():
        if loop.time() - start > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)
    return loop.time() - start


async def test_exactly_one_leader_and_takeover_after_crash(kv: KeyValue) -> None:
    a, b = Elector(kv, "a", timing=FAST), Elector(kv, "b", timing=FAST)
    ta, tb = asyncio.create_task(a.run()), asyncio.create_task(b.run())
    try:
        await _until(lambda: a.is_leader or b.is_leader, 2.0)
        await asyncio.sleep(3 * FAST.ttl)  # both keep campaigning; nobody steals a live lease
        assert a.is_leader != b.is_leader
        leader, standby, task = (a, b, ta) if a.is_leader else (b, a, tb)
        assert await _holder(kv) == ("a" if leader is a else "b")
        # a crash: the task dies without releasing the key (no finally on SIGKILL)
        task.cancel()
        leader.release = _noop  # type: ignore[method-assign]
        with contextlib.suppress(asyncio.CancelledError):
            await task
        took = await _until(lambda: standby.is_leader, 3 * FAST.ttl)
        assert FAST.ttl - FAST.renew_interval <= took <= FAST.ttl + 3 * FAST.renew_interval
        assert await _holder(kv) == ("b" if leader is a else "a")
    finally:
        for t in (ta, tb):
            t.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)


async def _noop() -> None:
    return None


async def test_graceful_release_hands_over_without_waiting_for_ttl(kv: KeyValue) -> None:
    slow = LeaseTiming(ttl=30.0, renew_interval=0.1, renew_deadline=20.0)
    a = Elector(kv, "a", timing=slow)
    ta = asyncio.create_task(a.run())
    await _until(lambda: a.is_leader, 2.0)
    b = Elector(kv, "b", timing=slow)
    tb = asyncio.create_task(b.run())
    try:
        await asyncio.sleep(0.3)
        assert not b.is_leader
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
        assert not a.is_leader and a.lost.is_set()
        await _until(lambda: b.is_leader, 1.0)
    finally:
        tb.cancel()
        await asyncio.gather(tb, return_exceptions=True)


async def test_leader_steps_down_when_its_lease_is_stolen(kv: KeyValue) -> None:
    changes: list[bool] = []
    a = Elector(kv, "a", timing=FAST, on_change=changes.append)
    ta = asyncio.create_task(a.run())
    try:
        await _until(lambda: a.is_leader, 2.0)
        entry = await kv.get(LEASE_KEY)
        await kv.update(LEASE_KEY, LeaseRecord("intruder", 0.0).encode(), last=entry.revision)
        await _until(lambda: not a.is_leader, 1.0)
        assert a.lost.is_set()
        assert changes[:2] == [True, False]
    finally:
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
    # the intruder never renews, so "a" wins it back after the ttl
    assert await _holder(kv) == "intruder"


async def test_leader_steps_down_when_the_bus_is_gone(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=KV_LEADER))
        a = Elector(kv, "a", timing=FAST)
        ta = asyncio.create_task(a.run())
        await _until(lambda: a.is_leader, 2.0)
        nats_server.stop()
        took = await _until(lambda: not a.is_leader, 3.0)
        assert took < FAST.ttl + FAST.renew_interval  # before any standby could take over
        nats_server.start()
        await _until(lambda: a.is_leader, 10.0)
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
    finally:
        await nc.close()
