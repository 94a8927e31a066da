"""Maps that are still being created (the loader child compiling) while the worker syncs.

Covers: nothing waits for the maps before the first map operation (a worker is built and reads
its snapshot while they are created); the mirror is read from the maps once they exist, so a
restart on pinned state still renumbers nothing; an error while creating the maps reaches the
worker with its message; the worker bootstraps from a real nats-server over maps that open only
after the snapshot was decoded.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.bus import connect_bus, provision
from services.datapath.deferredmaps import DeferredLBMap
from services.datapath.fakemaps import FakeLBMap
from services.datapath.lbmap import LBMapState
from services.datapath.loader import LoadError
from services.datapath.reconcile import Reconciler
from services.datapath.worker import DatapathSettings, DatapathWorker
from tests.conftest import NatsServer
from tests.datapath.manifests import NODE, TESTDATA, desired, events
from tests.datapath.test_worker import publish_events

pytestmark = pytest.mark.timeout(60)
CAPACITIES = {"services": 65536, "backends": 65536, "revnat": 65536}


class Gate:
    """An opener that returns ``maps`` only once released, counting how often it ran."""

    def __init__(self, maps: FakeLBMap, error: Exception | None = None) -> None:
        self.maps, self.error = maps, error
        self.release = threading.Event()
        self.calls = 0

    def __call__(self) -> FakeLBMap:
        self.calls += 1
        assert self.release.wait(10), "never released"
        if self.error is not None:
            raise self.error
        return self.maps


def test_nothing_waits_before_the_first_map_operation() -> None:
    gate = Gate(FakeLBMap())
    deferred = DeferredLBMap(gate, CAPACITIES)
    reconciler = Reconciler(deferred)  # a worker builds one at once: it must not block
    assert not deferred.ready
    assert deferred.fill() == {name: (0, cap) for name, cap in CAPACITIES.items()}
    gate.release.set()
    want = desired(TESTDATA / "clusterip.yaml")
    result = reconciler.apply(want, prune=True)
    assert result.ok and result.writes > 0
    assert deferred.ready and gate.calls == 1
    assert deferred.dump() == gate.maps.dump()
    assert deferred.fill() == gate.maps.fill()
    deferred.close()


def test_mirror_is_read_once_the_maps_exist_and_a_restart_renumbers_nothing() -> None:
    pinned = FakeLBMap()  # what a previous worker left behind
    want = desired(TESTDATA / "clusterip.yaml")
    Reconciler(pinned).apply(want, prune=True)
    before = pinned.dump()
    gate = Gate(pinned)
    reconciler = Reconciler(DeferredLBMap(gate, CAPACITIES))
    gate.release.set()
    reconciler.restore()
    assert reconciler.realised.backends == before.backends
    writes = pinned.writes
    assert reconciler.apply(want, prune=True).writes == 0  # same state, same ids: nothing to do
    assert pinned.writes == writes and pinned.dump() == before


class CountingDumps(FakeLBMap):
    dumps = 0

    def dump(self) -> LBMapState:
        self.dumps += 1
        return super().dump()


def test_load_reads_the_maps_once_whoever_asks_first() -> None:
    maps = CountingDumps()
    reconciler = Reconciler(maps)
    assert maps.dumps == 0  # nothing read at construction
    assert not reconciler.realised.masters  # a status asked first: read now
    reconciler.load()  # the bootstrap's turn: already read, not read again
    assert maps.dumps == 1
    reconciler.restore()  # an explicit restore always reads
    assert maps.dumps == 2


def test_an_error_creating_the_maps_reaches_the_first_operation() -> None:
    gate = Gate(FakeLBMap(), LoadError("pinned map /x/lb4_services does not match this build"))
    deferred = DeferredLBMap(gate, CAPACITIES)
    gate.release.set()
    with pytest.raises(LoadError, match="lb4_services does not match"):
        Reconciler(deferred).restore()
    assert deferred.fill() == {name: (0, cap) for name, cap in CAPACITIES.items()}
    deferred.close()  # nothing was opened: nothing to close, no error


async def test_worker_decodes_the_snapshot_before_the_maps_exist(
    nats_server: NatsServer,
) -> None:
    bus = await connect_bus(nats_server.url, "test-deferred")
    try:
        await provision(bus.js)
        await publish_events(bus, events(TESTDATA / "clusterip.yaml"))
        gate = Gate(FakeLBMap())
        settings = DatapathSettings(node_name=NODE, nats_url=nats_server.url, maps="fake")
        worker = DatapathWorker(settings, bus, DeferredLBMap(gate, CAPACITIES))
        task = asyncio.create_task(worker.bootstrap())
        for _ in range(500):  # the whole snapshot is decoded while the maps are not there
            if worker.model.frontends:
                break
            await asyncio.sleep(0.01)
        want = desired(TESTDATA / "clusterip.yaml")
        assert worker.model.frontends == want
        assert not task.done() and not gate.maps.dump().services
        gate.release.set()
        await asyncio.wait_for(task, 10)
        assert worker.synced
        fresh = FakeLBMap()
        Reconciler(fresh).apply(want, prune=True)
        assert gate.maps.dump() == fresh.dump()
    finally:
        await bus.close()
