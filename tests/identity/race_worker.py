"""A separate allocator process for the race test: allocates label sets, prints id per digest.

Run as ``python -m tests.identity.race_worker URL INSTANCE SEED LABELS.json``; each process has its
own connection and cache, and shuffles the label sets with its own seed so the two workers race
over the same sets in different orders.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

from services.common.bus import connect_bus
from services.identity.allocator import Allocator
from services.identity.kv import NatsKV
from services.identity.labels import LabelSet


async def main(url: str, instance: str, seed: int, sets: list[LabelSet]) -> None:
    random.Random(seed).shuffle(sets)
    bus = await connect_bus(url, instance, max_initial_attempts=5)
    try:
        alloc = Allocator(await NatsKV.open(bus.js), instance=instance, rng=random.Random(seed))
        await alloc.start()
        result = {}
        for i, labels in enumerate(sets):
            acquired = await alloc.acquire(f"{instance}-ep{i}", labels)
            result[labels.digest] = acquired.identity
        print(json.dumps(result))
    finally:
        await bus.close()


if __name__ == "__main__":
    label_sets = [LabelSet.of(labels) for labels in json.loads(Path(sys.argv[4]).read_text())]
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), label_sets))
