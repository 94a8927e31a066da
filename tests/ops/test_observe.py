"""``weir observe`` and the flow publisher against a real nats-server.

Datapath events go through the real FlowPublisher (to_flow + publish_batch) onto WEIR_FLOWS; a
plain core-NATS subscriber must see them on the documented subjects, and ``weir observe`` (the
CLI process) must find them with Hubble's filters. Pure parts (filters, compact line, --since)
are table-tested.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.v1 import Flow
from services.common.bus import Bus, Outgoing, publish_batch
from services.datapath.flowevents import ObservationPoint, RawFlowEvent, Verdict
from services.datapath.flows import FlowNames, to_flow
from services.datapath.flows_pub import FlowPublisher
from services.datapath.policymap import Direction
from services.ops.observe import FlowFilter, compact, parse_since
from services.ops.output import OpsError
from tests.conftest import NatsServer, eventually

pytestmark = pytest.mark.timeout(60)

PODS = {"10.0.0.1": ("demo", "client"), "10.0.0.2": ("demo", "echo-1")}
SERVICES = {("10.0.0.2", 8080, "TCP"): ("demo", "echo")}
NAMES = FlowNames(
    pod_of=PODS.get,
    labels_of=lambda i: [f"k8s:app=id{i}"] if i >= 256 else ["reserved:world="],
    service_of=lambda ip, port, proto: SERVICES.get((ip, port, proto)),
)


def event(verdict: Verdict, sport: int, *, dport: int = 8080, ktime: int = 0) -> RawFlowEvent:
    return RawFlowEvent(
        ktime_ns=ktime or sport,
        time_ns=int(datetime.now(UTC).timestamp() * 1e9),
        verdict=verdict,
        drop_reason=133 if verdict is Verdict.DROPPED else 0,
        saddr="10.0.0.1",
        daddr="10.0.0.2",
        sport=sport,
        dport=dport,
        proto=6,
        tcp_flags=0x02,
        src_identity=300,
        dst_identity=301,
        endpoint_id=1,
        direction=Direction.INGRESS,
        is_reply=False,
        ifindex=7,
        observation_point=ObservationPoint.TO_ENDPOINT,
    )


def test_to_flow_is_hubble_shaped_and_compact_line() -> None:
    flow = to_flow(event(Verdict.DROPPED, 43210), "node1", NAMES)
    assert flow.subject() == "weir.v1.flows.node1.DROPPED"
    assert flow.drop_reason_desc == "POLICY_DENIED" and flow.is_reply is None
    assert flow.source.pod_name == "client" and flow.source.labels == ["k8s:app=id300"]
    assert flow.destination_service is not None and flow.destination_service.name == "echo"
    line = compact(flow)
    assert line.endswith(
        ": demo/client:43210 (ID:300) <> demo/echo-1:8080 (ID:301) Policy denied DROPPED"
        " (TCP Flags: SYN)"
    )
    ok = to_flow(event(Verdict.FORWARDED, 1), "node1", NAMES)
    assert ok.drop_reason_desc is None and ok.is_reply is False
    assert " -> demo/echo-1:8080 (ID:301) to-endpoint FORWARDED (TCP Flags: SYN)" in compact(ok)


def test_filters_combine_like_hubble() -> None:
    flow = to_flow(event(Verdict.DROPPED, 5), "node1", NAMES)
    assert FlowFilter.from_flags(verdicts=["dropped"], from_pods=["demo/client"]).matches(flow)
    assert FlowFilter.from_flags(pods=["echo-1"], identities=[999, 300]).matches(flow)
    assert FlowFilter.from_flags(to_services=["demo/echo"], namespaces=["demo"]).matches(flow)
    assert not FlowFilter.from_flags(verdicts=["FORWARDED"]).matches(flow)
    assert not FlowFilter.from_flags(to_pods=["demo/client"]).matches(flow)
    assert not FlowFilter.from_flags(nodes=["node2"]).matches(flow)
    assert FlowFilter.from_flags(nodes=["node1"], verdicts=["DROPPED"]).subject() == (
        "weir.v1.flows.node1.DROPPED"
    )
    assert FlowFilter.from_flags(verdicts=["DROPPED", "FORWARDED"]).subject() == (
        "weir.v1.flows.*.*"
    )
    with pytest.raises(OpsError, match="--verdict: 'NOPE'"):
        FlowFilter.from_flags(verdicts=["NOPE"])
    with pytest.raises(OpsError, match="--to-service"):
        FlowFilter.from_flags(to_services=["echo"])


def test_parse_since() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_since("5m", now) == now - timedelta(minutes=5)
    assert parse_since("2024-05-01T11:00:00Z", now) == now - timedelta(hours=1)
    with pytest.raises(OpsError, match="--since"):
        parse_since("yesterday", now)


def observe(url: str, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "observe", "--nats", url, "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_published_flows_reach_core_subscribers_and_observe(
    bus: Bus, nats_server: NatsServer
) -> None:
    got: list[tuple[str, Flow]] = []

    async def on_msg(msg: Any) -> None:
        got.append((msg.subject, Flow.model_validate_json(msg.data)))

    sub = await bus.nc.subscribe("weir.v1.flows.>", cb=on_msg)

    async def send(items: Any) -> None:
        await publish_batch(bus.js, list[Outgoing](items))

    pub = FlowPublisher("node1", NAMES, send, queue_size=100, batch=16, linger=0.005)
    task = asyncio.create_task(pub.run())
    try:
        for i in range(30):  # from a "reader thread": offer() is thread-safe and never blocks
            verdict = Verdict.DROPPED if i % 3 == 0 else Verdict.FORWARDED
            await asyncio.to_thread(pub.offer, event(verdict, 1000 + i))
        await eventually(lambda: len(got) == 30 and pub.published == 30)
    finally:
        task.cancel()
        await sub.unsubscribe()
    assert {s for s, _ in got} == {"weir.v1.flows.node1.DROPPED", "weir.v1.flows.node1.FORWARDED"}
    # the same batch again (e.g. a retry): deduplicated by the deterministic msg ids
    await pub.publish_events([event(Verdict.DROPPED, 1000)])
    info = await bus.js.stream_info("WEIR_FLOWS")
    assert info.state.messages == 30

    last = await asyncio.to_thread(observe, nats_server.url, "--last", "4", "--verdict", "DROPPED")
    assert [f["l4"]["tcp"]["source_port"] for f in last] == [1018, 1021, 1024, 1027]
    assert all(f["drop_reason_desc"] == "POLICY_DENIED" for f in last)
    since = await asyncio.to_thread(observe, nats_server.url, "--since", "1m", "--pod", "echo-1")
    assert len(since) == 30
    none = await asyncio.to_thread(observe, nats_server.url, "--node", "node2")
    assert none == []


def test_publisher_drops_and_counts_when_full() -> None:
    async def go() -> FlowPublisher:
        async def never(_items: Any) -> None:
            raise AssertionError("not called")

        pub = FlowPublisher("node1", NAMES, never, queue_size=5)
        for i in range(8):
            pub.offer(event(Verdict.FORWARDED, i + 1))
        return pub

    pub = asyncio.run(go())
    assert pub.dropped == 3 and len(pub.take()) == 5
