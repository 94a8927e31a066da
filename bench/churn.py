"""Steady churn against the API stand-in, and a poller that sees each change land in every node.

A change is registered with the :class:`Poller` *before* its API write starts (t0), with a
predicate the poller can check cheaply in each node's pinned maps (bench/mapprobe.py):

* ``endpoints``: a Service's EndpointSlice is replaced by one holding a never-used backend IP;
  landed when that IP is behind the Service's VIP;
* ``create``: a new Service (explicit, fresh ClusterIP) and its EndpointSlice with a fresh IP;
  landed when the IP is behind the new VIP (so it covers two API writes);
* ``delete``: a Service created earlier is deleted (then its slice); landed when its VIP's
  master slot is gone.

The poller runs in its own thread and sleeps between sweeps, so it costs little CPU next to the
workers it is timing; its resolution (the sweep interval) is part of the reported latency.
Writes happen at a fixed schedule (open loop): a slow pipeline does not slow the churn down.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench import objects as o
from bench.mapprobe import MapProbe

CREATED_BASE = 500_000  # index offset of VIPs for services created during churn


@dataclass
class Change:
    kind: str  # endpoints | create | delete
    service: str
    vip: str
    ip: str  # the fresh backend ip ("" for delete)
    t0: float = 0.0
    api_s: float = 0.0
    seen: dict[str, float] = field(default_factory=dict)  # node -> perf_counter when landed
    error: str = ""

    def landed(self, probe: MapProbe) -> bool:
        if self.kind == "delete":
            return not probe.has_frontend(self.vip, o.SERVICE_PORT)
        return probe.has_backend(self.vip, o.SERVICE_PORT, self.ip)

    def latency_all(self, nodes: int) -> float | None:
        """Seconds from the API write to the change being in every node's maps."""
        if len(self.seen) < nodes or self.error:
            return None
        return max(self.seen.values()) - self.t0


class Poller(threading.Thread):
    def __init__(self, probes: Mapping[str, MapProbe], interval: float = 0.0005) -> None:
        super().__init__(name="map-poller", daemon=True)
        self.probes = dict(probes)
        self.interval = interval
        self._pending: list[Change] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.failure: BaseException | None = None

    def add(self, change: Change) -> None:
        change.t0 = time.perf_counter()
        with self._lock:
            self._pending.append(change)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def drop_pending(self) -> list[Change]:
        with self._lock:
            left, self._pending = self._pending, []
        return left

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                with self._lock:
                    pending = list(self._pending)
                finished: list[Change] = []
                for change in pending:
                    for node, probe in self.probes.items():
                        if node not in change.seen and change.landed(probe):
                            change.seen[node] = time.perf_counter()
                    if len(change.seen) == len(self.probes) or change.error:
                        finished.append(change)
                if finished:
                    with self._lock:
                        self._pending = [c for c in self._pending if c not in finished]
                time.sleep(self.interval)
        except BaseException as exc:  # surfaced by the driver; a dead poller must not hang it
            self.failure = exc


class ChurnState:
    """What the churn has done so far: which Services exist beyond the loaded ones (pure)."""

    def __init__(self, services: int, per_service: int, seed: int = 6) -> None:
        self.services = services
        self.per_service = per_service
        self.rng = random.Random(seed)
        self.created: list[tuple[str, str]] = []  # (name, vip) created by the churn
        self._next_created = 0
        self._next_ip = 0

    def fresh_ip(self) -> str:
        self._next_ip += 1
        return o.fresh_ip(self._next_ip)

    def next_change(self, delete_share: float = 0.1, create_share: float = 0.1) -> Change:
        r = self.rng.random()
        if r < delete_share and self.created:
            name, vip = self.created.pop(self.rng.randrange(len(self.created)))
            return Change("delete", name, vip, "")
        if r < delete_share + create_share:
            k = self._next_created
            self._next_created += 1
            name, vip = f"churn-{k}", o.vip(CREATED_BASE + k)
            self.created.append((name, vip))
            return Change("create", name, vip, self.fresh_ip())
        i = self.rng.randrange(self.services)
        return Change("endpoints", o.service_name(i), o.vip(i), self.fresh_ip())

    def slice_ips(self, change: Change) -> list[str]:
        """The endpoint addresses a change writes (the first loaded backend stays)."""
        if change.kind == "endpoints":
            i = int(change.service.split("-", 1)[1])
            return [o.backend_ip(i, 0, self.per_service), change.ip]
        return [change.ip]


class KubeWriter:
    """The changes as kubernetes-asyncio calls against the stand-in."""

    def __init__(self, core: Any, discovery: Any) -> None:
        self.core = core
        self.discovery = discovery

    async def apply(self, change: Change, ips: list[str]) -> None:
        ns = o.NAMESPACE
        if change.kind == "endpoints":
            body = o.endpoint_slice(change.service, ips)
            await self.discovery.replace_namespaced_endpoint_slice(
                o.slice_name(change.service), ns, body
            )
        elif change.kind == "create":
            await self.core.create_namespaced_service(ns, o.service(change.service, change.vip))
            await self.discovery.create_namespaced_endpoint_slice(
                ns, o.endpoint_slice(change.service, ips)
            )
        else:
            await self.core.delete_namespaced_service(change.service, ns)
            await self.discovery.delete_namespaced_endpoint_slice(o.slice_name(change.service), ns)


async def run_churn(
    writer: KubeWriter,
    poller: Poller,
    state: ChurnState,
    *,
    rate: float,
    count: int,
    settle: float = 10.0,
    on_change: Callable[[Change], None] | None = None,
) -> tuple[list[Change], float]:
    """``count`` changes at ``rate``/s; waits up to ``settle`` s for the last to land.
    Returns the changes and the achieved write rate."""
    changes: list[Change] = []
    loop = asyncio.get_running_loop()
    start = next_at = loop.time()
    for _ in range(count):
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at += 1.0 / rate
        change = state.next_change()
        ips = state.slice_ips(change)
        poller.add(change)
        t = time.perf_counter()
        try:
            await writer.apply(change, ips)
        except Exception as exc:  # recorded and reported, never silently dropped
            change.error = f"{type(exc).__name__}: {exc}"[:200]
        change.api_s = time.perf_counter() - t
        changes.append(change)
        if on_change is not None:
            on_change(change)
    achieved = count / max(loop.time() - start, 1e-9)
    deadline = loop.time() + settle
    while poller.pending() and loop.time() < deadline:
        if poller.failure is not None:
            raise RuntimeError("map poller failed") from poller.failure
        await asyncio.sleep(0.01)
    poller.drop_pending()  # what is left timed out: it shows up as missing in the results
    return changes, achieved
