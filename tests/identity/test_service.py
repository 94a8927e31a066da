"""End to end on a REAL nats-server: K8sEvents in, Identity and IPCache messages out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import subjects as s
from contracts.v1 import Identity, IPCacheEntry, K8sEvent, Namespace, Op, Pod
from services.common.bus import Bus, publish
from services.identity import metrics
from services.identity.allocator import Allocator
from services.identity.kv import NatsKV
from services.identity.service import IdentityService, ServiceConfig

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def pod_event(
    name: str,
    rv: int,
    *,
    labels: dict[str, str],
    ips: list[str] | None = None,
    op: Op = Op.UPSERT,
    ns: str = "shop",
) -> K8sEvent:
    obj = Pod(ips=ips or [], node_name="node-1", labels=labels) if op is Op.UPSERT else None
    return K8sEvent(
        kind="pod",
        op=op,
        namespace=ns,
        name=name,
        uid=f"uid-{name}",
        resource_version=str(rv),
        observed_at=NOW,
        producer="test",
        object=obj,
    )


def ns_event(name: str, rv: int, labels: dict[str, str]) -> K8sEvent:
    return K8sEvent(
        kind="namespace",
        op=Op.UPSERT,
        namespace=None,
        name=name,
        uid=f"uid-{name}",
        resource_version=str(rv),
        observed_at=NOW,
        producer="test",
        object=Namespace(labels=labels),
    )


async def send(bus: Bus, event: K8sEvent) -> None:
    await publish(bus.js, event.subject(), event, msg_id=event.msg_id())


async def last(bus: Bus, subject: str) -> Any:
    with contextlib.suppress(NotFoundError):
        return await bus.js.get_last_msg(s.STREAM_IDENTITY, subject)
    return None


async def wait_for(cond: Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await cond()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not met within {within}s")
        await asyncio.sleep(0.02)


def trace_id(headers: dict[str, str]) -> str:
    return headers["traceparent"].split("-")[1]


async def ipcache(bus: Bus, ip: str) -> IPCacheEntry | None:
    raw = await last(bus, s.ipcache_subject(ip))
    return IPCacheEntry.model_validate_json(raw.data) if raw else None


@pytest.fixture
async def make_service(bus: Bus) -> AsyncIterator[Callable[..., Awaitable[IdentityService]]]:
    tasks: list[asyncio.Task[None]] = []

    async def start(**config: Any) -> IdentityService:
        grace = config.pop("gc_grace", 30.0)
        allocator = Allocator(await NatsKV.open(bus.js), instance="t1", gc_grace=grace)
        service = IdentityService(bus, allocator, ServiceConfig(instance="t1", **config))
        await service.bootstrap()
        tasks.append(asyncio.create_task(service.run()))
        return service

    yield start
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def test_events_to_identity_and_ipcache(
    bus: Bus,
    make_service: Callable[..., Awaitable[IdentityService]],
    span_exporter: InMemorySpanExporter,
) -> None:
    await send(bus, ns_event("shop", 1, {"team": "a"}))
    await send(
        bus,
        pod_event("web-1", 2, labels={"app": "web", "pod-template-hash": "x"}, ips=["10.0.0.5"]),
    )
    service = await make_service()  # bootstraps ns + web-1, then consumes what follows
    assert service.ready
    web1 = await wait_for(lambda: ipcache(bus, "10.0.0.5"))
    assert web1.identity is not None and web1.identity >= 256
    assert (web1.namespace, web1.pod_name, web1.node_name) == ("shop", "web-1", "node-1")
    raw_id = await last(bus, s.identity_subject(web1.identity))
    ident = Identity.model_validate_json(raw_id.data)
    assert ident.labels == [
        "k8s:app=web",
        "k8s:io.cilium.k8s.namespace.labels.team=a",
        "k8s:io.cilium.k8s.policy.serviceaccount=default",
        "k8s:io.kubernetes.pod.namespace=shop",
    ]
    assert raw_id.headers["Nats-Msg-Id"].startswith(f"identity/{web1.identity}/")

    # consumed (not bootstrapped): same labels -> same identity; trace continues from the event
    await send(bus, pod_event("web-2", 3, labels={"app": "web"}, ips=["10.0.0.6"]))
    await send(bus, pod_event("no-ip", 4, labels={"app": "web"}))
    web2 = await wait_for(lambda: ipcache(bus, "10.0.0.6"))
    assert web2.identity == web1.identity
    k8s_raw = await bus.js.get_last_msg(s.STREAM_K8S, s.k8s_subject("pod", "shop", "web-2"))
    ip_raw = await last(bus, s.ipcache_subject("10.0.0.6"))
    assert ip_raw.headers is not None and k8s_raw.headers is not None
    assert trace_id(ip_raw.headers) == trace_id(k8s_raw.headers)
    assert ip_raw.headers["traceparent"] != k8s_raw.headers["traceparent"]  # a child span
    spans = {sp.context.span_id: sp for sp in span_exporter.get_finished_spans()}
    ip_span = int(ip_raw.headers["traceparent"].split("-")[2], 16)
    consumer = spans[spans[ip_span].parent.span_id]  # type: ignore[union-attr]
    assert consumer.name == "process weir.v1.k8s.pod.*.*"
    await wait_for(lambda: _true(service.allocator.identity_of("shop/no-ip") is not None))
    assert service.allocator.identity_of("shop/no-ip") == web1.identity

    # only high-churn labels change: same identity, nothing republished for the IP
    seq_before = (await last(bus, s.ipcache_subject("10.0.0.5"))).seq
    await send(
        bus,
        pod_event("web-1", 5, labels={"app": "web", "pod-template-hash": "y"}, ips=["10.0.0.5"]),
    )
    await send(bus, pod_event("marker", 6, labels={"app": "m"}, ips=["10.0.0.99"]))
    await wait_for(lambda: ipcache(bus, "10.0.0.99"))
    assert service.allocator.identity_of("shop/web-1") == web1.identity
    assert (await last(bus, s.ipcache_subject("10.0.0.5"))).seq == seq_before

    # namespace label change re-identifies every pod in it
    await send(bus, ns_event("shop", 7, {"team": "b"}))
    moved = await wait_for(lambda: _changed(ipcache(bus, "10.0.0.5"), web1.identity), within=10)
    assert (
        await wait_for(lambda: _changed(ipcache(bus, "10.0.0.6"), web1.identity))
    ).identity == moved.identity
    assert service.allocator.identity_of("shop/no-ip") == moved.identity

    # IP change -> tombstone for the old IP; pod delete -> tombstone
    await send(bus, pod_event("web-2", 8, labels={"app": "web"}, ips=["10.0.0.7"]))
    assert (await wait_for(lambda: ipcache(bus, "10.0.0.7"))).identity == moved.identity
    gone = await wait_for(lambda: _op(ipcache(bus, "10.0.0.6"), Op.DELETE))
    assert gone.pod_name == "web-2" and gone.identity is None
    await send(bus, pod_event("web-1", 9, labels={}, op=Op.DELETE))
    await wait_for(lambda: _op(ipcache(bus, "10.0.0.5"), Op.DELETE))


async def test_oversized_labels_rejected_and_processing_continues(
    bus: Bus, make_service: Callable[..., Awaitable[IdentityService]]
) -> None:
    service = await make_service(max_labels=6)
    before = metrics.REJECTED.labels("labels")._value.get()
    big = {f"l{i}": "v" for i in range(8)}
    await send(bus, pod_event("big", 1, labels=big, ips=["10.0.1.1"]))
    await send(bus, pod_event("ok", 2, labels={"app": "ok"}, ips=["10.0.1.2"]))
    assert (await wait_for(lambda: ipcache(bus, "10.0.1.2"))).identity is not None
    assert await ipcache(bus, "10.0.1.1") is None
    assert service.allocator.identity_of("shop/big") is None
    assert metrics.REJECTED.labels("labels")._value.get() == before + 1


async def test_gc_after_grace_publishes_identity_delete(
    bus: Bus, make_service: Callable[..., Awaitable[IdentityService]]
) -> None:
    await send(bus, pod_event("a", 1, labels={"app": "a"}, ips=["10.0.2.1"]))
    first = await make_service(gc_grace=0.2, gc_interval=0.05)
    ident = (await wait_for(lambda: ipcache(bus, "10.0.2.1"))).identity
    assert ident is not None
    await send(bus, pod_event("a", 2, labels={}, op=Op.DELETE))
    await wait_for(lambda: _op(ipcache(bus, "10.0.2.1"), Op.DELETE))
    deleted = await wait_for(lambda: _op(_identity(bus, ident), Op.DELETE), within=5)
    assert deleted.id == ident
    assert first.allocator.known().get(ident) is None


async def _identity(bus: Bus, ident: int) -> Identity | None:
    raw = await last(bus, s.identity_subject(ident))
    return Identity.model_validate_json(raw.data) if raw else None


async def _true(value: bool) -> bool:
    return value


async def _changed(entry: Awaitable[IPCacheEntry | None], old: int) -> IPCacheEntry | None:
    e = await entry
    return e if e is not None and e.identity not in (None, old) else None


async def _op(entry: Awaitable[Any], op: Op) -> Any:
    e = await entry
    return e if e is not None and e.op is op else None


async def test_service_restart_keeps_identities_and_resumes(bus: Bus) -> None:
    async def run_once(events: list[K8sEvent], wait_ip: str) -> IPCacheEntry:
        allocator = Allocator(await NatsKV.open(bus.js), instance="r1")
        service = IdentityService(bus, allocator, ServiceConfig(instance="r1"))
        await service.bootstrap()
        task = asyncio.create_task(service.run())
        try:
            for e in events:
                await send(bus, e)
            result: IPCacheEntry = await wait_for(lambda: ipcache(bus, wait_ip))
            return result
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    first = await run_once([pod_event("a", 1, labels={"app": "a"}, ips=["10.0.3.1"])], "10.0.3.1")
    # while no allocator runs: pod a is deleted, pod b (same labels) appears
    await send(bus, pod_event("a", 2, labels={}, op=Op.DELETE))
    await send(bus, pod_event("b", 3, labels={"app": "a"}, ips=["10.0.3.2"]))
    second = await run_once([], "10.0.3.2")
    assert second.identity == first.identity  # identity stable across the restart
    gone = await ipcache(bus, "10.0.3.1")
    assert gone is not None and gone.op is Op.DELETE
