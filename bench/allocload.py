"""One identity allocator process for the throughput benchmark (``python -m bench.allocload``).

Each allocator of the benchmark runs in its own process, as ``weir identity`` replicas would,
with the real :class:`services.identity.allocator.Allocator` on the real KV bucket. It connects,
prints ``{"ready": true}``, waits for ``go`` on stdin (so all allocators start together), acquires
one endpoint for each of the ``--labels`` label sets in its own shuffled order (allocators race
for the same label sets: the compare-and-set path), and prints the identities it got and the
seconds it took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from services.common.bus import connect_bus, provision
from services.identity.allocator import Allocator
from services.identity.kv import NatsKV
from services.identity.labels import LabelSet


def label_set(i: int) -> LabelSet:
    return LabelSet.of([f"k8s:app=bench-{i}", "k8s:io.kubernetes.pod.namespace=bench"])


async def run(args: argparse.Namespace) -> None:
    bus = await connect_bus(args.nats, f"bench-alloc-{args.instance}")
    try:
        await provision(bus.js)
        allocator = Allocator(await NatsKV.open(bus.js), instance=args.instance)
        await allocator.start()
        order = list(range(args.labels))
        random.Random(args.seed).shuffle(order)
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        start = time.perf_counter()
        ids: dict[str, int] = {}
        for i in order:
            got = await allocator.acquire(f"{args.instance}/pod-{i}", label_set(i))
            ids[str(i)] = got.identity
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "ids": ids}), flush=True)
    finally:
        await bus.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nats", required=True)
    p.add_argument("--instance", required=True)
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
