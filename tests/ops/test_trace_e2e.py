"""One trace per change across separate processes: watcher -> identity -> every node's worker.

Real components only: a nats-server, the API stand-in over HTTP (objects created through
kubernetes-asyncio), and ``weir watcher``, ``weir identity`` and two ``weir datapath --maps
fake`` workers as SUBPROCESSES of the real CLI, each exporting spans to its own
``WEIR_TRACE_FILE``. The assertions read those files back: the Pod's trace must run from the
watcher's publish through the identity allocator's consumer span to its Identity/IPCache
publishes; the Service's and the EndpointSlice's traces must reach both workers as CONSUMER
spans that are children of the watcher's PRODUCER span; and ``weir trace service/default/x -o
json`` must show the watcher and both nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.apiserver.server import ApiServerConfig
from services.ops.trace_read import SpanRecord, load_spans, parse_object, traces_for
from tests.apiserver.conftest import Kube, running_kube
from tests.conftest import NatsServer, eventually, free_port
from tests.watcher.kubeops import create

pytestmark = pytest.mark.e2e

NODES = ("n1", "n2")


class Procs:
    """Subprocesses of the real CLI, each in its own session; killed on teardown."""

    def __init__(self, trace_dir: Path, nats_url: str) -> None:
        self.trace_dir = trace_dir
        self.nats_url = nats_url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ready: dict[str, str] = {}

    def start(self, name: str, *args: str) -> None:
        port = free_port()
        env = dict(os.environ)
        env |= {
            "WEIR_TRACE_FILE": str(self.trace_dir / f"{name}.jsonl"),
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "WEIR_NATS_URL": self.nats_url,
            "WEIR_METRICS_LISTEN": f"127.0.0.1:{port}",
            "WEIR_LOG_LEVEL": "WARNING",
        }
        log = (self.trace_dir / f"{name}.log").open("wb")
        cmd = [sys.executable, "-m", "services.cli.main", *args]
        self.procs[name] = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=log, start_new_session=True
        )
        self.ready[name] = f"http://127.0.0.1:{port}/readyz"

    def is_ready(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            tail = (self.trace_dir / f"{name}.log").read_text(errors="replace")[-1500:]
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(self.ready[name], timeout=0.5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Kube]:
    cfg = ApiServerConfig(port=0, kubeconfig_out=tmp_path / "kubeconfig", bookmark_interval=0.2)
    async with running_kube(cfg) as k:
        yield k


@pytest.fixture
def procs(tmp_path: Path, nats_server: NatsServer) -> Iterator[Procs]:
    trace_dir = tmp_path / "traces"
    trace_dir.mkdir()
    running = Procs(trace_dir, nats_server.url)
    try:
        yield running
    finally:
        running.stop()


def spans_in(trace_dir: Path) -> list[SpanRecord]:
    return load_spans(trace_dir.glob("*.jsonl"))[0]


def by_id(spans: list[SpanRecord]) -> dict[str, SpanRecord]:
    return {s.span_id: s for s in spans}


def workers_reached(spans: list[SpanRecord], obj: str) -> set[str]:
    found: set[str] = set()
    for trace in traces_for(spans, parse_object(obj)):
        ids = by_id(trace.spans)
        for s in trace.spans:
            parent = ids.get(s.parent_span_id)
            if (
                s.service == "weir-datapath"
                and s.kind == "CONSUMER"
                and parent is not None
                and parent.service == "weir-watcher"
                and parent.kind == "PRODUCER"
            ):
                found.add(s.node)
    return found


async def test_one_trace_per_change_across_processes(
    kube: Kube, procs: Procs, tmp_path: Path
) -> None:
    procs.start("watcher", "watcher", "--kubeconfig", str(kube.kubeconfig), "--lease-ttl", "2")
    procs.start("identity", "identity", "--instance", "id-0", "--gc-interval", "60")
    for node in NODES:
        procs.start(f"datapath-{node}", "datapath", "--node", node, "--maps", "fake")
    await eventually(lambda: all(procs.is_ready(n) for n in procs.procs), within=60, step=0.2)

    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x-0", "namespace": "default", "labels": {"app": "x"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "weir/echo"}]},
        "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]},
    }
    await create(kube, "pod", pod)
    await create(kube, "service", {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x", "namespace": "default"},
        "spec": {"selector": {"app": "x"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    })  # fmt: skip
    await create(kube, "endpointslice", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "x-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "x"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True},
                       "nodeName": "n1"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })  # fmt: skip

    trace_dir = procs.trace_dir

    def pod_trace_complete() -> bool:
        spans = spans_in(trace_dir)
        for trace in traces_for(spans, parse_object("pod/default/x-0")):
            names = {(s.service, s.kind, s.name) for s in trace.spans}
            if ("weir-identity", "PRODUCER", "publish weir.v1.ipcache.*") in names:
                return True
        return False

    await eventually(pod_trace_complete, within=30, step=0.2)
    await eventually(
        lambda: (
            workers_reached(spans_in(trace_dir), "service/default/x") == set(NODES)
            and workers_reached(spans_in(trace_dir), "endpointslice/default/x-abc") == set(NODES)
        ),
        within=30,
        step=0.2,
    )

    # the Pod: watcher PRODUCER -> identity CONSUMER (child + link) -> Identity/IPCache PRODUCERs
    spans = spans_in(trace_dir)
    [pod_trace] = [
        t for t in traces_for(spans, parse_object("pod/default/x-0"))
        if any(s.service == "weir-identity" for s in t.spans)
    ]  # fmt: skip
    ids = by_id(pod_trace.spans)
    w_prod = next(
        s for s in pod_trace.spans if s.service == "weir-watcher" and s.kind == "PRODUCER"
    )
    assert w_prod.attributes["messaging.destination.name"] == "weir.v1.k8s.pod.default.x-0"
    assert w_prod.attributes["messaging.message.id"].startswith("pod/default/x-0/")
    assert ids[w_prod.parent_span_id].attributes["weir.object"] == "pod default/x-0"
    i_cons = next(
        s for s in pod_trace.spans if s.service == "weir-identity" and s.kind == "CONSUMER"
    )
    assert i_cons.parent_span_id == w_prod.span_id
    assert (pod_trace.trace_id, w_prod.span_id) in i_cons.links
    i_prods = [s for s in pod_trace.spans if s.service == "weir-identity" and s.kind == "PRODUCER"]
    assert {s.name for s in i_prods} >= {"publish weir.v1.ipcache.*"}
    for p in i_prods:  # each publish hangs under the consumer span (directly or via a helper)
        chain = p
        while chain.parent_span_id and chain.span_id != i_cons.span_id:
            chain = ids[chain.parent_span_id]
        assert chain.span_id == i_cons.span_id

    # the Service: watcher PRODUCER -> a CONSUMER span on each node, with the worker attributes
    [svc_trace] = traces_for(spans, parse_object("service/default/x"))
    ids = by_id(svc_trace.spans)
    s_prod = next(s for s in svc_trace.spans if s.kind == "PRODUCER")
    consumers = [s for s in svc_trace.spans if s.service == "weir-datapath"]
    assert sorted(s.node for s in consumers) == list(NODES)
    for c in consumers:
        assert c.kind == "CONSUMER" and c.parent_span_id == s_prod.span_id
        assert c.name == "process weir.v1.k8s.service.*.*"
        assert c.attributes["weir.node"] == c.node
        assert c.attributes["messaging.system"] == "nats"
        assert c.attributes["messaging.destination.name"] == "weir.v1.k8s.service.default.x"
        assert (
            c.attributes["messaging.nats.stream_sequence"]
            == s_prod.attributes["messaging.nats.stream_sequence"]
        )
        assert 0 <= c.attributes["weir.network_programming_seconds"] < 30
        assert c.attributes["weir.object"] == "service/default/x"
    # Service + slice program the maps. The watcher publishes the two kinds from separate watches,
    # so a node may apply them in one batch or in two (in either order): per node, the spans of
    # the two changes together must show the writes to all three maps; the slice's own span must
    # show the backends it brought.
    [eps_trace] = traces_for(spans, parse_object("endpointslice/default/x-abc"))
    for node in NODES:
        mine = [
            s
            for s in (*svc_trace.spans, *eps_trace.spans)
            if s.service == "weir-datapath"
            and s.node == node
            and s.attributes.get("weir.loop") != "policy"  # the policy loop reads slices too
        ]
        touched = {m for s in mine for m in s.attributes.get("weir.maps_touched", [])}
        assert touched == {"backends", "frontends", "revnat", "services"}, (node, touched)
        assert sum(s.attributes.get("weir.entries_written", 0) for s in mine) >= 3
        for eps_span in (s for s in mine if s in eps_trace.spans):
            if eps_span.attributes.get("weir.entries_written"):  # applied after/with the Service
                assert "backends" in eps_span.attributes.get("weir.maps_touched", [])

    # the CLI: weir trace ... -o json shows the watcher and both nodes
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli.main", "trace", "service/default/x",
         "--dir", str(trace_dir), "-o", "json"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["subject"] == "weir.v1.k8s.service.default.x"
    [t] = doc["traces"]
    assert set(t["processes"]) == {"weir-watcher", "weir-datapath@n1", "weir-datapath@n2"}
    parents = {s["span_id"]: s for s in t["spans"]}
    for s in t["spans"]:
        if s["service"] == "weir-datapath":
            assert parents[s["parent_span_id"]]["kind"] == "PRODUCER"
    table = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli.main", "trace", "service/default/x",
         "--files", str(trace_dir / "*.jsonl"), "--last", "1"],
        check=False, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "weir-datapath@n2" in table.stdout and "process weir.v1.k8s.service" in table.stdout
