"""The services-map count a NodeStatus reports is right after a cold sync, also when something
(the policy loop's status hook) asked for a status while the bootstrap was still filling the
maps: the bootstrap's full apply bypasses the incremental count, so it must start over."""

from __future__ import annotations

import pytest

from services.common.bus import Bus
from services.datapath.fakemaps import FakeLBMap
from services.datapath.worker import DatapathSettings, DatapathWorker
from tests.conftest import NatsServer
from tests.datapath.manifests import NODE, TESTDATA, events
from tests.datapath.test_worker import publish_events

pytestmark = pytest.mark.timeout(60)


async def test_fill_counts_the_bootstrap_apply(bus: Bus, nats_server: NatsServer) -> None:
    await publish_events(bus, events(TESTDATA / "clusterip.yaml"))
    lbmap = FakeLBMap()
    settings = DatapathSettings(node_name=NODE, nats_url=nats_server.url, maps="fake")
    worker = DatapathWorker(settings, bus, lbmap)
    assert worker.fill()["services"][0] == 0  # asked before the bootstrap: nothing yet
    await worker.bootstrap()
    entries = len(lbmap.dump().services)
    assert entries > len(worker.reconciler.realised.masters)  # slots as well as masters
    assert worker.fill()["services"][0] == entries
