"""The sandbox's EndpointSlice controller: keeps slices in the API equal to desired_slices().

Event handlers only mark a namespace dirty; one loop recomputes the dirty namespaces' slices and
writes the difference (create / replace / delete) through kubernetes-asyncio, like the upstream
controller. A failed write leaves the namespace dirty so the next pass retries it: errors are the
loop's business, never the informers'.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from services.sandbox.endpointslices import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    desired_slices,
    slice_content,
)
from services.sandbox.informer import Informer

log = logging.getLogger(__name__)


class EndpointSliceController:
    def __init__(self, api: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api)
        self._discovery = client.DiscoveryV1Api(api)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.services = Informer("service", self._core.list_service_for_all_namespaces, self._mark)
        self.pods = Informer("pod", self._core.list_pod_for_all_namespaces, self._mark)
        self.slices = Informer(
            "endpointslice", self._discovery.list_endpoint_slice_for_all_namespaces, self._mark
        )

    def _mark(self, _event: str, obj: dict[str, Any]) -> None:
        self._dirty.add((obj.get("metadata") or {}).get("namespace") or "")
        self._wake.set()

    async def run(self) -> None:
        tasks = [asyncio.create_task(i.run()) for i in (self.services, self.pods, self.slices)]
        try:
            await asyncio.gather(
                *(i.synced.wait() for i in (self.services, self.pods, self.slices))
            )
            while True:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(0.005)  # coalesce a burst of events into one pass
                dirty, self._dirty = self._dirty, set()
                for namespace in sorted(dirty):
                    try:
                        await self.reconcile_namespace(namespace)
                    except ApiException as exc:
                        log.warning(
                            "endpointslices in %s: %s %s", namespace, exc.status, exc.reason
                        )
                        self._dirty.add(namespace)
                        self._wake.set()
                        await asyncio.sleep(0.2)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile_namespace(self, namespace: str) -> None:
        pods = [p for (ns, _), p in self.pods.objects.items() if ns == namespace]
        desired: dict[str, dict[str, Any]] = {}
        for (ns, _), svc in self.services.objects.items():
            if ns == namespace:
                for s in desired_slices(svc, pods):
                    desired[s["metadata"]["name"]] = s
        existing = {
            name: obj
            for (ns, name), obj in self.slices.objects.items()
            if ns == namespace
            and ((obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL)
            == MANAGED_BY
        }
        for name, want in desired.items():
            have = existing.get(name)
            if have is None:
                # raw dicts serialise as-is; the typed models would only add a round trip
                body: Any = want
                await self._discovery.create_namespaced_endpoint_slice(namespace, body)
            elif slice_content(have) != slice_content(want):
                want["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"]
                body = want
                await self._discovery.replace_namespaced_endpoint_slice(name, namespace, body)
        for name, have in existing.items():
            if name not in desired:
                try:
                    await self._discovery.delete_namespaced_endpoint_slice(name, namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                svc = have["metadata"]["labels"].get(SERVICE_NAME_LABEL)
                log.debug("deleted endpointslice %s/%s of %s", namespace, name, svc)
