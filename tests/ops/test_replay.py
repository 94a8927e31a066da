"""Replay determinism against a live worker, ``--at`` time travel, windows and bad input.

A real nats-server; history is written by publishing contract K8sEvents (as the watcher does)
and a real :class:`DatapathWorker` consumes them into a FakeLBMap that outlives it. Each change
is published only after the worker applied the previous one, so the live maps saw the events one
by one, exactly as the replay feeds them: replaying the whole history must reproduce the live
maps' ``render()`` byte for byte, and a fresh model fed by last-per-subject must resolve to the
same frontends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.subjects import STREAM_K8S, k8s_filter
from contracts.v1 import K8sEvent, Op, to_event
from services.common.bus import Bus, last_per_subject, publish
from services.datapath.fakemaps import FakeLBMap
from services.datapath.model import DesiredState
from services.datapath.reconcile import Reconciler
from services.datapath.render import render, resolved
from services.datapath.worker import DatapathSettings, DatapathWorker
from services.ops.replay_cli import replay
from services.ops.replay_model import Record, ReplayModel
from services.ops.replay_source import ReplayInputError, Window, check_republish, parse_time
from tests.conftest import NatsServer, eventually

NODE = "n1"
RV = iter(range(100, 10_000))


def svc(name: str, ip: str, *, local: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "clusterIP": ip,
        "clusterIPs": [ip],
        "selector": {"app": name},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
    }
    if local:
        spec["internalTrafficPolicy"] = "Local"
    return {"metadata": _meta(name), "spec": spec}


def eps(name: str, *ips: tuple[str, str]) -> dict[str, Any]:
    meta = _meta(f"{name}-abc")
    meta["labels"] = {"kubernetes.io/service-name": name}
    return {
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "nodeName": node} for ip, node in ips
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def _meta(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": "1"}


def node_obj(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "1"}}


async def send(bus: Bus, kind: str, obj: dict[str, Any], op: Op = Op.UPSERT) -> int:
    obj["metadata"]["resourceVersion"] = str(next(RV))
    event = to_event(kind, op, obj, "test", datetime.now(UTC))
    ack = await publish(bus.js, event.subject(), event, msg_id=event.msg_id())
    return int(ack.seq)


async def snapshot_render(bus: Bus, node: str) -> FakeLBMap:
    """A fresh model + reconciler fed by last-per-subject, as a cold worker would build it."""
    model = DesiredState(node)
    for kind in ("service", "endpointslice"):
        for msg in (await last_per_subject(bus.js, STREAM_K8S, k8s_filter(kind))).messages:
            model.apply(K8sEvent.model_validate_json(msg.data))
    model.flush()
    maps = FakeLBMap()
    Reconciler(maps).apply(model.frontends, prune=True)
    return maps


async def test_replay_reproduces_live_maps_and_at_shows_the_past(
    bus: Bus, nats_server: NatsServer
) -> None:
    live = FakeLBMap()
    settings = DatapathSettings(node_name=NODE, nats_url=nats_server.url, maps="fake")
    worker = DatapathWorker(settings, bus, live)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: worker.synced, within=15)

        async def step(kind: str, obj: dict[str, Any], op: Op = Op.UPSERT) -> int:
            seq = await send(bus, kind, obj, op)
            await eventually(lambda: worker.applied_seq >= seq, within=10)
            return seq

        await send(bus, "node", node_obj(NODE))  # not on the worker's filter: nothing to await
        await step("service", svc("web", "10.96.0.10"))
        await step("endpointslice", eps("web", ("10.244.1.5", NODE)))
        await step("service", svc("api", "10.96.0.11", local=True))
        await step("endpointslice", eps("api", ("10.244.1.7", NODE), ("10.244.2.7", "n2")))
        await asyncio.sleep(0.05)
        middle = datetime.now(UTC)
        await asyncio.sleep(0.05)
        await step("endpointslice", eps("web", ("10.244.1.6", NODE), ("10.244.2.6", "n2")))
        await step("service", svc("api", "10.96.0.11"), Op.DELETE)
        await step("endpointslice", eps("api"), Op.DELETE)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    first = await replay(bus.js, window=Window())
    second = await replay(bus.js, window=Window())
    assert sorted(first.model.nodes) == [NODE]  # discovered from the Node event
    replayed = first.model.nodes[NODE].render()
    assert replayed == render(live.dump())  # byte for byte, ids included
    assert replayed == second.model.nodes[NODE].render()
    assert [c.to_json() for c in first.changes] == [c.to_json() for c in second.changes]
    assert resolved(first.model.nodes[NODE].maps.dump()) == resolved(
        (await snapshot_render(bus, NODE)).dump()
    )
    assert "10.96.0.11:80" not in replayed and "10.244.1.6:8080" in replayed

    # event by event: the slice update shows the new backend added and the old one removed
    update = next(c for c in first.changes if c.summary == "UPSERT endpointslice default/web-abc"
                  and any("10.244.1.6" in ln for ln in c.added.get(NODE, [])))  # fmt: skip
    assert any("10.244.1.5:8080" in ln for ln in update.removed[NODE])

    past = await replay(bus.js, window=Window(), at=middle)
    then = past.model.nodes[NODE].render()
    assert "10.96.0.11:80/TCP #0 count=1" in then  # Local: only n1's endpoint
    assert "10.244.1.5:8080" in then and "10.244.1.6:8080" not in then
    assert past.changes == []

    # a window by K8s sequence shows only those changes but starts from the full prior state
    seqs = [c.record.seq for c in first.changes if c.record.stream == STREAM_K8S]
    part = await replay(bus.js, window=Window(from_seq=seqs[-3], to_seq=seqs[-2]))
    assert [c.record.seq for c in part.changes] == seqs[-3:-1]
    assert part.changes[0].removed[NODE]  # the web slice update removes the old backend


async def test_replay_cli_json_and_republish(
    bus: Bus, nats_server: NatsServer, span_exporter: InMemorySpanExporter
) -> None:
    await send(bus, "node", node_obj("n9"))
    await send(bus, "service", svc("web", "10.96.0.20"))
    await send(bus, "endpointslice", eps("web", ("10.244.9.5", "n9")))
    bad = b'{"kind": "service", "op": "UPSERT"}'
    await publish(bus.js, "weir.v1.k8s.service.default.broken", bad, msg_id="bad-1")
    tap = await nats.connect(nats_server.url)
    got: list[tuple[str, dict[str, str]]] = []

    async def on(msg: Any) -> None:
        got.append((msg.subject, dict(msg.headers or {})))

    await tap.subscribe("weir.debug.replay.>", cb=on)
    await tap.flush()
    try:
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli.main", "replay", "--nats", nats_server.url,
             "-o", "json", "--subject", "weir.v1.k8s.>", "--republish", "weir.debug.replay"],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["nodes"] == ["n9"]
        assert doc["republished"] == 4
        by_subject = {c["subject"]: c for c in doc["changes"]}
        slice_change = by_subject["weir.v1.k8s.endpointslice.default.web-abc"]
        assert any("10.244.9.5:8080" in ln for ln in slice_change["added"]["n9"])
        broken = by_subject["weir.v1.k8s.service.default.broken"]
        assert "seq 4" in broken["error"] and "invalid message" in broken["error"]
        await eventually(lambda: len(got) == 4, within=10)
        assert got[1][0] == "weir.debug.replay.k8s.service.default.web"
        assert got[1][1]["Weir-Replay-Seq"] == "2" and "traceparent" in got[1][1]
    finally:
        await tap.close()

    at = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli.main", "replay", "--nats", nats_server.url,
         "--at", "0", "--node", "n9"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert at.returncode == 0, at.stderr
    assert "== n9 at 1970-01-01" in at.stdout and "10.96.0.20" not in at.stdout


def test_bad_options_name_the_option() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_time("5m", "--since", now) == datetime(2023, 12, 31, 23, 55, tzinfo=UTC)
    assert parse_time("2024-01-01T00:00:01", "--at", now).tzinfo is UTC
    with pytest.raises(ReplayInputError, match="--since"):
        parse_time("yesterday", "--since", now)
    with pytest.raises(ReplayInputError, match="WEIR_K8S"):
        check_republish("weir.v1.k8s")
    with pytest.raises(ReplayInputError, match="--republish"):
        check_republish("weir.v1")
    assert check_republish("weir.debug.replay") == "weir.debug.replay"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "replay", "--since", "soon"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--since" in proc.stderr


def test_model_reports_invalid_ipcache_and_tracks_identities() -> None:
    model = ReplayModel(("n1",))
    t = datetime(2024, 1, 1, tzinfo=UTC)
    ident = b'{"id": 300, "labels": ["k8s:app=web"], "observed_at": "2024-01-01T00:00:00Z"}'
    change = model.feed(Record("WEIR_IDENTITY", 1, "weir.v1.identity.300", t, ident))
    assert change.added == {"*": ["identity 300 k8s:app=web"]}
    bad = model.feed(Record("WEIR_IDENTITY", 2, "weir.v1.ipcache.10_2e0_2e0_2e1", t, b'{"ip": 1}'))
    assert "seq 2" in bad.error and "invalid message" in bad.error
    assert model.tables()["*"][1] == "identity 300 k8s:app=web"
