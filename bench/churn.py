"""Steady churn against the API stand-in, and a poller that sees each change land in every node.

A change is registered with the :class:`Poller` *before* its API write starts (t0), with a
predicate the poller can check cheaply in each node's pinned maps (bench/mapprobe.py):

* ``endpoints``: a Service's EndpointSlice is replaced by one holding a never-used backend IP;
  landed when that IP is behind the Service's VIP;
* ``create``: a new Service (explicit, fresh ClusterIP) and its EndpointSlice with a fresh IP;
  landed when the IP is behind the new VIP (so it covers two API writes);
* ``delete``: a Service created earlier is deleted (then its slice); landed when its VIP's
  master slot is gone.

The poller runs in a process of its own and sleeps between sweeps, so it costs little CPU next to
the workers it is timing; its resolution (the sweep interval) is part of the reported latency.
It used to be a thread of the driver: then it shared the driver's GIL with kubernetes-asyncio
(milliseconds of Python per API write), so a landing could wait for the interpreter's switch
interval (5 ms) before the poller saw it, and its sweeps delayed the writes. Both sides stamp
with ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on the machine).
Writes happen at a fixed schedule (open loop): a slow pipeline does not slow the churn down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
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
    seen: dict[str, float] = field(default_factory=dict)  # node -> monotonic when landed
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


class Poller:
    """Sees each registered change land in every node's maps, from a child process.

    The driver side: :meth:`add` stamps ``t0`` and sends the change; a receiver thread records
    the child's landing times in ``change.seen``. The child (:func:`_poll_forever`) opens a
    :class:`MapProbe` per node and sweeps the pending changes every ``interval`` seconds."""

    def __init__(self, maps_dirs: Mapping[str, Path], interval: float = 0.0005) -> None:
        self.maps_dirs = dict(maps_dirs)
        self.interval = interval
        self._changes: dict[int, Change] = {}  # id -> change, still pending
        self._next_id = 0
        self._lock = threading.Lock()
        self.failure: BaseException | None = None
        ctx = multiprocessing.get_context("spawn")  # no fork of an asyncio + threads process
        self._to_child, child_in = ctx.Pipe(duplex=False)[::-1]
        child_out, self._from_child = ctx.Pipe(duplex=False)[::-1]
        self._proc = ctx.Process(
            target=_poll_forever,
            args=(self.maps_dirs, child_in, child_out, interval),
            name="map-poller",
            daemon=True,
        )
        self._receiver = threading.Thread(target=self._receive, name="map-poller-rx", daemon=True)

    def start(self, within: float = 30.0) -> None:
        self._proc.start()
        if not self._from_child.poll(within):
            self._proc.kill()
            raise RuntimeError(f"map poller did not open the maps within {within:.0f}s")
        ready = self._from_child.recv()
        if ready[0] != "ready":
            self._proc.join(timeout=5)
            raise RuntimeError(f"map poller failed to start: {ready[1]}")
        self._receiver.start()

    def add(self, change: Change) -> None:
        with self._lock:
            self._next_id += 1
            key = self._next_id
            self._changes[key] = change
            change.t0 = time.monotonic()
            self._to_child.send(("add", key, change.kind, change.vip, change.ip))

    def pending(self) -> int:
        with self._lock:
            return len(self._changes)

    def drop_pending(self) -> list[Change]:
        with self._lock:
            left = list(self._changes.values())
            self._changes.clear()
            self._to_child.send(("drop",))
        return left

    def stop(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # the child is gone already
            self._to_child.send(("stop",))
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self._receiver.join(timeout=5)
        for conn in (self._to_child, self._from_child):
            conn.close()

    def _receive(self) -> None:
        try:
            while True:
                message = self._from_child.recv()
                if message[0] == "seen":
                    _, key, node, at = message
                    with self._lock:
                        change = self._changes.get(key)
                        if change is not None:
                            change.seen[node] = at
                            if len(change.seen) == len(self.maps_dirs):
                                del self._changes[key]
                elif message[0] == "error":
                    raise RuntimeError(f"map poller: {message[1]}")
        except EOFError:
            return  # the child exited (stop)
        except BaseException as exc:  # surfaced by the driver; a dead poller must not hang it
            self.failure = exc


def _poll_forever(
    maps_dirs: dict[str, Path], commands: Connection, results: Connection, interval: float
) -> None:
    """The child: sweep the pending changes over every node's probe until told to stop."""
    probes: dict[str, MapProbe] = {}
    try:
        for node, maps_dir in maps_dirs.items():
            probes[node] = MapProbe(maps_dir)
    except Exception as exc:
        results.send(("failed", repr(exc)))
        return
    # no cyclic GC in the sweep loop: a full collection over the imported modules paused the
    # sweep for up to 190 ms on the loaded machine (seen with gc.callbacks); the loop makes no
    # reference cycles, so reference counting frees everything it allocates
    gc.collect()
    gc.freeze()
    gc.disable()
    results.send(("ready",))
    pending: dict[int, tuple[Change, set[str]]] = {}
    try:
        while True:
            while commands.poll():
                command = commands.recv()
                if command[0] == "stop":
                    return
                if command[0] == "drop":
                    pending.clear()
                else:
                    _, key, kind, vip, ip = command
                    pending[key] = (Change(kind, "", vip, ip), set())
            for key, (change, seen) in list(pending.items()):
                for node, probe in probes.items():
                    if node not in seen and change.landed(probe):
                        seen.add(node)
                        results.send(("seen", key, node, time.monotonic()))
                if len(seen) == len(probes):
                    del pending[key]
            time.sleep(interval)
    except Exception as exc:
        results.send(("error", repr(exc)))
    finally:
        for probe in probes.values():
            probe.close()
        results.close()


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
        try:
            await writer.apply(change, ips)
        except Exception as exc:  # recorded and reported, never silently dropped
            change.error = f"{type(exc).__name__}: {exc}"[:200]
        change.api_s = time.monotonic() - change.t0
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
