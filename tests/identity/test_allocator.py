"""The allocator against a REAL nats-server KV: idempotence, restarts, races, exhaustion, GC."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from services.common.bus import Bus, connect_bus
from services.identity import metrics
from services.identity.allocator import Allocator, ExhaustedError, parse_mapping
from services.identity.kv import IdentityKV, MemoryKV, NatsKV
from services.identity.labels import LabelSet
from services.identity.reserved import RESERVED, RangeError
from tests.conftest import NatsServer

REPO = Path(__file__).resolve().parents[2]


def lset(i: int, ns: str = "shop") -> LabelSet:
    return LabelSet.of([f"k8s:app=app{i}", f"k8s:io.kubernetes.pod.namespace={ns}"])


async def assert_consistent(kv: IdentityKV) -> dict[str, int]:
    """Every labels.<hash> maps to a distinct id whose id.<n> holds exactly that label set."""
    mapping: dict[str, int] = {}
    for entry in await kv.entries("labels."):
        ident, dying = parse_mapping(entry.value)
        assert dying is None, entry
        mapping[entry.key.removeprefix("labels.")] = ident
    assert len(set(mapping.values())) == len(mapping), "an id is used by two label sets"
    ids = {int(e.key.removeprefix("id.")): e.value for e in await kv.entries("id.")}
    for digest, ident in mapping.items():
        assert ident not in RESERVED and 256 <= ident <= 65535
        assert LabelSet.from_canonical(ids[ident]).digest == digest
    return mapping


async def test_allocation_is_idempotent_and_shared(bus: Bus) -> None:
    kv = await NatsKV.open(bus.js)
    alloc = Allocator(kv, instance="a1")
    await alloc.start()
    first = await alloc.acquire("pod-1", lset(1))
    assert first.first and first.previous is None
    again = await alloc.acquire("pod-1", lset(1))
    assert again.identity == first.identity and not again.first
    other_pod = await alloc.acquire("pod-2", lset(1))
    assert other_pod.identity == first.identity and not other_pod.first
    assert alloc.users(first.identity) == 2
    assert await alloc.lookup_or_allocate(lset(1)) == first.identity
    second = await alloc.acquire("pod-3", lset(2))
    assert second.identity != first.identity
    # relabelling an endpoint moves it and reports the previous identity
    moved = await alloc.acquire("pod-2", lset(2))
    assert moved.identity == second.identity and moved.previous == first.identity
    assert alloc.users(first.identity) == 1
    assert await assert_consistent(kv) == {
        lset(1).digest: first.identity,
        lset(2).digest: second.identity,
    }


async def test_identities_survive_an_allocator_restart(nats_server: NatsServer, bus: Bus) -> None:
    alloc = Allocator(await NatsKV.open(bus.js), instance="a1")
    await alloc.start()
    before = {i: (await alloc.acquire(f"pod-{i}", lset(i))).identity for i in range(20)}
    nats_server.restart()  # the server restarts too: the KV is on disk
    bus2 = await connect_bus(nats_server.url, "restarted")
    try:
        kv2 = await NatsKV.open(bus2.js)
        restarted = Allocator(kv2, instance="a1")
        await restarted.start()
        assert {i: (await restarted.acquire(f"pod-{i}", lset(i))).identity for i in range(20)} == (
            before
        )
        assert len(await kv2.entries("id.")) == 20  # nothing new was allocated
        # a different allocator instance with an empty cache agrees too
        other = Allocator(kv2, instance="a2")
        await other.start()
        assert {i: await other.lookup_or_allocate(lset(i)) for i in range(20)} == before
    finally:
        await bus2.close()


async def test_two_allocator_processes_race_without_duplicates(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    sets = [list(lset(i, ns=f"ns{i % 7}").labels) for i in range(1000)]
    path = tmp_path / "sets.json"
    path.write_text(json.dumps(sets))
    cmd = [sys.executable, "-m", "tests.identity.race_worker", nats_server.url]
    start = time.monotonic()
    procs = [
        await asyncio.create_subprocess_exec(
            *cmd,
            name,
            str(seed),
            str(path),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for name, seed in (("racer-a", 1), ("racer-b", 2))
    ]
    outputs = [await asyncio.wait_for(p.communicate(), timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    results = [json.loads(out) for out, _ in outputs]
    assert len(results[0]) == 1000
    assert results[0] == results[1], "the two allocators disagree on an identity"
    kv = await NatsKV.open(bus.js)
    mapping = await assert_consistent(kv)
    assert mapping == results[0]
    assert len(await kv.entries("id.")) == 1000  # every losing claim was released
    print(f"race over 1000 label sets: {time.monotonic() - start:.2f}s")


@pytest.mark.parametrize("backend", ["nats", "memory"])
async def test_exhaustion_is_a_clear_error_never_a_duplicate(bus: Bus, backend: str) -> None:
    kv: IdentityKV = await NatsKV.open(bus.js) if backend == "nats" else MemoryKV()
    alloc = Allocator(kv, instance="a1", low=256, high=258, gc_grace=0.0)
    await alloc.start()
    got = {(await alloc.acquire(f"pod-{i}", lset(i))).identity for i in range(3)}
    assert got == {256, 257, 258}
    before = metrics.EXHAUSTED._value.get()
    with pytest.raises(ExhaustedError, match=r"identity range 256\.\.258 is exhausted"):
        await alloc.acquire("pod-9", lset(9))
    assert metrics.EXHAUSTED._value.get() == before + 1
    assert alloc.identity_of("pod-9") is None
    await assert_consistent(kv)
    # freeing one makes room again (another allocator instance sees it after its reload)
    await alloc.release("pod-0")
    assert len(await alloc.gc()) == 1
    other = Allocator(kv, instance="a2", low=256, high=258)
    await other.start()
    assert (await other.acquire("pod-9", lset(9))).identity in got
    await assert_consistent(kv)


def test_range_must_avoid_reserved_ids() -> None:
    with pytest.raises(RangeError, match="low 7 is below 256"):
        Allocator(MemoryKV(), instance="x", low=7, high=300)
    with pytest.raises(RangeError, match="high 70000 is above 65535"):
        Allocator(MemoryKV(), instance="x", low=256, high=70000)


async def test_gc_after_grace_and_only_when_no_allocator_uses_it(bus: Bus) -> None:
    kv = await NatsKV.open(bus.js)
    a = Allocator(kv, instance="a", gc_grace=0.3)
    b = Allocator(kv, instance="b", gc_grace=0.3)
    await a.start()
    await b.start()
    ident = (await a.acquire("pod-1", lset(1))).identity
    assert (await b.acquire("pod-1", lset(1))).identity == ident
    assert await a.release("pod-1") == ident
    assert await a.gc() == []  # within grace
    await asyncio.sleep(0.35)
    assert await a.gc() == []  # b still references it: the mapping is restored
    assert (await kv.get(f"labels.{lset(1).digest}")) is not None
    assert await kv.count(f"ref.{ident}.") == 1
    await b.release("pod-1")
    await asyncio.sleep(0.35)
    collected = await b.gc()
    assert [c.identity for c in collected] == [ident]
    assert collected[0].digest == lset(1).digest
    assert await kv.get(f"labels.{lset(1).digest}") is None
    assert await kv.get(f"id.{ident}") is None
    assert await kv.count(f"ref.{ident}.") == 0
    # a later use allocates afresh (a stale cache in `a` is detected by the handshake)
    again = await a.acquire("pod-2", lset(1))
    await assert_consistent(kv)
    assert (await kv.get(f"labels.{lset(1).digest}")) is not None
    assert again.identity == parse_mapping((await kv.get(f"labels.{lset(1).digest}")).value)[0]  # type: ignore[union-attr]


async def test_reacquire_within_grace_keeps_the_identity(bus: Bus) -> None:
    kv = await NatsKV.open(bus.js)
    a = Allocator(kv, instance="a", gc_grace=0.2)
    await a.start()
    ident = (await a.acquire("pod-1", lset(1))).identity
    await a.release("pod-1")
    assert (await a.acquire("pod-1b", lset(1))).identity == ident
    await asyncio.sleep(0.25)
    assert await a.gc() == []
    assert await kv.count(f"ref.{ident}.") == 1


async def test_stale_gc_mark_is_reverted_by_an_acquirer(bus: Bus) -> None:
    kv = await NatsKV.open(bus.js)
    a = Allocator(kv, instance="a", dying_timeout=0.5)
    await a.start()
    ident = (await a.acquire("pod-1", lset(1))).identity
    key = f"labels.{lset(1).digest}"
    entry = await kv.get(key)
    assert entry is not None
    # a collector that died right after marking, long ago
    assert await kv.update(key, f"gc:{ident}:{time.time() - 60:.3f}".encode(), entry.revision)
    b = Allocator(kv, instance="b", dying_timeout=0.5)
    await b.start()
    assert (await b.acquire("pod-x", lset(1))).identity == ident
    await assert_consistent(kv)
