"""Reserved identities and the allocatable range, and candidate selection (pure).

Why this shape: the numeric values of the reserved identities are part of the datapath contract
(the eBPF programs and policy compare against them), so they live in one table that the
allocator can never hand out. Candidate selection is pure so its two properties are table-tested:
it starts at a random offset, so racing allocators rarely probe the same id, and it visits every
id of the range exactly once, so "no candidate left" really means the range is full.
"""

from __future__ import annotations

import random
from collections.abc import Container, Iterator
from typing import Final

UNKNOWN: Final = 0
HOST: Final = 1
WORLD: Final = 2
UNMANAGED: Final = 3
HEALTH: Final = 4
INIT: Final = 5
REMOTE_NODE: Final = 6
KUBE_APISERVER: Final = 7

RESERVED: Final[dict[int, str]] = {
    UNKNOWN: "unknown",
    HOST: "host",
    WORLD: "world",
    UNMANAGED: "unmanaged",
    HEALTH: "health",
    INIT: "init",
    REMOTE_NODE: "remote-node",
    KUBE_APISERVER: "kube-apiserver",
}

MIN_CLUSTER_ID: Final = 256
MAX_CLUSTER_ID: Final = 65535


class RangeError(ValueError):
    """An identity range that overlaps the reserved identities or is empty."""


def check_range(low: int, high: int) -> tuple[int, int]:
    """Validate an allocatable range (inclusive); raises RangeError naming the bad bound."""
    if low < MIN_CLUSTER_ID:
        raise RangeError(f"identity range: low {low} is below {MIN_CLUSTER_ID} (reserved ids)")
    if high > MAX_CLUSTER_ID:
        raise RangeError(f"identity range: high {high} is above {MAX_CLUSTER_ID}")
    if high < low:
        raise RangeError(f"identity range: high {high} is below low {low}")
    return low, high


def candidates(
    low: int, high: int, known_used: Container[int], rng: random.Random
) -> Iterator[int]:
    """Every id in ``[low, high]`` not in ``known_used``, once each, from a random start."""
    size = high - low + 1
    start = rng.randrange(size)
    for i in range(size):
        ident = low + (start + i) % size
        if ident not in RESERVED and ident not in known_used:
            yield ident
