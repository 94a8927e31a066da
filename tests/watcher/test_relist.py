"""Relist + diff: a 410 after a gap publishes the deletes and changes it hid, and nothing twice.

The watch is paused with a gate around the real kubernetes-asyncio source (the only way to make
the watcher *not* watch while the test deletes an object and compacts the stand-in); everything
else is real: the stand-in over HTTP, the NATS sink, a real nats-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from contracts.subjects import k8s_subject
from services.apiserver.server import ApiServerConfig, start_apiserver
from services.common.bus import Bus
from services.watcher.kube import ApiSource, KubeSource, Listing, WatchEvent
from services.watcher.observe import make_normaliser
from services.watcher.reflector import Reflector, WatchSettings
from services.watcher.sink import NatsSink
from services.watcher.state import PublishedIndex
from tests.apiserver.conftest import Kube
from tests.conftest import NatsServer
from tests.watcher import kubeops
from tests.watcher.conftest import Tap, start_watcher
from tests.watcher.samples import change, sample


class GatedSource:
    """Delays new watch requests while the gate is closed (lists pass through)."""

    def __init__(self, inner: KubeSource) -> None:
        self._inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    async def list(self, kind: str) -> Listing:
        return await self._inner.list(kind)

    async def watch(
        self, kind: str, resource_version: str, *, timeout_seconds: int, idle: float
    ) -> AsyncIterator[WatchEvent]:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        async for event in self._inner.watch(
            kind, resource_version, timeout_seconds=timeout_seconds, idle=idle
        ):
            yield event


def _relists(kind: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "weir_watcher_relists_total", {"kind": kind, "reason": reason}
    )
    return value or 0.0


async def _until_watching(kube: Kube) -> None:
    """Wait until the stand-in has registered the reflector's watch request."""
    for _ in range(500):
        if kube.server.store.open_watches:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the reflector never opened a watch")


def _ops(tap: Tap, subject: str) -> list[str]:
    return [m.data["op"] for m in tap.messages if m.subject == subject]


async def test_gone_after_gap_publishes_delete_and_change(kube: Kube, bus: Bus, tap: Tap) -> None:
    source = GatedSource(ApiSource(kube.api))
    reflector = Reflector(
        "service",
        source,
        NatsSink(bus.js, "gap-test"),
        PublishedIndex(),
        make_normaliser("gap-test"),
        WatchSettings(timeout_seconds=300, idle=30),
    )
    a, b, c = (sample("service", n) for n in ("gap-a", "gap-b", "gap-c"))
    subj = {n: k8s_subject("service", "default", n) for n in ("gap-a", "gap-b", "gap-c", "gap-d")}
    for obj in (a, b, c):
        await kubeops.create(kube, "service", obj)
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(reflector.synced.wait(), 5)
        first = {subj["gap-a"], subj["gap-b"], subj["gap-c"]}
        await tap.wait_for(lambda m: first <= {x.subject for x in tap.messages}, 1.0)
        gone_before = _relists("service", "gone")

        await _until_watching(kube)
        source.gate.clear()
        kube.server.store.close_watches()  # the watch ends; the resume waits at the gate
        await asyncio.wait_for(source.waiting.wait(), 5)
        await kubeops.delete(kube, "service", a)
        await kubeops.replace(kube, "service", change("service", b))
        await kubeops.create(kube, "service", sample("service", "gap-d"))
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{kube.server.url}/weir/compact", params={"keep": "0"})
            assert resp.status == 200, await resp.text()
        source.gate.set()

        await tap.wait_for(lambda m: m.subject == subj["gap-a"] and m.data["op"] == "DELETE", 1.0)
        await tap.wait_for(lambda m: m.subject == subj["gap-d"], 1.0)
        await tap.wait_for(lambda m: m.subject == subj["gap-b"] and "changed" in str(m.data), 1.0)
        assert _relists("service", "gone") == gone_before + 1
        await asyncio.sleep(0.3)  # anything else would have been published by now
        assert _ops(tap, subj["gap-a"]) == ["UPSERT", "DELETE"]
        assert _ops(tap, subj["gap-b"]) == ["UPSERT", "UPSERT"]
        assert _ops(tap, subj["gap-c"]) == ["UPSERT"]  # unchanged: not republished
        assert _ops(tap, subj["gap-d"]) == ["UPSERT"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def apiserver_config(tmp_path: Path) -> ApiServerConfig:
    """No bookmarks for a long time, so an idle deadline is the only thing that can fire."""
    return ApiServerConfig(
        port=0, kubeconfig_out=tmp_path / "kubeconfig", bookmark_interval=60.0, accept_invalid=True
    )


async def test_silent_watch_relists_without_republishing(
    nats_server: NatsServer, kube: Kube, tap: Tap
) -> None:
    await kubeops.create(kube, "namespace", sample("namespace", "quiet"))
    idle_before = _relists("namespace", "idle")
    w = await start_watcher(nats_server, kube, "w-idle", watch_idle=0.3)
    try:
        subject = k8s_subject("namespace", None, "quiet")
        await tap.wait_for(lambda m: m.subject == subject, 1.0)
        await asyncio.sleep(1.2)
        assert _relists("namespace", "idle") >= idle_before + 2
        assert _ops(tap, subject) == ["UPSERT"]
        # and it still follows changes after all those relists
        await kubeops.delete(kube, "namespace", sample("namespace", "quiet"))
        await tap.wait_for(lambda m: m.subject == subject and m.data["op"] == "DELETE", 1.0)
    finally:
        await w.stop()


async def test_api_outage_backs_off_and_recovers(
    kube: Kube, bus: Bus, tap: Tap, apiserver_config: ApiServerConfig
) -> None:
    """The stand-in dies and comes back empty on the same port: no crash, then deletes."""
    reflector = Reflector(
        "namespace",
        ApiSource(kube.api),
        NatsSink(bus.js, "outage-test"),
        PublishedIndex(),
        make_normaliser("outage-test"),
        WatchSettings(timeout_seconds=300, idle=30, backoff_cap=0.3),
    )
    await kubeops.create(kube, "namespace", sample("namespace", "doomed"))
    subject = k8s_subject("namespace", None, "doomed")
    task = asyncio.create_task(reflector.run())
    errors_before = _relists("namespace", "error")
    try:
        await tap.wait_for(lambda m: m.subject == subject, 2.0)
        port = kube.server.port
        await kube.server.stop()
        await asyncio.sleep(1.0)
        assert not task.done()
        assert _relists("namespace", "error") >= errors_before + 2
        apiserver_config.port = port
        reborn = await start_apiserver(apiserver_config)
        try:
            await tap.wait_for(lambda m: m.subject == subject and m.data["op"] == "DELETE", 3.0)
        finally:
            await reborn.stop()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
