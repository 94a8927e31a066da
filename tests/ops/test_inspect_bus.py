"""`weir status`, `weir svc` and `weir identity list/get` against a real nats-server.

Messages go through the real bus helpers (publish with msg ids, provisioned streams, the real
identity KV written by the allocator's own store), and the commands run through the real typer
app, so options, output and exit codes are what an operator gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

from typer.testing import CliRunner

from contracts import subjects as s
from contracts.v1 import (
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    IPCacheEntry,
    K8sEvent,
    MapFill,
    NodeStatus,
    Op,
    Pod,
    Service,
    ServicePort,
    ValidationReport,
)
from services.cli.main import app
from services.common.bus import Bus, publish
from services.identity.allocator import Allocator
from services.identity.kv import NatsKV
from services.identity.labels import LabelSet
from tests.conftest import NatsServer, free_port

T0 = datetime(2025, 1, 1, tzinfo=UTC)
runner = CliRunner()


async def weir(*args: str) -> Any:
    """Run the real CLI in a thread: it runs its own event loop, as from a shell."""
    return await asyncio.to_thread(runner.invoke, app, list(args), catch_exceptions=False)


def event(kind: str, ns: str, name: str, obj: Any, rv: str, op: Op = Op.UPSERT) -> K8sEvent:
    return K8sEvent(
        kind=kind,
        op=op,
        namespace=ns,
        name=name,
        uid=f"uid-{name}",
        resource_version=rv,
        observed_at=T0,
        producer="test",
        object=obj if op is Op.UPSERT else None,
    )


async def put(bus: Bus, ev: K8sEvent) -> int:
    return (await publish(bus.js, ev.subject(), ev, msg_id=ev.msg_id())).seq


def web_service() -> Service:
    return Service(
        cluster_ips=["10.96.0.10"],
        ports=[ServicePort(name="http", port=80, target_port="web")],
        selector={"app": "web"},
    )


def web_slice() -> EndpointSlice:
    def ep(ip: str, ready: bool, node: str) -> Endpoint:
        cond = EndpointConditions(ready=ready, serving=ready, terminating=not ready)
        return Endpoint(addresses=[ip], conditions=cond, node_name=node)

    return EndpointSlice(
        address_type="IPv4",
        service_name="web",
        endpoints=[ep("10.244.1.5", True, "node1"), ep("10.244.2.7", False, "node2")],
        ports=[EndpointPort(name="http", port=8080)],
    )


async def seed_cluster(bus: Bus) -> dict[str, int]:
    """web (2 endpoints, 1 ready), db (no slice), gone (deleted); returns sequences."""
    seqs = {}
    await put(bus, event("service", "shop", "web", web_service(), "1"))
    db = Service(cluster_ips=["10.96.0.20"], ports=[ServicePort(port=5432, target_port=5432)])
    await put(bus, event("service", "shop", "db", db, "2"))
    await put(bus, event("service", "shop", "gone", db.model_copy(), "3"))
    await put(bus, event("service", "shop", "gone", None, "4", Op.DELETE))
    seqs["slice"] = await put(bus, event("endpointslice", "shop", "web-abc", web_slice(), "5"))
    return seqs


def status(node: str, applied: int, when: datetime) -> NodeStatus:
    return NodeStatus(
        node=node,
        applied={s.STREAM_K8S: applied},
        maps={
            "services": MapFill(entries=3, capacity=1024),
            "backends": MapFill(entries=1, capacity=8),
        },
        program_versions={"sock_lb": "v1"},
        errors=["service shop/x: ports[0].targetPort named but no slice ports"] if applied else [],
        time=when,
    )


async def test_status_lag_counts_only_datapath_subjects(bus: Bus, nats_server: NatsServer) -> None:
    seqs = await seed_cluster(bus)
    now = datetime.now(UTC)
    for st in (status("node1", seqs["slice"], now), status("node2", seqs["slice"] - 2, now)):
        await publish(bus.js, st.subject(), st, msg_id=f"st-{st.node}")
    pod = Pod(ips=["10.244.1.5"], node_name="node1")
    await put(bus, event("pod", "shop", "web-0", pod, "9"))  # not consumed by the datapath
    report = ValidationReport(
        kind="service",
        namespace="shop",
        name="bad",
        field="spec.ports[0].port",
        message="must be 1-65535",
        observed_at=T0,
    )
    await publish(bus.js, report.subject(), report, msg_id=report.msg_id())

    result = await weir("status", "--nats", nats_server.url, "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert nodes["node1"]["k8s_lag"] == 0  # the pod message after it is not lag
    assert nodes["node2"]["k8s_lag"] == 2
    assert doc["converged"] is False and doc["lagging_nodes"] == ["node2"]
    assert nodes["node1"]["maps"]["backends"] == {"entries": 1, "capacity": 8, "percent": 12.5}
    assert nodes["node1"]["programs"] == {"sock_lb": "v1"}
    assert 0 <= nodes["node1"]["age_seconds"] < 60
    assert doc["services"] == 2  # web, db; the tombstoned one is gone
    assert doc["identities"] == 0
    assert [e["field"] for e in doc["recent_errors"]] == ["spec.ports[0].port"]
    streams = {x["name"]: x for x in doc["streams"]}
    assert streams[s.STREAM_K8S]["messages"] == 6
    assert streams[s.STREAM_K8S]["last_seq"] == seqs["slice"] + 1

    table = await weir("status", "--nats", nats_server.url)
    assert table.exit_code == 0, table.output
    assert "node2" in table.output and "backends 1/8" in table.output
    assert "converged: no (lagging: node2)" in table.output
    assert "spec.ports[0].port" in table.output


async def test_status_reports_an_invalid_status_message(bus: Bus, nats_server: NatsServer) -> None:
    await bus.js.publish(s.status_subject("node9"), b'{"node": "node9", "time": "yesterday"}')
    result = await weir("status", "--nats", nats_server.url, "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["nodes"] == [] and doc["converged"] is False
    assert len(doc["problems"]) == 1
    assert "weir.v1.status.node9: not a valid NodeStatus: time" in doc["problems"][0]


async def test_svc_list_and_get(bus: Bus, nats_server: NatsServer) -> None:
    await seed_cluster(bus)
    other = Service(cluster_ips=["10.96.1.1"], ports=[ServicePort(port=53, target_port=53)])
    await put(bus, event("service", "kube-system", "dns", other, "7"))

    result = await weir("svc", "list", "-n", "shop", "--nats", nats_server.url, "-o", "json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["services"]}
    assert set(rows) == {"web", "db"}
    assert rows["web"]["ready_endpoints"] == 1 and rows["web"]["endpoints"] == 2
    assert rows["web"]["ports"] == ["http:80/TCP->web"]
    assert rows["db"]["ready_endpoints"] == 0

    table = await weir("svc", "list", "--nats", nats_server.url)
    assert table.exit_code == 0 and "kube-system" in table.output and "1/2" in table.output

    got = await weir("svc", "get", "shop/web", "--nats", nats_server.url, "-o", "json")
    assert got.exit_code == 0, got.output
    detail = json.loads(got.output)
    (port,) = detail["port_details"]
    assert port["frontends"] == ["10.96.0.10:80/TCP"]
    assert [(b["address"], b["ready"], b["node"]) for b in port["backends"]] == [
        ("10.244.1.5:8080", True, "node1"),
        ("10.244.2.7:8080", False, "node2"),
    ]
    table = await weir("svc", "get", "shop/web", "--nats", nats_server.url)
    assert "10.244.2.7:8080" in table.output and "terminating" in table.output

    missing = await weir("svc", "get", "shop/gone", "--nats", nats_server.url)
    assert missing.exit_code == 1
    assert "service shop/gone not found" in missing.output
    bad = await weir("svc", "get", "a/b/c", "--nats", nats_server.url)
    assert bad.exit_code == 2 and "expected NAMESPACE/NAME" in bad.output


async def test_identity_list_and_get(bus: Bus, nats_server: NatsServer) -> None:
    kv = await NatsKV.open(bus.js)
    alloc = Allocator(kv, instance="alloc.one", low=300, high=310)
    await alloc.start()
    web = LabelSet.of(["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"])
    # an id claimed with garbage: reported, not fatal. Claimed before the allocation, which picks
    # a random free id in 300..310 and so could otherwise take 305 itself (1 run in 11 did)
    await kv.create("id.305", b"not json")
    got = await alloc.acquire("uid-web-0", web)
    assert got.identity != 305
    entry = IPCacheEntry(
        ip="10.244.1.5",
        identity=got.identity,
        namespace="shop",
        pod_name="web-0",
        node_name="node1",
        observed_at=T0,
    )
    await publish(bus.js, entry.subject(), entry, msg_id=entry.msg_id())

    result = await weir("identity", "list", "--nats", nats_server.url, "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    rows = {r["id"]: r for r in doc["identities"]}
    assert rows[got.identity]["labels"] == list(web.labels)
    assert rows[got.identity]["refs"] == ["alloc.one"]
    assert rows[305]["labels"] is None and rows[305]["mapped"] is False
    assert any("KV key id.305: value" in p for p in doc["problems"])

    with_reserved = json.loads(
        (
            await weir("identity", "list", "--reserved", "--nats", nats_server.url, "-o", "json")
        ).output
    )
    assert [r["id"] for r in with_reserved["identities"]][:8] == list(range(8))

    one = await weir("identity", "get", str(got.identity), "--nats", nats_server.url, "-o", "json")
    assert one.exit_code == 0, one.output
    detail = json.loads(one.output)
    assert detail["endpoints"] == [
        {"ip": "10.244.1.5", "namespace": "shop", "pod": "web-0", "node": "node1"}
    ]
    table = await weir("identity", "get", str(got.identity), "--nats", nats_server.url)
    assert "k8s:app=web" in table.output and "in-use" in table.output and "web-0" in table.output
    assert (
        await weir("identity", "get", "4", "--nats", nats_server.url)
    ).exit_code == 0  # reserved
    assert (await weir("identity", "get", "999", "--nats", nats_server.url)).exit_code == 1
    assert (await weir("identity", "get", "x1", "--nats", nats_server.url)).exit_code == 2


def test_unreachable_nats_says_what_to_do(tmp_path: Any) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    env = {"WEIR_STATE_ROOT": str(tmp_path)}  # no sandbox there
    for args in (["status"], ["svc", "list"], ["identity", "list"], ["identity", "get", "256"]):
        start = time.monotonic()
        result = runner.invoke(app, [*args, "--nats", url], env=env)
        assert result.exit_code == 1, (args, result.output)
        assert f"cannot reach NATS at {url}" in result.output
        assert "weir sandbox up" in result.output and "--nats" in result.output
        assert time.monotonic() - start < 10


def test_default_url_comes_from_the_running_sandbox(tmp_path: Any, nats_server: NatsServer) -> None:
    sandbox = tmp_path / "sb1"
    sandbox.mkdir()
    (tmp_path / "current").write_text("sb1\n")
    status_json = {"id": "sb1", "supervisor_pid": os.getpid(), "nats_url": nats_server.url}
    (sandbox / "status.json").write_text(json.dumps(status_json))
    env = {"WEIR_STATE_ROOT": str(tmp_path), "WEIR_NATS_URL": None}
    result = runner.invoke(app, ["svc", "list", "-o", "json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["services"] == []


def test_weir_identity_without_subcommand_still_runs_the_allocator(
    nats_server: NatsServer,
) -> None:
    """The sandbox and tests run `weir identity --nats URL`: it must still start the allocator."""
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli.main", "identity", "--nats", nats_server.url]
    cmd += ["--metrics-listen", f"127.0.0.1:{port}", "--instance", "ops-test"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            url = f"http://127.0.0.1:{port}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    break
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        else:
            raise AssertionError("weir identity did not serve /healthz")
        listed = runner.invoke(app, ["identity", "list", "--nats", nats_server.url, "-o", "json"])
        assert listed.exit_code == 0, listed.output  # the allocator provisioned the bucket
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
