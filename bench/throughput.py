"""Throughput: events/s through the pipeline with no growing backlog, identity allocations/s.

Three stages, each at its own boundary, because one Python client cannot write 10k changes/s
into an HTTP API and so cannot find the pipeline's limit by itself:

1. watcher, list path: ``weir watcher`` starts against the stand-in holding N Services and their
   EndpointSlices; events/s from its first to its last message on the bus;
2. watcher, watch path: concurrent kubernetes-asyncio writers replace EndpointSlices for
   ``--drive-seconds``; the API write rate they reach, and how long after they stop the stream
   and a datapath worker (``weir datapath --maps bpf``) have caught up;
3. bus -> maps: the watcher is stopped and EndpointSlice events are published straight to
   JetStream (the watcher's ``publish_batch`` path) at fixed, stepped rates; a rate counts as
   sustained when the publisher keeps it up and the worker's durable consumer backlog drains
   within a second after the step (no growing backlog). The highest such rate is reported.

And end to end, on a stack of its own: a worker is subscribed to the empty stream first, then the
watcher starts against the stand-in holding N Services and their EndpointSlices; events/s from the
watcher's first message on the bus until the worker reports the last one applied (its NodeStatus),
with the watcher, nats-server and the worker sharing the machine's cores. ``--e2e-rounds`` rounds
(3), each on a fresh stack; the median round is the figure and every round is in the result.

Identity allocations/s: 1 and 3 allocator processes (bench/allocload.py) acquire the same
``--labels`` label sets in different orders on a real nats-server; the result also checks that
every allocator got the same identity for each label set.

Run: ``.venv/bin/python -m bench.throughput [--services 10000 --rates 1000,2000,5000,10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config

from bench import objects as o
from bench.busprobe import (
    backlog,
    node_applied,
    stream_state,
    wait_applied,
    wait_published,
    wait_status,
)
from bench.machine import describe, save
from bench.stack import Stack
from bench.stats import e2e_text, summarise_rounds
from contracts.subjects import k8s_subject
from contracts.v1.convert import to_event
from services.common.bus import Bus, Outgoing, connect_bus, provision, publish_batch

SYNTH_NS = "synth"
_IP_MARK, _RV_MARK = "10.255.255.254", "987654321"


class EventSource:
    """EndpointSlice UPSERT events for ``services`` synthetic Services, pre-encoded from one
    template per Service (what the watcher would publish; only the IP and version differ)."""

    def __init__(self, services: int) -> None:
        self.templates: list[tuple[str, str]] = []
        now = datetime.now(UTC)
        for i in range(services):
            name = o.service_name(i)
            raw = o.endpoint_slice(name, [_IP_MARK])
            raw["metadata"] |= {
                "namespace": SYNTH_NS,
                "uid": f"uid-{i}",
                "resourceVersion": _RV_MARK,
            }
            event = to_event("endpointslice", "UPSERT", raw, "bench", now)
            subject = k8s_subject("endpointslice", SYNTH_NS, o.slice_name(name))
            self.templates.append((subject, event.model_dump_json()))
        self.rng = random.Random(4)
        self.n = 0

    def next(self, index: int | None = None) -> Outgoing:
        self.n += 1
        i = self.rng.randrange(len(self.templates)) if index is None else index
        subject, text = self.templates[i]
        rv = str(1_000_000_000 + self.n)
        data = text.replace(_IP_MARK, o.fresh_ip(self.n % 4_000_000)).replace(_RV_MARK, rv)
        return Outgoing(subject, data.encode(), f"endpointslice/{SYNTH_NS}/{i}/{rv}/UPSERT")


async def sample_backlog(js: Any, node: str, out: list[tuple[float, int]], start: float) -> None:
    while True:
        with contextlib.suppress(Exception):
            out.append((time.monotonic() - start, await backlog(js, node)))
        await asyncio.sleep(0.25)


async def wait_drained(js: Any, node: str, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await backlog(js, node) == 0:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    return float("inf")


async def rate_step(
    js: Any, node: str, source: EventSource, rate: float, seconds: float
) -> dict[str, Any]:
    tick = 0.05
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    sampler = asyncio.create_task(sample_backlog(js, node, samples, start))
    sent = 0
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(rate * min(elapsed + tick, seconds)) - sent
            if due > 0:
                await publish_batch(js, [source.next() for _ in range(due)])
                sent += due
            await asyncio.sleep(max(0.0, start + (elapsed + tick) - time.monotonic()))
    finally:
        sampler.cancel()
    elapsed = time.monotonic() - start
    drain = await wait_drained(js, node, within=30.0)
    published = sent / elapsed
    sustained = published >= 0.9 * rate and drain <= 1.0
    return {
        "target_per_s": rate,
        "published_per_s": published,
        "applied_per_s": sent / (elapsed + drain) if drain != float("inf") else 0.0,
        "drain_s": drain,
        "backlog_max": max((b for _, b in samples), default=0),
        "backlog_samples": samples,
        "sustained": sustained,
    }


async def drive_api(kubeconfig: Path, services: int, seconds: float, writers: int) -> int:
    kcfg = client.Configuration()
    await config.load_kube_config(str(kubeconfig), client_configuration=kcfg)
    kcfg.connection_pool_maxsize = writers
    writes = 0
    async with client.ApiClient(kcfg) as api:
        disc: Any = client.DiscoveryV1Api(api)
        deadline = time.monotonic() + seconds

        async def writer(w: int) -> None:
            nonlocal writes
            rng = random.Random(w)
            while time.monotonic() < deadline:
                i = rng.randrange(services)
                name = o.service_name(i)
                ips = [o.backend_ip(i, 0, 2), o.fresh_ip(writes + 1 + 1_000_000 * w)]
                await disc.replace_namespaced_endpoint_slice(
                    o.slice_name(name), o.NAMESPACE, o.endpoint_slice(name, ips)
                )
                writes += 1

        await asyncio.gather(*(writer(w) for w in range(writers)))
    return writes


async def watcher_stages(stack: Stack, args: argparse.Namespace, js: Any) -> dict[str, Any]:
    # list path: from the first to the last message the watcher publishes at start
    stack.start_watcher()
    first = last = None
    expected = 2 * args.services
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            messages, _ = await stream_state(js)
            if messages and first is None:
                first = time.monotonic()
            if messages >= expected:
                last = time.monotonic()
                break
        await asyncio.sleep(0.02)
    if first is None or last is None:
        raise TimeoutError(f"the watcher did not publish {expected} objects in {args.timeout}s")
    list_rate = expected / max(last - first, 1e-9)
    print(f"[throughput] watcher list path: {expected} objects, {list_rate:.0f} events/s",
          flush=True)  # fmt: skip
    seq = await wait_published(js, expected, within=args.timeout)
    worker = stack.add_worker()
    await wait_applied(js, [worker.node], seq, args.timeout)
    # watch path: concurrent API writers, then catch-up of the stream and the worker
    _, before = await stream_state(js)
    assert stack.kubeconfig is not None
    t0 = time.monotonic()
    writes = await drive_api(stack.kubeconfig, args.services, args.drive_seconds, args.writers)
    drive_s = time.monotonic() - t0
    stream_catchup = worker_catchup = float("inf")
    while time.monotonic() - t0 < drive_s + 60:
        _, seq = await stream_state(js)
        if seq >= before + writes:
            stream_catchup = time.monotonic() - t0 - drive_s
            break
        await asyncio.sleep(0.02)
    with contextlib.suppress(TimeoutError):
        took = await wait_applied(js, [worker.node], before + writes, 60.0)
        worker_catchup = time.monotonic() - t0 - drive_s
        del took
    watch = {
        "api_writes": writes,
        "api_writes_per_s": writes / drive_s,
        "writers": args.writers,
        "stream_catchup_s": stream_catchup,
        "worker_catchup_s": worker_catchup,
    }
    print(f"[throughput] watcher watch path: {watch['api_writes_per_s']:.0f} API writes/s, "
          f"stream caught up {stream_catchup:.2f}s and worker {worker_catchup:.2f}s after",
          flush=True)  # fmt: skip
    return {"list_events_per_s": list_rate, "watch": watch, "node": worker.node}


async def bus_to_maps(stack: Stack, js: Any, node: str, args: argparse.Namespace) -> dict[str, Any]:
    stack.stop("watcher")
    source = EventSource(args.services)
    # the synthetic Services and one slice each, so every later event changes a frontend
    await publish_batch(js, [service_event(i) for i in range(args.services)])
    await publish_batch(js, [source.next(i) for i in range(args.services)])
    _, seq = await stream_state(js)
    await wait_applied(js, [node], seq, args.timeout)
    steps: list[dict[str, Any]] = []

    async def step(rate: float) -> bool:
        result = await rate_step(js, node, source, rate, args.step_seconds)
        steps.append(result)
        print(f"[throughput] bus->maps {rate:>7.0f}/s: published {result['published_per_s']:.0f}/s,"
              f" backlog max {result['backlog_max']}, drained in {result['drain_s']:.2f}s -> "
              f"{'sustained' if result['sustained'] else 'NOT sustained'}", flush=True)  # fmt: skip
        return bool(result["sustained"])

    good, bad = 0.0, 0.0
    for rate in (float(r) for r in args.rates.split(",")):
        if not await step(rate):
            bad = rate
            break
        good = rate
    for _ in range(args.bisect if bad else 0):  # narrow down between the last good and bad
        mid = round((good + bad) / 2, -2)
        if mid in (good, bad):
            break
        if await step(mid):
            good = mid
        else:
            bad = mid
    best = max((s["target_per_s"] for s in steps if s["sustained"]), default=0.0)
    return {"steps": steps, "max_sustained_per_s": best}


@contextlib.asynccontextmanager
async def loaded_stack(services: int, client: str) -> AsyncIterator[tuple[Stack, Bus]]:
    """nats-server and the API stand-in holding ``services`` Services and their slices, and a
    bus connection with the streams provisioned; everything removed on exit."""
    with Stack() as stack:
        manifest = o.write_manifest(stack.workdir / "load.json", services, 2)
        stack.start_nats()
        stack.start_apiserver([manifest])
        bus = await connect_bus(stack.nats_url, client)
        try:
            await provision(bus.js)
            yield stack, bus
        finally:
            await bus.close()


async def list_to_maps(args: argparse.Namespace) -> dict[str, Any]:
    """Watcher list -> bus -> one worker's maps, end to end (see the module docstring)."""
    async with loaded_stack(args.services, "bench-throughput-e2e") as (stack, bus):
        worker = stack.add_worker()
        await wait_status(bus.js, worker.node, args.timeout)
        stack.start_watcher()
        expected = 2 * args.services
        first = published = None
        last_seq = 0
        deadline = time.monotonic() + args.timeout
        while published is None:  # poll the stream for the first and the last message
            if time.monotonic() > deadline:
                raise TimeoutError(f"the watcher did not publish {expected} objects")
            messages, last_seq = await stream_state(bus.js)
            now = time.monotonic()
            if messages and first is None:
                first = now
            if messages >= expected:
                published = now
            await asyncio.sleep(0.01)
        assert first is not None
        while (applied := await node_applied(bus.js, worker.node)) < last_seq:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.node} applied {applied} of {last_seq}")
            await asyncio.sleep(0.01)
        done = time.monotonic()
        stack.check_alive()
    result = {
        "events": expected,
        "publish_s": published - first,
        "applied_s": done - first,
        "events_per_s": expected / max(done - first, 1e-9),
        "worker_behind_s": done - published,
    }
    print(f"[throughput] watcher list -> bus -> maps: {expected} events applied "
          f"{result['applied_s']:.2f}s after the first was published = "
          f"{result['events_per_s']:.0f} events/s (worker done {result['worker_behind_s']:.2f}s "
          f"after the watcher)", flush=True)  # fmt: skip
    return result


def service_event(i: int) -> Outgoing:
    name = o.service_name(i)
    raw = o.service(name, o.vip(300_000 + i))
    raw["metadata"] |= {"namespace": SYNTH_NS, "uid": f"svc-uid-{i}", "resourceVersion": "1"}
    event = to_event("service", "UPSERT", raw, "bench", datetime.now(UTC))
    return Outgoing(event.subject(), event.model_dump_json().encode(), event.msg_id())


def identity_run(nats_url: str, allocators: int, labels: int) -> dict[str, Any]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.allocload",
                "--nats",
                nats_url,
                "--instance",
                f"bench-a{k}-{allocators}",
                "--labels",
                str(labels),
                "--seed",
                str(k),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for k in range(allocators)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            if json.loads(p.stdout.readline() or "{}").get("ready") is not True:
                raise RuntimeError("an allocator process did not start")
        start = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    agreed = all(r["ids"] == results[0]["ids"] for r in results)
    distinct = len(set(results[0]["ids"].values()))
    return {
        "allocators": allocators,
        "label_sets": labels,
        "wall_s": wall,
        "identities_per_s": labels / wall,
        "acquisitions_per_s": allocators * labels / wall,
        "all_allocators_agree": agreed,
        "distinct_identities": distinct,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": describe(), "services": args.services}
    if args.end_to_end and args.e2e_rounds > 0:
        result["end_to_end"] = summarise_rounds([await list_to_maps(args)
                                                 for _ in range(args.e2e_rounds)])  # fmt: skip
    async with loaded_stack(args.services, "bench-throughput") as (stack, bus):
        watcher = await watcher_stages(stack, args, bus.js)
        result["watcher"] = watcher
        result["bus_to_maps"] = await bus_to_maps(stack, bus.js, watcher["node"], args)
        stack.check_alive()
        result["worker_rss_mib"] = stack.workers[0].rss_mib()
    identity: list[dict[str, Any]] = []
    for k in (int(x) for x in args.allocators.split(",") if x.strip()):  # "" = none
        with Stack() as stack:
            stack.start_nats()
            row = await asyncio.to_thread(identity_run, stack.nats_url, k, args.labels)
        identity.append(row)
        print(f"[throughput] identity: {k} allocator(s): {row['identities_per_s']:.0f} new "
              f"identities/s, agree={row['all_allocators_agree']}", flush=True)  # fmt: skip
    result["identity"] = identity
    print_table(result)
    return result


def print_table(r: dict[str, Any]) -> None:
    w, b = r["watcher"], r["bus_to_maps"]
    rows: list[tuple[str, str]] = []
    if "end_to_end" in r:
        e = r["end_to_end"]
        rows.append(("watcher list -> bus -> maps, end to end (events/s)", e2e_text(e)))
    rows += [
        ("watcher list -> bus (events/s)", f"{w['list_events_per_s']:.0f}"),
        ("API writes -> watcher -> bus -> maps (writes/s driven)",
         f"{w['watch']['api_writes_per_s']:.0f} (worker caught up "
         f"{w['watch']['worker_catchup_s']:.2f}s after)"),
        ("bus -> maps, max sustained (events/s)", f"{b['max_sustained_per_s']:.0f}"),
    ]  # fmt: skip
    rows += [
        (f"identity, {i['allocators']} allocator(s) (new identities/s)",
         f"{i['identities_per_s']:.0f} (agree: {i['all_allocators_agree']})")
        for i in r.get("identity", [])
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print(f"\nthroughput, {r['services']} Services loaded")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--rates", default="1000,2000,5000,10000,20000")
    p.add_argument("--step-seconds", type=float, default=5.0)
    p.add_argument("--bisect", type=int, default=2, help="extra steps between good and bad rate")
    p.add_argument("--drive-seconds", type=float, default=5.0)
    p.add_argument("--writers", type=int, default=16)
    p.add_argument("--allocators", default="1,3")
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--end-to-end", action=argparse.BooleanOptionalAction, default=True,
                   help="also run watcher list -> bus -> maps on a stack of its own")  # fmt: skip
    p.add_argument("--e2e-rounds", type=int, default=3,
                   help="end-to-end rounds, each on a new stack; median is the figure")  # fmt: skip
    p.add_argument("--out", default="bench/results/throughput.json")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    result = asyncio.run(run(args))
    save(args.out, result)
    return result


if __name__ == "__main__":
    main()
