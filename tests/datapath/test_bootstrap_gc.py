"""The garbage-collector policy a worker leaves behind after its bootstrap.

Covers: the bootstrapped state is frozen (full collections never walk it), young collections run
at the thresholds they had, and full collections are rare (the state replaced by later changes
would otherwise be walked every ~70,000 allocations).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.common.bus import connect_bus, provision
from services.datapath.fakemaps import FakeLBMap
from services.datapath.worker import DatapathSettings, DatapathWorker
from tests.conftest import NatsServer
from tests.datapath.manifests import NODE, TESTDATA, events
from tests.datapath.test_worker import publish_events

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def default_gc() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # CPython's defaults
    try:
        yield
    finally:
        gc.set_threshold(*before)


@pytest.mark.usefixtures("default_gc")
async def test_bootstrap_freezes_the_state_and_keeps_full_collections_rare(
    nats_server: NatsServer,
) -> None:
    bus = await connect_bus(nats_server.url, "test-gc")
    try:
        await provision(bus.js)
        await publish_events(bus, events(TESTDATA / "clusterip.yaml"))
        settings = DatapathSettings(node_name=NODE, nats_url=nats_server.url, maps="fake")
        worker = DatapathWorker(settings, bus, FakeLBMap())
        frozen = gc.get_freeze_count()
        await worker.bootstrap()
        assert worker.synced and worker.model.frontends
        assert gc.get_freeze_count() > frozen
        assert gc.get_threshold() == (700, 10, 1_000)
    finally:
        await bus.close()
