"""The relist runs in a bulk GC phase (services.common.gcphase): collector paused, then settled.

The relist goes through the real stand-in over HTTP (kubernetes-asyncio) into the in-memory sink;
a probe around the real source records whether automatic collection was on while the listing
was fetched and while the sink published.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Sequence

import pytest

from services.common.gcphase import BULK
from services.watcher.kube import ApiSource, Listing, WatchEvent
from services.watcher.observe import make_normaliser
from services.watcher.reflector import Reflector
from services.watcher.sink import MemorySink
from services.watcher.state import Action, PublishedIndex, Upsert
from tests.apiserver.conftest import Kube
from tests.watcher import kubeops
from tests.watcher.samples import sample

pytestmark = pytest.mark.usefixtures("restore_gc")


class _Probe:
    """The real API source, noting the collector state when the listing is fetched."""

    def __init__(self, inner: ApiSource) -> None:
        self.inner = inner
        self.enabled_at_list: list[bool] = []

    async def list(self, kind: str) -> Listing:
        self.enabled_at_list.append(gc.isenabled())
        return await self.inner.list(kind)

    def watch(
        self, kind: str, resource_version: str, *, timeout_seconds: int, idle: float
    ) -> AsyncIterator[WatchEvent]:
        raise AssertionError("this test only relists")


class _ProbeSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.enabled_at_send: list[bool] = []

    async def send(self, actions: Sequence[Action]) -> Sequence[Action]:
        self.enabled_at_send.append(gc.isenabled())
        return await super().send(actions)


async def test_relist_runs_inside_a_bulk_phase(kube: Kube) -> None:
    for i in range(30):
        await kubeops.create(kube, "service", sample("service", f"web-{i}"))
    gc.enable()
    source, sink = _Probe(ApiSource(kube.api)), _ProbeSink()
    reflector = Reflector("service", source, sink, PublishedIndex(), make_normaliser("t"))
    await reflector.relist("start")
    assert source.enabled_at_list == [False]
    assert sink.enabled_at_send and not any(sink.enabled_at_send)
    assert BULK.open == 0 and gc.isenabled()
    assert gc.get_freeze_count() > 0
    assert len([a for a in sink.sent if isinstance(a, Upsert)]) == 30
