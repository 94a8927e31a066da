"""The sandbox's kubelet (and scheduler): Pods in the API become processes in pod namespaces.

Shape: one :class:`Informer` over all pods only marks keys dirty; one loop reconciles each dirty
key level-triggered (compare the API object with what runs locally, act, then write the status
if its summary differs). Level-triggering makes every failure retryable by the next event and
keeps the loop the only writer. Decisions are the pure functions of ``podspec``; the machine
side is a :class:`PodRuntime` (the real sandbox, or a fake in tests).

* a pod without ``spec.nodeName`` is scheduled onto the node with the fewest pods, written with
  a plain replace (the stand-in has no binding subresource) guarded by resourceVersion; nodes
  this kubelet assigned but the informer has not yet seen count too, so a burst of pods spreads;
* a pod on one of our nodes is started (ports + command, or the echo server) and reported
  Running + Ready with podIP and hostIP; when its process exits it becomes Succeeded/Failed;
  a spec we cannot run becomes Failed with a message naming the field;
* a deleted pod (or one replaced under the same name, seen as a new uid) is stopped.

Node objects are created (or replaced) at start, before any pod is handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client  # responses are read raw: models reject valid objects
from kubernetes_asyncio.client.exceptions import ApiException

from services.sandbox import podspec as ps
from services.sandbox.informer import Informer
from services.sandbox.podruntime import NodeInfo, PodRuntime

log = logging.getLogger(__name__)


@dataclass
class LocalPod:
    uid: str
    node: str
    ip: str = ""
    pid: int = 0
    started: str = ""
    exit_code: int | None = None
    failure: tuple[str, str] | None = None  # (reason, message) when it could not start
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)


class Kubelet:
    def __init__(
        self,
        api: client.ApiClient,
        runtime: PodRuntime,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self.runtime = runtime
        self.nodes: dict[str, NodeInfo] = {n.name: n for n in runtime.nodes()}
        self.local: dict[str, LocalPod] = {}
        self._assigned: dict[str, str] = {}  # key -> node we wrote, until the informer sees it
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._on_change = on_change or (lambda: None)
        self.pods = Informer("pod", self._core.list_pod_for_all_namespaces, self._mark)
        self.nodes_registered = asyncio.Event()

    def _mark(self, _event: str, obj: dict[str, Any]) -> None:
        self._dirty.add(ps.pod_key(obj))
        self._wake.set()

    def _retry(self, key: str) -> None:
        self._dirty.add(key)
        self._wake.set()

    # -- nodes -------------------------------------------------------------------------------

    async def register_nodes(self) -> None:
        for info in self.nodes.values():
            body: Any = ps.node_object(info.name, info.ip, info.pod_cidr)
            try:
                await self._core.create_node(body, _preload_content=False)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                resp: Any = await self._core.read_node(info.name, _preload_content=False)
                current = json.loads(await resp.read())
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                await self._core.replace_node(info.name, body, _preload_content=False)
        self.nodes_registered.set()

    # -- loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.register_nodes()
        informer = asyncio.create_task(self.pods.run())
        try:
            await self.pods.synced.wait()
            while True:
                await self._wake.wait()
                self._wake.clear()
                dirty, self._dirty = self._dirty, set()
                for key in sorted(dirty):
                    try:
                        await self.reconcile(key)
                    except ApiException as exc:
                        log.warning("pod %s: API %s %s; retrying", key, exc.status, exc.reason)
                        self._retry(key)
                        await asyncio.sleep(0.2)
                    except Exception:
                        log.exception("pod %s: reconcile failed; retrying", key)
                        self._retry(key)
                        await asyncio.sleep(0.5)
                self._on_change()
        finally:
            informer.cancel()
            waiters = [p.waiter for p in self.local.values() if p.waiter is not None]
            for task in (informer, *waiters):
                task.cancel()
            await asyncio.gather(informer, *waiters, return_exceptions=True)

    async def reconcile(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        obj = self.pods.objects.get((namespace, name))
        local = self.local.get(key)
        if local is not None and (obj is None or ps.pod_uid(obj) != local.uid):
            await self._stop(key, local)
            local = None
        if obj is None:
            self._assigned.pop(key, None)
            return
        node = ps.pod_node(obj) or self._assigned.get(key, "")
        if not ps.pod_node(obj):
            if not node and ps.pod_phase(obj) not in ps.TERMINAL_PHASES:
                await self._schedule(obj)
            return
        self._assigned.pop(key, None)
        if node not in self.nodes:
            return
        if local is None:
            if ps.pod_phase(obj) in ps.TERMINAL_PHASES:
                return  # finished before we knew it; nothing to run
            local = await self._start(obj, node)
        await self._report(obj, local)

    async def _schedule(self, obj: dict[str, Any]) -> None:
        key = ps.pod_key(obj)
        pods = []
        for pod in self.pods.objects.values():
            k = ps.pod_key(pod)
            if k in self._assigned and not ps.pod_node(pod):
                spec = {**(pod.get("spec") or {}), "nodeName": self._assigned[k]}
                pods.append({**pod, "spec": spec})
            else:
                pods.append(pod)
        node = ps.choose_node(list(self.nodes), pods)
        body: Any = copy.deepcopy(obj)
        body.setdefault("spec", {})["nodeName"] = node
        meta = obj["metadata"]
        try:
            await self._core.replace_namespaced_pod(
                meta["name"], meta["namespace"], body, _preload_content=False
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return  # gone or changed meanwhile: the informer brings the new version
            raise
        self._assigned[key] = node
        log.info("scheduled pod %s onto %s", key, node)

    async def _start(self, obj: dict[str, Any], node: str) -> LocalPod:
        key = ps.pod_key(obj)
        namespace, _, name = key.partition("/")
        local = LocalPod(uid=ps.pod_uid(obj), node=node)
        self.local[key] = local
        try:
            workload = ps.pod_workload(obj)
            started = await self.runtime.start(namespace, name, node, workload)
        except ps.PodSpecError as exc:
            log.warning("%s", exc)
            local.failure = ("InvalidSpec", str(exc))
            return local
        except Exception as exc:
            log.warning("pod %s: cannot start on %s: %s", key, node, exc)
            local.failure = ("StartError", f"pod {key}: {exc}")
            return local
        local.ip, local.pid, local.started = started.ip, started.pid, ps.now()
        local.waiter = asyncio.create_task(self._wait_exit(key, local))
        log.info("started pod %s on %s: ip %s pid %d", key, node, local.ip, local.pid)
        return local

    async def _wait_exit(self, key: str, local: LocalPod) -> None:
        code = await self.runtime.wait_exit(key, local.pid)
        local.exit_code = code
        log.info("pod %s: process %d exited with %d", key, local.pid, code)
        self._dirty.add(key)
        self._wake.set()

    async def _stop(self, key: str, local: LocalPod) -> None:
        if local.waiter is not None:
            local.waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await local.waiter
        await self.runtime.stop(key)
        self.local.pop(key, None)
        log.info("stopped pod %s", key)

    def desired_status(self, obj: dict[str, Any], local: LocalPod) -> dict[str, Any]:
        host_ip = self.nodes[local.node].ip
        if local.failure is not None:
            return ps.failed_status(*local.failure, host_ip=host_ip)
        if local.exit_code is not None:
            return ps.exited_status(obj, local.ip, host_ip, local.started, local.exit_code)
        return ps.running_status(obj, local.ip, host_ip, local.started)

    async def _report(self, obj: dict[str, Any], local: LocalPod) -> None:
        status = self.desired_status(obj, local)
        if ps.status_summary(status) == ps.status_summary(obj.get("status")):
            return
        body: Any = copy.deepcopy(obj)
        body["status"] = status
        body["metadata"].pop("resourceVersion", None)  # the kubelet owns status: last write wins
        meta = obj["metadata"]
        try:
            await self._core.replace_namespaced_pod_status(
                meta["name"], meta["namespace"], body, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return  # deleted meanwhile; the DELETED event stops it
            raise

    # -- views -------------------------------------------------------------------------------

    def pod_rows(self) -> list[dict[str, Any]]:
        """Every pod the API knows, as status.json lists them."""
        rows = []
        for (namespace, name), obj in sorted(self.pods.objects.items()):
            status = obj.get("status") or {}
            rows.append(
                {
                    "namespace": namespace,
                    "name": name,
                    "node": ps.pod_node(obj),
                    "ip": status.get("podIP") or "",
                    "phase": status.get("phase") or "",
                    "ready": ps.is_ready(status),
                }
            )
        return rows

    def not_ready_pods(self) -> list[str]:
        """Pods that are neither Running+Ready nor finished (what readiness waits for)."""
        out = []
        for obj in self.pods.objects.values():
            status = obj.get("status") or {}
            phase = status.get("phase") or ""
            if phase == "Succeeded" or (phase == "Running" and ps.is_ready(status)):
                continue
            out.append(ps.pod_key(obj))
        return sorted(out)
