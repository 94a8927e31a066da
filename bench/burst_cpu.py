"""CPU per event of the datapath worker absorbing a burst, on real maps and a real nats-server.

Why: on the benchmark's 2-core machine the worker competes with the watcher for CPU, so what the
end-to-end target needs from the worker is fewer CPU-seconds per event, not lower latency. Wall
time on a shared machine says little; this measures ``time.process_time()`` (every thread of
the process: the event loop, nats-py's reader, the reconciler's thread) over the burst, best of
N, with nothing else running in the process while it is measured.

Two cases, each on a running worker's consume path (not the bootstrap snapshot):

* ``e2e``: 10,000 Service UPSERTs and 10,000 EndpointSlice UPSERTs (2 backends each),
  interleaved, the bytes the watcher publishes (``contracts.v1.to_event`` of the objects
  ``bench.objects`` builds, as ``bench.throughput.service_event`` does);
  ``--order pieces`` publishes them as the watcher's relist does instead: 1000 Services, then
  the 1000 slices of the same Services, and so on (a Service and its slice then usually land in
  different batches, and each frontend is planned and written twice);
* ``churn``: after the e2e state, EndpointSlice UPSERTs that each change one backend IP of an
  existing Service (what ``bench.throughput``'s API writers do).

Each repetition uses fresh pinned maps (created here with the loader's shapes, no programs) and
a purged stream. The burst is published before the consumer starts, so the worker reads full
batches, and the publisher's CPU is not counted.

Run (root, for the maps): ``.venv/bin/python -m bench.burst_cpu [--services 10000]``.

CPU time on a shared machine moves by 10-20 % between runs; for A/B of small changes the
``--instructions e2e|churn`` mode counts instructions instead, which do not depend on the
neighbours: the worker's ``handle_batch`` (absorb, flush, apply on real maps, inline on the loop,
no bus) over the burst after a warm-up, inside ``functools.reduce`` so that callgrind collects
exactly that part (valgrind is not installed by `make`: `apt-get install valgrind`)::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        .venv/bin/python -m bench.burst_cpu --instructions e2e --services 1500

prints the events measured; instructions per event = the ``totals:`` line of callgrind.out.PID
divided by it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import gc
import os
import random
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from bench import objects as o
from bench.stack import Stack
from contracts.subjects import STREAM_K8S
from contracts.v1 import to_event
from services.common.bus import Outgoing, connect_bus, provision, publish_batch
from services.datapath import bpfsys
from services.datapath import worker as worker_mod
from services.datapath.bpflayout import MapCapacities, map_specs
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.settings import DatapathSettings
from services.datapath.worker import DatapathWorker

NODE = "burst-node"
GC_TIME: dict[int, float] = {}  # generation -> CPU seconds in collections (-1: the last start)


def _gc_clock(phase: str, info: dict[str, int]) -> None:
    """Accumulate CPU seconds spent in collections, per generation."""
    if phase == "start":
        GC_TIME[-1] = time.process_time()
    else:
        gen = info["generation"]
        GC_TIME[gen] = GC_TIME.get(gen, 0.0) + time.process_time() - GC_TIME.pop(-1, 0.0)


NS = "synth"


def _event(kind: str, raw: dict[str, Any], rep: int, n: int) -> Outgoing:
    raw["metadata"] |= {"namespace": NS, "uid": f"{kind}-uid-{n}", "resourceVersion": str(n)}
    event = to_event(kind, "UPSERT", raw, "bench", datetime.now(UTC))
    return Outgoing(event.subject(), event.model_dump_json().encode(), f"{rep}/{event.msg_id()}")


PIECE = 1000  # the watcher's relist publishes its listing in pieces of this many objects


def e2e_events(services: int, rep: int, order: str = "interleaved") -> list[Outgoing]:
    """The e2e burst: Service i and slice i one after the other (``interleaved``), or as the
    watcher's relist publishes them (``pieces``): 1000 Services, the 1000 slices of the same
    Services, the next 1000 Services, and so on."""
    svcs, slices = [], []
    for i in range(services):
        name = o.service_name(i)
        svcs.append(_event("service", o.service(name, o.vip(300_000 + i)), rep, i))
        ips = [o.backend_ip(i, 0, 2), o.backend_ip(i, 1, 2)]
        slices.append(_event("endpointslice", o.endpoint_slice(name, ips), rep, i))
    out = []
    if order == "pieces":
        for k in range(0, services, PIECE):
            out += svcs[k : k + PIECE] + slices[k : k + PIECE]
    else:
        for pair in zip(svcs, slices, strict=True):
            out += pair
    return out


def churn_events(services: int, count: int, rep: int) -> list[Outgoing]:
    rng = random.Random(rep)
    out = []
    for n in range(count):
        i = rng.randrange(services)
        name = o.service_name(i)
        ips = [o.backend_ip(i, 0, 2), o.fresh_ip(n + 1)]
        out.append(_event("endpointslice", o.endpoint_slice(name, ips), rep, 100_000 + n))
    return out


def make_maps(pin_dir: Path, cap: MapCapacities) -> BpfLBMap:
    pin_dir.mkdir(parents=True)
    for spec in map_specs(cap):
        fd = bpfsys.map_create(
            spec.map_type,
            _size(spec.key),
            _size(spec.value),
            spec.max_entries,
            spec.flags,
        )
        try:
            bpfsys.obj_pin(fd, pin_dir / spec.pin)
        finally:
            os.close(fd)
    return BpfLBMap(pin_dir, cap)


def _size(ctype: Any) -> int:
    return ctypes.sizeof(ctype)


async def measure(
    worker: DatapathWorker, start: int, last: int
) -> tuple[float, float, asyncio.Task[None]]:
    """(CPU s, wall s) until the worker applied ``last``; the consume task keeps running."""
    gc.collect()
    GC_TIME.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    task = asyncio.create_task(worker.consume(start))
    while worker.applied_seq < last:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    return time.process_time() - cpu0, time.perf_counter() - wall0, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def one_rep(url: str, rep: int, args: argparse.Namespace, root: Path) -> dict[str, float]:
    cap = MapCapacities()
    lbmap = make_maps(root / f"r{rep}", cap)
    pub = await connect_bus(url, "burst-pub")
    bus = await connect_bus(url, "burst-worker")
    try:
        await provision(pub.js)
        await pub.js.purge_stream(STREAM_K8S)
        settings = DatapathSettings(
            node_name=NODE,
            nats_url=url,
            maps="bpf",
            policy=False,
            batch=args.batch,
            backlog_batch=args.backlog_batch or args.batch,
        )
        worker = DatapathWorker(settings, bus, lbmap)
        status = asyncio.create_task(worker._status_loop())
        start = await worker.bootstrap()
        acks = await publish_batch(pub.js, e2e_events(args.services, rep, args.order))
        last = acks[-1].seq
        cpu, wall, task = await measure(worker, start, last)
        out = {"e2e_us": cpu / len(acks) * 1e6, "e2e_wall_s": wall}
        out["e2e_gc_us"] = sum(v for k, v in GC_TIME.items() if k >= 0) / len(acks) * 1e6
        await stop(task)
        acks = await publish_batch(pub.js, churn_events(args.services, args.churn, rep))
        cpu, wall, task = await measure(worker, last + 1, acks[-1].seq)
        out |= {"churn_us": cpu / len(acks) * 1e6, "churn_wall_s": wall}
        out["churn_gc_us"] = sum(v for k, v in GC_TIME.items() if k >= 0) / len(acks) * 1e6
        await stop(task)
        status.cancel()
        assert len(worker.reconciler.realised.frontend_values) == args.services
        assert not worker.errors and not worker.reconciler.pending
        return out
    finally:
        await bus.close()
        await pub.close()
        lbmap.close()


class _LoopMsg(Msg):
    async def ack(self) -> None:
        return None


class _NoBus:
    nc = None


def instructions(case: str, services: int) -> int:
    """Feed ``case``'s burst to a worker without a bus (messages as JetStream delivers them) and
    return how many events the measured part (inside functools.reduce) absorbed."""

    def msgs(outs: list[Outgoing], seq0: int) -> list[Msg]:
        reply = "$JS.ACK.WEIR_K8S.d.1.{}.{}.1700000000.0"
        client: Any = None  # never used: acks go nowhere
        return [
            _LoopMsg(client, subject=o.subject, reply=reply.format(seq0 + i, seq0 + i), data=data)
            for i, o in enumerate(outs)
            if isinstance(data := o.data, bytes)
        ]

    root = Path("/sys/fs/bpf") / f"weir-burst-{os.getpid()}"
    lbmap = make_maps(root, MapCapacities())
    worker_mod.INLINE_APPLY = 1 << 30  # every apply on the loop: callgrind sees one thread
    settings = DatapathSettings(node_name=NODE, nats_url="nats://-", maps="bpf", policy=False)
    worker = DatapathWorker(settings, _NoBus(), lbmap)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        worker.reconciler.load()
        worker.synced = True
        e2e = msgs(e2e_events(services, 0), 1)
        churn = msgs(churn_events(services, services, 0), 1 + len(e2e))

        def feed(batch: list[Msg]) -> None:
            for k in range(0, len(batch), 512):
                loop.run_until_complete(worker.handle_batch(batch[k : k + 512]))

        gc.disable()  # as the relist and the bootstrap run; collections would blur the count
        warm = 1024
        if case == "churn":
            feed(e2e)
            measured = churn
        else:
            measured = e2e
        feed(measured[:warm])
        functools.reduce(lambda _a, batch: feed(batch), [measured[warm:]], None)
        assert not worker.errors and not worker.reconciler.pending
        return len(measured) - warm
    finally:
        gc.enable()
        loop.close()
        lbmap.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--churn", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=512, help="the worker's small batch")
    parser.add_argument(
        "--backlog-batch",
        type=int,
        default=0,
        help="the worker's batch under a backlog (0: the same as --batch)",
    )
    parser.add_argument(
        "--order",
        choices=("interleaved", "pieces"),
        default="interleaved",
        help="e2e burst order: Service i then slice i, or the relist's pieces of 1000 of a kind",
    )
    parser.add_argument("--instructions", choices=("e2e", "churn"))
    args = parser.parse_args()
    if args.instructions:
        print(instructions(args.instructions, args.services))
    else:
        asyncio.run(burst(args))


async def burst(args: argparse.Namespace) -> None:
    root = Path("/sys/fs/bpf") / f"weir-burst-{os.getpid()}"
    gc.callbacks.append(_gc_clock)
    stack = Stack()
    runs = []
    try:
        url = stack.start_nats()
        for rep in range(args.reps):
            r = await one_rep(url, rep, args, root)
            print(
                f"rep {rep}: e2e {r['e2e_us']:.1f} us/event (gc {r['e2e_gc_us']:.1f},"
                f" {r['e2e_wall_s']:.2f} s wall), churn {r['churn_us']:.1f} us/event"
                f" (gc {r['churn_gc_us']:.1f}, {r['churn_wall_s']:.2f} s wall)",
                flush=True,
            )
            runs.append(r)
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"best of {len(runs)}: e2e {min(r['e2e_us'] for r in runs):.1f} us/event, "
        f"churn {min(r['churn_us'] for r in runs):.1f} us/event; "
        f"e2e drain {min(r['e2e_wall_s'] for r in runs):.2f} s wall"
    )


if __name__ == "__main__":
    main()
