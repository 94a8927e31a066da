"""Leadership: only the leader publishes; a new leader diffs against the stream, not from zero.

The failover test runs two real ``weir watcher`` processes against the stand-in and kills the
leader with SIGKILL (no chance to release the lease): the standby must publish a change within 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import nats
import pytest
from prometheus_client import REGISTRY

from contracts.subjects import KV_LEADER, k8s_subject
from services.watcher.elector import LEASE_KEY
from services.watcher.lease import LeaseRecord
from tests.apiserver.conftest import Kube
from tests.conftest import NatsServer, free_port
from tests.watcher import kubeops
from tests.watcher.conftest import Tap, start_watcher
from tests.watcher.samples import change, sample


def _ops(tap: Tap, subject: str) -> list[str]:
    return [m.data["op"] for m in tap.messages if m.subject == subject]


async def test_new_leader_diffs_against_the_stream(
    nats_server: NatsServer, kube: Kube, tap: Tap
) -> None:
    keep, edit, drop = (sample("service", n) for n in ("keep", "edit", "drop"))
    for obj in (keep, edit, drop):
        await kubeops.create(kube, "service", obj)
    await kubeops.create(kube, "node", sample("node", "n1.example"))
    subj = {n: k8s_subject("service", "default", n) for n in ("keep", "edit", "drop", "new")}

    first = await start_watcher(nats_server, kube, "w-first")
    await tap.wait_for(lambda m: m.subject == subj["drop"], 1.0)
    assert first.state.leader
    await first.stop()  # releases the lease
    assert REGISTRY.get_sample_value("weir_watcher_is_leader") == 0.0

    # changes while nobody watches
    await kubeops.delete(kube, "service", drop)
    await kubeops.replace(kube, "service", change("service", edit))
    await kubeops.create(kube, "service", sample("service", "new"))
    published = len(tap.messages)

    second = await start_watcher(nats_server, kube, "w-second")
    try:
        assert second.state.leader
        await tap.wait_for(lambda m: m.subject == subj["drop"] and m.data["op"] == "DELETE", 1.0)
        await asyncio.sleep(0.3)
        fresh = [(m.subject, m.data["op"]) for m in tap.messages[published:]]
        assert sorted(fresh) == sorted(
            [(subj["drop"], "DELETE"), (subj["edit"], "UPSERT"), (subj["new"], "UPSERT")]
        )
        assert {m.data["producer"] for m in tap.messages[published:]} == {"w-second"}
        assert REGISTRY.get_sample_value("weir_watcher_is_leader") == 1.0
    finally:
        await second.stop()


async def test_standby_publishes_nothing(nats_server: NatsServer, kube: Kube, tap: Tap) -> None:
    leader = await start_watcher(nats_server, kube, "w-lead")
    standby_task = asyncio.create_task(_standby(nats_server, kube))
    try:
        await asyncio.sleep(0.5)
        await kubeops.create(kube, "service", sample("service", "once"))
        subject = k8s_subject("service", "default", "once")
        await tap.wait_for(lambda m: m.subject == subject, 1.0)
        await asyncio.sleep(0.5)
        assert _ops(tap, subject) == ["UPSERT"]
        assert {m.data["producer"] for m in tap.on("weir.v1.k8s.")} == {"w-lead"}
    finally:
        standby_task.cancel()
        await asyncio.gather(standby_task, return_exceptions=True)
        await leader.stop()


async def _standby(nats_server: NatsServer, kube: Kube) -> None:
    # start_watcher waits for the initial sync, which a standby never does: run it bare
    from services.common.bus import connect_bus  # noqa: PLC0415
    from services.watcher.service import WatcherSettings, WatcherState, run_watcher  # noqa: PLC0415

    settings = WatcherSettings(
        nats_url=nats_server.url, kubeconfig=str(kube.kubeconfig), id="w-standby"
    )
    bus = await connect_bus(nats_server.url, "w-standby")
    try:
        await run_watcher(settings, bus=bus, state=WatcherState(me="w-standby"))
    finally:
        await bus.close()


@pytest.fixture
def procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    running: dict[str, subprocess.Popen[bytes]] = {}
    try:
        yield running
    finally:
        for proc in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _spawn(
    name: str, nats_url: str, kubeconfig: Path, log: Path, metrics_port: int
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "services.cli.main", "watcher", "--nats", nats_url]
    cmd += ["--kubeconfig", str(kubeconfig), "--id", name]
    cmd += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )


async def _scrape(port: int, metric: str) -> float | None:
    """One sample of ``metric`` from a watcher's /metrics page (after /readyz says ready)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                    if ready.status == 200:
                        break
            await asyncio.sleep(0.05)
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    for line in text.splitlines():
        if line.startswith(metric + " "):
            return float(line.split()[1])
    return None


async def _holder(nats_url: str) -> str | None:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(KV_LEADER)
        try:
            entry = await kv.get(LEASE_KEY)
        except Exception:
            return None
        record = LeaseRecord.decode(entry.value)
        return record.holder if record else None
    finally:
        await nc.close()


@pytest.mark.e2e
async def test_failover_after_sigkill(
    nats_server: NatsServer,
    kube: Kube,
    tap: Tap,
    procs: dict[str, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    await kubeops.create(kube, "service", sample("service", "before"))
    ports = {"a": free_port(), "b": free_port()}
    procs["a"] = _spawn("wa", nats_server.url, kube.kubeconfig, tmp_path / "a.log", ports["a"])
    before = k8s_subject("service", "default", "before")
    await tap.wait_for(lambda m: m.subject == before, 15.0)
    assert await _holder(nats_server.url) == "wa"
    procs["b"] = _spawn("wb", nats_server.url, kube.kubeconfig, tmp_path / "b.log", ports["b"])
    await asyncio.sleep(2.0)  # b is up and campaigning
    assert await _holder(nats_server.url) == "wa"
    assert await _scrape(ports["a"], "weir_watcher_is_leader") == 1.0
    assert await _scrape(ports["b"], "weir_watcher_is_leader") == 0.0

    os.killpg(procs["a"].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    await kubeops.create(kube, "service", sample("service", "after"))
    after = k8s_subject("service", "default", "after")
    msg = await tap.wait_for(lambda m: m.subject == after, 6.0)
    took = msg.at - killed_at
    logs = (tmp_path / "b.log").read_text(errors="replace")[-2000:]
    assert took < 5.0, f"standby took {took:.2f}s\n{logs}"
    assert msg.data["producer"] == "wb"
    assert await _holder(nats_server.url) == "wb"
    assert await _scrape(ports["b"], "weir_watcher_is_leader") == 1.0
    # the takeover relist did not republish what the dead leader had already published
    assert _ops(tap, before) == ["UPSERT"]
