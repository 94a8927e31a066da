"""Cyclic-GC policy for bulk phases (a watcher's relist, a datapath worker's start and bootstrap).

A bulk phase allocates millions of small, long-lived, acyclic containers: a relist of 20k objects
(raw JSON dicts, models, actions) or a worker's imports and its whole desired state (views,
frontends, the map mirror). With the default thresholds the collector walks them again and again
while they are built: over the watcher's list path it was about as much CPU as the conversion
itself (~45 us/object with the collector paused against ~100 us with it running), and in a
worker's cold sync 60-120 ms of CPU even with rare collections. Reference counting frees what
such a phase drops; the cyclic collector finds almost nothing in it.

So while any phase runs, automatic collection is off (a counter, because phases nest and run
concurrently, and the collector is process-wide). When the last one ends, one explicit pass over
the youngest generation (with automatic passes off, that is exactly what the phases allocated
and still hold) collects whatever cycles they left, and :func:`gc.freeze` moves the survivors
(indexes, desired state, modules, the loop's long-lived objects) out of the collector's view:
later full passes then walk only what changed since, which keeps them from stalling the event
loop (the per-change latency tail). A *full* pass here instead walked the whole heap (130 ms on
the loaded 2-core machine for the watcher). Frozen objects are still freed by reference
counting. The collector is turned back on only if it was on when the first phase began.

A phase that happens once per process and is timed (a datapath worker's imports and bootstrap)
opens with ``collect=False``: then the end only freezes. The pass over the young generation is
then the bulk of the phase itself (734,000 objects after a 10k-Service bootstrap: 100-300 ms
with the event loop blocked, right when ``/readyz`` would turn ready), and what it would find is
a one-time ~2,000 objects of cyclic garbage that stays frozen instead. A phase that repeats (a
watcher's relist) must collect, or each repetition would freeze its cycles for good. When
phases overlap, the end collects if any of them asked to.

One instance per process (:data:`BULK`): the collector is one per process, and so is its policy.
``begin``/``end`` are the same as the context manager, for a phase that spans functions.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class BulkPhases:
    """Counts nested/concurrent bulk phases; the collector is paused while any is open."""

    def __init__(self) -> None:
        self.open = 0
        self.settled = 0  # phases' ends that froze (for tests and logs)
        self._was_enabled = True
        self._collect = False

    def begin(self, *, collect: bool = True) -> None:
        if self.open == 0:
            self._was_enabled = gc.isenabled()
            self._collect = False
            gc.disable()
        self._collect |= collect
        self.open += 1

    def end(self) -> None:
        if self.open <= 0:
            raise RuntimeError("BulkPhases.end without a matching begin")
        self.open -= 1
        if self.open == 0:
            self._settle()

    @contextmanager
    def phase(self, *, collect: bool = True) -> Iterator[None]:
        self.begin(collect=collect)
        try:
            yield
        finally:
            self.end()

    def _settle(self) -> None:
        started = time.perf_counter()
        found = gc.collect(0) if self._collect else 0
        gc.freeze()
        if self._was_enabled:
            gc.enable()
        self.settled += 1
        log.debug(
            "bulk phase over: %d unreachable objects collected, %d frozen, in %.1f ms",
            found,
            gc.get_freeze_count(),
            (time.perf_counter() - started) * 1e3,
        )


BULK = BulkPhases()
