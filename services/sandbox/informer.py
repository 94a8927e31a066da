"""A small list+watch cache over kubernetes-asyncio, for the sandbox's own controllers.

The sandbox plays kube-controller-manager (EndpointSlices) and the kubelet (pods) against the API
stand-in, through kubernetes-asyncio exactly as a controller would against a real cluster. Each
controller needs "the current objects of a kind, and a nudge when they change"; this is that and
nothing more: raw dicts (the ``raw_object`` of watch events), relist on 410 Gone or any error,
bookmarks to keep the resourceVersion fresh. The watcher service has its own, richer loop (diffing
against what it published); the two share only kubernetes-asyncio.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace or "", name)
OnChange = Callable[[str, dict[str, Any]], Awaitable[None] | None]


class Informer:
    """Keeps ``objects`` equal to the API's current objects of one kind."""

    def __init__(
        self, kind: str, list_fn: Callable[..., Awaitable[Any]], on_change: OnChange
    ) -> None:
        self.kind = kind
        self._list_fn = list_fn
        self._on_change = on_change
        self.objects: dict[Key, dict[str, Any]] = {}
        self.synced = asyncio.Event()

    @staticmethod
    def key(obj: dict[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return (meta.get("namespace") or "", meta.get("name") or "")

    async def _notify(self, event_type: str, obj: dict[str, Any]) -> None:
        result = self._on_change(event_type, obj)
        if result is not None:
            await result

    async def _relist(self) -> str:
        resp = await self._list_fn(_preload_content=False)
        body = json.loads(await resp.read())
        fresh = {self.key(o): o for o in body.get("items") or []}
        for key, old in list(self.objects.items()):
            if key not in fresh:
                del self.objects[key]
                await self._notify("DELETED", old)
        for key, obj in fresh.items():
            if self.objects.get(key) != obj:
                self.objects[key] = obj
                await self._notify("MODIFIED", obj)
        self.synced.set()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                rv = await self._relist()
                while True:
                    w = watch.Watch()
                    async with w.stream(
                        self._list_fn,
                        resource_version=rv,
                        allow_watch_bookmarks=True,
                        timeout_seconds=60,
                    ) as stream:
                        async for event in stream:
                            obj = event["raw_object"]
                            rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                            if event["type"] == "BOOKMARK":
                                continue
                            if event["type"] == "DELETED":
                                self.objects.pop(self.key(obj), None)
                            else:
                                self.objects[self.key(obj)] = obj
                            await self._notify(event["type"], obj)
                    backoff = 0.1
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                level = logging.DEBUG if exc.status == 410 else logging.WARNING
                log.log(level, "%s watch ended (%s); relisting", self.kind, exc.status)
            except Exception as exc:
                log.warning("%s watch failed: %s; relisting in %.1fs", self.kind, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
