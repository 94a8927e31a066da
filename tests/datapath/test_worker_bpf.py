"""``weir datapath --maps bpf`` as a real process against the kernel, fed from a real nats-server.

Why end to end: the parts (loader, map layer, reconciler, worker) are tested alone elsewhere;
what only shows here is that the process the sandbox and a DaemonSet run turns bus messages into
kernel maps that really steer connect() in a cgroup, survives SIGKILL without a failed connect
or a moment of empty maps, and converges after a restart (deletes that happened while it was
down included). The node is a network namespace and a cgroup2 directory made by this module
(unique names, removed also on failure); backends are addresses on the namespace's loopback
answered by one echo process. The namespace also routes the service range to its loopback, as
a node's service CIDR would be: a VIP the worker no longer programs is then refused by the
kernel (ECONNREFUSED) instead of being sent anywhere. Clients join the cgroup before the
namespace (``ip netns exec`` remounts /sys).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from contracts.v1 import K8sEvent, Op, to_event
from services.common.bus import Bus, connect_bus, provision, publish
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.fakemaps import FakeLBMap
from services.datapath.loader import DEFAULT_VERSION, remove_pins
from services.datapath.model import DesiredState
from services.datapath.reconcile import Reconciler
from services.datapath.render import render, resolved
from tests.conftest import NatsServer, free_port, unique_name
from tests.datapath.bpf.conftest import (
    BACKEND_PORT,
    BACKENDS,
    BPFFS,
    attached,
    client_cmd,
    make_cgroup,
    netns,
    remove_cgroup,
    run_client,
    servers,
    sh,
)
from tests.datapath.manifests import NODE, TESTDATA, events

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(180), pytest.mark.usefixtures("servers")]
__all__ = ["netns", "servers"]  # module fixtures shared with tests/datapath/bpf

WEIR = str(Path(sys.executable).parent / "weir")
VIP = "10.96.50.1"
SERVICE_CIDR = "10.96.0.0/16"
LB_MAPS = ("services", "backends", "revnat")


def web_service(rv: str = "1", op: Op = Op.UPSERT) -> K8sEvent:
    raw = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "e2e", "uid": "u-web", "resourceVersion": rv},
        "spec": {"clusterIP": VIP, "ports": [{"port": 80, "targetPort": BACKEND_PORT}]},
    }
    return to_event("service", op, raw, "test", datetime.now(UTC))


def web_slice(ips: tuple[str, ...], rv: str) -> K8sEvent:
    raw = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "e2e",
            "uid": "u-web-1",
            "resourceVersion": rv,
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "", "port": BACKEND_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }
    return to_event("endpointslice", Op.UPSERT, raw, "test", datetime.now(UTC))


def tombstone(event: K8sEvent, rv: str) -> K8sEvent:
    return event.model_copy(update={"op": Op.DELETE, "resource_version": rv, "object": None})


async def send(bus: Bus, *evs: K8sEvent) -> None:
    for ev in evs:
        await publish(bus.js, ev.subject(), ev, msg_id=ev.msg_id())


def expected(evs: list[K8sEvent]) -> dict[str, tuple[object, ...]]:
    """What a fresh node would program for these events (id-free view)."""
    model = DesiredState(NODE)
    for ev in evs:
        model.apply(ev)
    model.flush()
    fake = FakeLBMap()
    Reconciler(fake).apply(model.frontends, prune=True)
    return resolved(fake.dump())


class Worker:
    """One ``weir datapath`` process for this module's node; restartable."""

    def __init__(self, nats_url: str, cgroup: Path, pin_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.cmd = [WEIR, "datapath", "--maps", "bpf", "--node", NODE, "--nats", nats_url,
                    "--cgroup", str(cgroup), "--pin-dir", str(pin_dir), "--no-policy",
                    "--metrics-listen", f"127.0.0.1:{self.port}"]  # fmt: skip

    def start(self, within: float = 60.0) -> float:
        """Spawn and wait for /readyz; returns the seconds it took."""
        started = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() - started > within:
                raise AssertionError(f"worker not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)
        return time.monotonic() - started

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/readyz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
        return False

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        return self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def node(netns: str) -> Iterator[dict[str, Any]]:
    """nats-server, cgroup, pin directory and (not yet started) worker of this module's node."""
    sh("ip", "-n", netns, "route", "add", "local", SERVICE_CIDR, "dev", "lo")
    root = Path(f"/tmp/{unique_name('weir-e2e-', max_len=24)}")
    root.mkdir()
    nats = NatsServer(root)
    cgroup = make_cgroup()
    pin_dir = BPFFS / unique_name("weir-test-", max_len=24)
    worker = Worker(nats.url, cgroup, pin_dir, root / "worker.log")
    try:
        nats.start()
        worker.cmd[worker.cmd.index("--nats") + 1] = nats.url
        yield {"nats": nats, "cgroup": cgroup, "pins": pin_dir, "worker": worker}
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.signal(signal.SIGKILL)
        nats.stop()
        remove_cgroup(cgroup)
        if pin_dir.exists():
            for version in pin_dir.iterdir():
                remove_pins(version)
            shutil.rmtree(pin_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def bus(node: dict[str, Any]) -> AsyncIterator[Bus]:
    connected = await connect_bus(node["nats"].url, "pytest-e2e")
    try:
        await provision(connected.js)
        yield connected
    finally:
        await connected.close()


def answers(netns: str, cgroup: Path, n: int) -> list[dict[str, str]]:
    out = run_client(netns, cgroup, "tcp", VIP, "80", str(n))
    assert isinstance(out, list)
    return out


class FillWatch(threading.Thread):
    """Polls the pinned maps' fill levels every few ms while a restart happens."""

    def __init__(self, maps: BpfLBMap) -> None:
        super().__init__(daemon=True)
        self.maps = maps
        self.samples: list[dict[str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append({k: e for k, (e, _c) in self.maps.fill().items()})
            time.sleep(0.005)


async def test_worker_process_programs_kernel_and_survives_sigkill(
    netns: str, node: dict[str, Any], bus: Bus
) -> None:
    cgroup, worker = node["cgroup"], node["worker"]
    base = events(TESTDATA / "clusterip.yaml")
    await send(bus, *base)
    worker.start()
    version_dir = node["pins"] / DEFAULT_VERSION
    maps = BpfLBMap(version_dir)
    try:
        # bootstrap from the bus: exactly the golden, in the kernel
        golden = (TESTDATA / "clusterip.golden").read_text()
        assert render(maps.dump()) == golden
        first = attached(cgroup)
        assert all(len(ids) == 1 for ids in first.values()), first

        # a live change reaches the kernel and steers connect()
        web = [web_service(), web_slice(BACKENDS, "1")]
        await send(bus, *web)
        deadline = time.monotonic() + 5
        while "10.96.50.1:80/TCP" not in resolved(maps.dump()):
            assert time.monotonic() < deadline, "live Service not programmed within 5 s"
            await asyncio.sleep(0.005)
        hits = answers(netns, cgroup, 12)
        assert {h.get("backend") for h in hits} <= {f"{ip}:{BACKEND_PORT}" for ip in BACKENDS}
        assert all(h.get("peer") == f"{VIP}:80" for h in hits), hits

        # SIGKILL, a delete while down, restart: no failed connect, maps never empty
        # a plain process (not asyncio's): the worker it outlives is a separate process anyway
        loop = subprocess.Popen(client_cmd(netns, cgroup, "loop", VIP, "80", "6"),  # noqa: ASYNC220
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        watch = FillWatch(maps)
        watch.start()
        await asyncio.sleep(0.5)
        assert worker.signal(signal.SIGKILL) == -signal.SIGKILL
        api = next(e for e in base if e.kind == "service" and e.name == "api")
        await send(bus, tombstone(api, "2"))
        took = worker.start()
        await asyncio.sleep(0.3)
        watch.stop.set()
        watch.join(timeout=5)
        out, _ = loop.communicate(timeout=60)
        result = json.loads(out)
        assert result["failed"] == 0, result
        assert result["ok"] > 100, result
        want = expected([*base, *web, tombstone(api, "2")])
        assert resolved(maps.dump()) == want
        assert "10.96.10.2:8000/TCP" not in want
        final = {k: e for k, (e, _c) in maps.fill().items() if k in LB_MAPS}
        lowest = {k: min(s[k] for s in watch.samples) for k in final}
        assert len(watch.samples) > 50, "the fill was not sampled through the restart"
        assert all(lowest[k] >= final[k] > 0 for k in final), (lowest, final, took)

        # attached once: the restarted worker swapped its programs into the same links
        second = attached(cgroup)
        assert all(len(ids) == 1 for ids in second.values()), second
        # SIGTERM stops the worker but leaves the programs attached and the maps in place
        assert worker.signal(signal.SIGTERM) == 0
        assert attached(cgroup) == second
        assert {h.get("backend") for h in answers(netns, cgroup, 3)} <= {
            f"{ip}:{BACKEND_PORT}" for ip in BACKENDS
        }
    finally:
        maps.close()


async def test_endpoint_removal_and_service_delete_reach_connects(
    netns: str, node: dict[str, Any], bus: Bus
) -> None:
    cgroup, worker = node["cgroup"], node["worker"]
    await send(bus, web_service(), web_slice(BACKENDS, "10"))
    if worker.proc is None or worker.proc.poll() is not None:
        worker.start()
    maps = BpfLBMap(node["pins"] / DEFAULT_VERSION)
    try:
        deadline = time.monotonic() + 5
        while len(resolved(maps.dump()).get("10.96.50.1:80/TCP", (0,))[-1]) != 3:  # type: ignore[arg-type]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        gone = BACKENDS[2]
        await send(bus, web_slice(BACKENDS[:2], "11"))
        published = time.monotonic()
        await asyncio.sleep(max(0.0, published + 1.0 - time.monotonic()))
        hits = answers(netns, cgroup, 30)
        reached = {h.get("backend") for h in hits}
        assert f"{gone}:{BACKEND_PORT}" not in reached, "a removed endpoint got a connection"
        assert reached == {f"{ip}:{BACKEND_PORT}" for ip in BACKENDS[:2]}, hits

        await send(bus, tombstone(web_service(), "12"))
        await asyncio.sleep(1.0)
        assert answers(netns, cgroup, 3) == [{"error": "ECONNREFUSED"}] * 3
        assert "10.96.50.1:80/TCP" not in resolved(maps.dump())
    finally:
        maps.close()
        if worker.proc is not None and worker.proc.poll() is None:
            worker.signal(signal.SIGTERM)


def test_removing_the_pin_directory_detaches_the_programs(node: dict[str, Any]) -> None:
    """What the sandbox teardown does (unlink every pin, remove the directories) must also
    drop the links, so no program stays attached to a cgroup nobody manages."""
    cgroup, pins = node["cgroup"], node["pins"]
    worker = node["worker"]
    if worker.proc is None or worker.proc.poll() is not None:
        worker.start()
    worker.signal(signal.SIGKILL)
    assert all(len(ids) == 1 for ids in attached(cgroup).values())
    for dirpath, _dirs, files in os.walk(pins, topdown=False):
        for name in files:
            Path(dirpath, name).unlink()
        Path(dirpath).rmdir()
    deadline = time.monotonic() + 5
    while any(attached(cgroup).values()):  # links are released asynchronously
        assert time.monotonic() < deadline, attached(cgroup)
        time.sleep(0.02)
