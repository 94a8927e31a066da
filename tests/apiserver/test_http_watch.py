"""Watch through kubernetes-asyncio: event order, resume, bookmarks, 410 after compaction."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import watch
from kubernetes_asyncio.client import ApiException

from services.apiserver.server import ApiServerConfig
from tests.apiserver.conftest import Kube, running_kube


def svc(name: str, port: int = 80) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": port}]}}


async def collect(stream: Any, n: int, within: float = 5.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    async def run() -> None:
        async for ev in stream:
            out.append(ev)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), within)
    return out


async def test_watch_sees_added_modified_deleted_in_order(kube: Kube) -> None:
    lst = await kube.core.list_namespaced_service("default")
    w = watch.Watch()
    stream = w.stream(
        kube.core.list_namespaced_service,
        "default",
        resource_version=lst.metadata.resource_version,
        timeout_seconds=10,
    )
    task = asyncio.create_task(collect(stream, 3))
    await asyncio.sleep(0.1)
    await kube.core.create_namespaced_service("default", svc("web"))
    await kube.core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"a": "b"}}})
    await kube.core.delete_namespaced_service("web", "default")
    events = await task
    w.stop()
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[1]["object"].metadata.labels == {"a": "b"}
    rvs = [int(e["object"].metadata.resource_version) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


async def test_watch_resumes_from_resource_version(kube: Kube) -> None:
    first = await kube.core.create_namespaced_service("default", svc("a"))
    await kube.core.create_namespaced_service("default", svc("b"))
    await kube.core.create_namespaced_service("default", svc("c"))
    w = watch.Watch()
    stream = w.stream(
        kube.core.list_service_for_all_namespaces,
        resource_version=first.metadata.resource_version,
        timeout_seconds=5,
    )
    events = await collect(stream, 2)
    w.stop()
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "b"),
        ("ADDED", "c"),
    ]


async def test_watch_without_resource_version_sends_current_state(kube: Kube) -> None:
    await kube.core.create_namespaced_service("default", svc("a"))
    w = watch.Watch()
    stream = w.stream(kube.core.list_namespace, timeout_seconds=5)
    events = await collect(stream, 2)
    w.stop()
    assert sorted(e["object"].metadata.name for e in events) == ["default", "kube-system"]


async def test_bookmarks(kube: Kube) -> None:
    lst = await kube.core.list_namespaced_pod("default")
    w = watch.Watch()
    stream = w.stream(
        kube.core.list_namespaced_pod,
        "default",
        resource_version=lst.metadata.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    await kube.core.create_namespaced_service("default", svc("other"))  # bumps the global rv
    events = await collect(stream, 1)
    w.stop()
    bm = events[0]
    assert bm["type"] == "BOOKMARK"
    assert bm["raw_object"] == {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(kube.server.store.rv)},
    }


async def test_watch_after_compaction_is_410(kube: Kube) -> None:
    old = await kube.core.create_namespaced_service("default", svc("a"))
    await kube.core.create_namespaced_service("default", svc("b"))
    async with aiohttp.ClientSession() as http, http.post(f"{kube.server.url}/weir/compact") as r:
        assert r.status == 200
    w = watch.Watch()
    stream = w.stream(
        kube.core.list_namespaced_service,
        "default",
        resource_version=old.metadata.resource_version,
        timeout_seconds=5,
    )
    with pytest.raises(ApiException) as exc:
        await collect(stream, 1)
    assert exc.value.status == 410
    assert "Expired" in str(exc.value.reason)
    # list and get with the too-old resourceVersion are 410 as well
    with pytest.raises(ApiException) as exc:
        await kube.core.list_namespaced_service(
            "default", resource_version=old.metadata.resource_version
        )
    assert exc.value.status == 410
    # a fresh list gives a resourceVersion that can be watched again
    fresh = await kube.core.list_namespaced_service("default")
    stream = watch.Watch().stream(
        kube.core.list_namespaced_service,
        "default",
        resource_version=fresh.metadata.resource_version,
        timeout_seconds=5,
    )
    task = asyncio.create_task(collect(stream, 1))
    await asyncio.sleep(0.1)
    await kube.core.delete_namespaced_service("a", "default")
    events = await task
    assert events[0]["type"] == "DELETED"


async def test_label_selector_watch_turns_modifications_into_add_and_delete(kube: Kube) -> None:
    lst = await kube.core.list_namespaced_service("default")
    await kube.core.create_namespaced_service("default", svc("x"))
    stream = watch.Watch().stream(
        kube.core.list_namespaced_service,
        "default",
        label_selector="tier=fe",
        resource_version=lst.metadata.resource_version,
        timeout_seconds=5,
    )
    task = asyncio.create_task(collect(stream, 2))
    await asyncio.sleep(0.1)
    await kube.core.patch_namespaced_service(
        "x", "default", {"metadata": {"labels": {"tier": "fe"}}}
    )
    await kube.core.patch_namespaced_service(
        "x", "default", {"metadata": {"labels": {"tier": None}}}
    )
    events = await task
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]


async def test_watch_timeout_ends_stream(kube: Kube) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    stream = watch.Watch().stream(kube.core.list_namespaced_pod, "default", timeout_seconds=1)
    events = [ev async for ev in stream]
    assert events == []
    assert 0.8 < loop.time() - start < 3
    assert kube.server.store.open_watches == 0


async def test_stop_ends_open_watches_promptly(kube: Kube) -> None:
    stream = watch.Watch().stream(kube.core.list_namespaced_pod, "default", timeout_seconds=60)
    task = asyncio.create_task(collect(stream, 10, within=10))
    await asyncio.sleep(0.2)
    assert kube.server.store.open_watches == 1
    loop = asyncio.get_running_loop()
    start = loop.time()
    await kube.server.stop()
    assert loop.time() - start < 1.5
    assert kube.server.store.open_watches == 0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def test_retain_events_window_expires_old_resource_versions(tmp_path: Path) -> None:
    cfg = ApiServerConfig(port=0, kubeconfig_out=tmp_path / "kc", retain_events=2)
    async with running_kube(cfg) as k:
        first = await k.core.create_namespaced_service("default", svc("a"))
        for name in ("b", "c", "d"):
            await k.core.create_namespaced_service("default", svc(name))
        stream = watch.Watch().stream(
            k.core.list_namespaced_service,
            "default",
            resource_version=first.metadata.resource_version,
            timeout_seconds=5,
        )
        with pytest.raises(ApiException) as exc:
            await collect(stream, 1)
        assert exc.value.status == 410
