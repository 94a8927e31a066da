"""The worker's policy loop against a real nats-server, with FakePolicyMaps and static routes.

What is checked is what the kernel would do: every assertion asks ``decide()`` (bpf/policy.c's
decision in Python) about the fake maps the loop wrote. Covers: unselected pods allow all;
deny-all ingress; an allow rule by namespace + pod labels; a label change (new identity) moves
access; endpoint ids and CIDR identities survive a restart and nothing is rewritten; a pod whose
veth appears late is enforced once it does; bad messages are skipped and counted; messages are
acked only once applied; NodeStatus carries the policy maps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from contracts.subjects import STREAM_IDENTITY, STREAM_K8S
from contracts.v1 import Identity, IPCacheEntry, NodeStatus, Op, to_event
from services.common.bus import Bus, publish
from services.datapath.fakepolicymaps import FakePolicyMaps, Packet, decide
from services.datapath.flowevents import Verdict
from services.datapath.policy_sync_net import StaticInterfaces
from services.datapath.policymap import Direction
from services.datapath.policyworker import PolicyConfig, PolicyWorker, durable_name
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(60)

NODE = "node-a"
NOW = datetime(2024, 1, 1, tzinfo=UTC)
TCP = 6

# name -> (namespace, ip, labels, identity, ifindex or None when on another node)
PODS: dict[str, tuple[str, str, dict[str, str], int, int | None]] = {
    "web": ("prod", "10.244.1.10", {"app": "web"}, 300, 10),
    "api": ("prod", "10.244.1.11", {"app": "api"}, 301, 11),
    "client": ("prod", "10.244.2.20", {"role": "client"}, 302, None),
    "other": ("dev", "10.244.2.21", {"role": "client"}, 303, None),
}


def ns_labels(ns: str) -> list[str]:
    return [f"k8s:io.kubernetes.pod.namespace={ns}", f"k8s:io.cilium.k8s.namespace.labels.env={ns}"]


def identity_of(identity: int, ns: str, labels: dict[str, str]) -> Identity:
    all_labels = sorted([*ns_labels(ns), *(f"k8s:{k}={v}" for k, v in labels.items())])
    return Identity(id=identity, labels=all_labels, observed_at=NOW)


def pod_obj(name: str, rv: str = "1", labels: dict[str, str] | None = None) -> dict[str, Any]:
    ns, ip, lbls, _ident, ifindex = PODS[name]
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": rv,
                     "labels": labels if labels is not None else lbls},
        "spec": {"nodeName": NODE if ifindex is not None else "node-b",
                 "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }  # fmt: skip


def policy_obj(name: str, ns: str, spec: dict[str, Any], rv: str = "1") -> dict[str, Any]:
    meta = {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": rv}
    return {"metadata": meta, "spec": spec}


async def put_k8s(bus: Bus, kind: str, obj: dict[str, Any], op: Op = Op.UPSERT) -> None:
    event = to_event(kind, op, obj, "test", NOW)
    await publish(bus.js, event.subject(), event, msg_id=event.msg_id())


async def put_identity(bus: Bus, ident: Identity) -> None:
    await publish(bus.js, ident.subject(), ident, msg_id=ident.msg_id())


async def put_ipcache(bus: Bus, name: str, identity: int) -> None:
    ns, ip, _l, _i, ifindex = PODS[name]
    node = NODE if ifindex is not None else "node-b"
    entry = IPCacheEntry(
        ip=ip, identity=identity, namespace=ns, pod_name=name, node_name=node, observed_at=NOW,
        resource_version=str(identity),
    )  # fmt: skip
    await publish(bus.js, entry.subject(), entry, msg_id=entry.msg_id())


async def seed(bus: Bus) -> None:
    for name, (ns, _ip, labels, ident, _ifx) in PODS.items():
        await put_k8s(bus, "pod", pod_obj(name))
        await put_identity(bus, identity_of(ident, ns, labels))
        await put_ipcache(bus, name, ident)


def verdict(maps: FakePolicyMaps, src: str, dst: str, port: int = 8080) -> Verdict:
    """The first packet of src -> dst:port, checked where the kernel checks it: the source's
    egress (when local) and the destination's ingress (when local)."""
    _, sip, _, _, sif = PODS[src]
    _, dip, _, _, dif = PODS[dst]
    for ifindex, direction in ((sif, Direction.EGRESS), (dif, Direction.INGRESS)):
        if ifindex is None:
            continue
        d = decide(maps.state, Packet(ifindex, direction, sip, dip, TCP, port))
        assert d is not None, f"interface {ifindex} is no endpoint"
        if d.verdict is Verdict.DROPPED:
            return Verdict.DROPPED
    return Verdict.FORWARDED


Start = Callable[..., Awaitable[tuple[PolicyWorker, asyncio.Task[None]]]]


@pytest.fixture
async def start(bus: Bus) -> AsyncIterator[Start]:
    tasks: list[asyncio.Task[None]] = []

    async def go(
        maps: FakePolicyMaps, interfaces: StaticInterfaces | None = None, **cfg: Any
    ) -> tuple[PolicyWorker, asyncio.Task[None]]:
        ifs = interfaces or StaticInterfaces(
            {ip: ifx for (_ns, ip, _l, _i, ifx) in PODS.values() if ifx is not None}
        )
        worker = PolicyWorker(PolicyConfig(NODE, **cfg), bus, maps, ifs)
        task = asyncio.create_task(worker.run())
        tasks.append(task)
        await eventually(lambda: worker.synced or task.done(), within=10)
        if task.done():
            task.result()
        return worker, task

    yield go
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


DENY_ALL_INGRESS = {"podSelector": {}, "policyTypes": ["Ingress"]}
ALLOW_PROD_CLIENTS = {
    "podSelector": {"matchLabels": {"app": "web"}},
    "policyTypes": ["Ingress"],
    "ingress": [
        {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"env": "prod"}},
                    "podSelector": {"matchLabels": {"role": "client"}},
                }
            ],
            "ports": [{"port": "http"}],
        }
    ],
}


async def test_bootstrap_live_policies_and_label_change(bus: Bus, start: Start) -> None:
    await seed(bus)
    maps = FakePolicyMaps()
    worker, _ = await start(maps)
    # unselected pods: everything passes, both local pods are endpoints with their identities
    assert {v.identity for v in maps.state.endpoints.values()} == {300, 301}
    assert verdict(maps, "client", "web") is Verdict.FORWARDED
    assert verdict(maps, "other", "api") is Verdict.FORWARDED

    await put_k8s(bus, "networkpolicy", policy_obj("deny", "prod", DENY_ALL_INGRESS))
    await eventually(lambda: verdict(maps, "client", "web") is Verdict.DROPPED)
    assert verdict(maps, "other", "api") is Verdict.DROPPED
    assert verdict(maps, "web", "client") is Verdict.FORWARDED  # egress is not selected

    await put_k8s(bus, "networkpolicy", policy_obj("web", "prod", ALLOW_PROD_CLIENTS))
    await eventually(lambda: verdict(maps, "client", "web") is Verdict.FORWARDED)
    assert verdict(maps, "client", "web", port=9090) is Verdict.DROPPED  # only named port http
    assert verdict(maps, "other", "web") is Verdict.DROPPED  # role=client, but namespace dev
    assert verdict(maps, "api", "web") is Verdict.DROPPED  # prod, but no role=client
    assert verdict(maps, "client", "api") is Verdict.DROPPED  # api is still deny-all

    # api gets role=client: a new identity (allocator) + new ipcache entry + pod labels
    await put_identity(bus, identity_of(310, "prod", {"role": "client"}))
    await put_ipcache(bus, "api", 310)
    await put_k8s(bus, "pod", pod_obj("api", rv="2", labels={"role": "client"}))
    await eventually(lambda: verdict(maps, "api", "web") is Verdict.FORWARDED)
    ep = {v.endpoint_id: v.identity for v in maps.state.endpoints.values()}
    assert sorted(ep.values()) == [300, 310]

    # deleting the deny-all policy re-opens api (not selected by the web policy)
    await put_k8s(bus, "networkpolicy", policy_obj("deny", "prod", DENY_ALL_INGRESS), Op.DELETE)
    await eventually(lambda: verdict(maps, "other", "api") is Verdict.FORWARDED)
    assert verdict(maps, "other", "web") is Verdict.DROPPED

    # every message is acked once applied
    async def nothing_pending() -> bool:
        for stream in (STREAM_K8S, STREAM_IDENTITY):
            info = await bus.js.consumer_info(stream, durable_name(NODE))
            if info.num_ack_pending or info.num_pending:
                return False
        return True

    for _ in range(100):
        if await nothing_pending():
            break
        await asyncio.sleep(0.05)
    assert await nothing_pending()
    status = NodeStatus(node=NODE, time=NOW)
    worker.extend_status(status)
    assert status.maps["policy_endpoints"].entries == 2
    assert status.maps["policy_rules"].entries == len(maps.state.policy) > 0
    assert status.applied[STREAM_IDENTITY] > 0


async def test_restart_keeps_ids_and_rewrites_nothing(bus: Bus, start: Start) -> None:
    await seed(bus)
    ipblock = {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "172.31.0.0/24", "except": ["172.31.0.1/32"]}}]}],
    }
    await put_k8s(bus, "networkpolicy", policy_obj("out", "prod", ipblock))
    maps = FakePolicyMaps()
    first, task = await start(maps)
    before = maps.dump()
    assert any(k.cidr == "172.31.0.0/24" for k in before.ipcache)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    writes = maps.writes
    second, _ = await start(maps)
    assert maps.dump() == before and maps.writes == writes
    assert second.ids.assignments == first.ids.assignments


async def test_late_interface_bad_messages_and_metrics(bus: Bus, start: Start) -> None:
    await seed(bus)
    await put_k8s(bus, "networkpolicy", policy_obj("deny", "prod", DENY_ALL_INGRESS))
    interfaces = StaticInterfaces({"10.244.1.10": 10})  # api's veth is not there yet
    maps = FakePolicyMaps()
    bad_before = REGISTRY.get_sample_value(
        "weir_policy_bad_messages_total", {"stream": STREAM_IDENTITY}
    )
    worker, _ = await start(maps, interfaces, retry_interval=0.05)
    assert [v.identity for v in maps.state.endpoints.values()] == [300]
    assert any("prod/api" in i and "interface" in i for i in worker.issues)
    assert interfaces.attached == [10]
    # garbage on an identity subject: skipped, counted, the loop goes on
    await bus.js.publish("weir.v1.identity.999", b'{"id": "nope"}')
    interfaces.table["10.244.1.11"] = 11  # the veth shows up: the retry timer picks it up
    await eventually(lambda: len(maps.state.endpoints) == 2)
    assert sorted(interfaces.attached) == [10, 11]
    assert verdict(maps, "client", "api") is Verdict.DROPPED
    await eventually(lambda: not worker.issues)
    bad_after = REGISTRY.get_sample_value(
        "weir_policy_bad_messages_total", {"stream": STREAM_IDENTITY}
    )
    assert (bad_after or 0) == (bad_before or 0) + 1
    assert REGISTRY.get_sample_value("weir_policy_entries", {"map": "policy_endpoints"}) == 2
    # the pod goes away: its endpoint and ipcache entry go, its id is not reused at once
    old_ids = set(worker.ids.assignments.values())
    _, ip, *_ = PODS["api"]
    await put_k8s(bus, "pod", pod_obj("api", rv="3"), Op.DELETE)
    entry = IPCacheEntry(ip=ip, op=Op.DELETE, observed_at=NOW)
    await publish(bus.js, entry.subject(), entry, msg_id=entry.msg_id())
    del interfaces.table[ip]
    await eventually(lambda: len(maps.state.endpoints) == 1)
    assert not any(k.cidr == f"{ip}/32" for k in maps.state.ipcache)
    assert set(worker.ids.assignments.values()) < old_ids
