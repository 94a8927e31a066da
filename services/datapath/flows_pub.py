"""Flow events from the ring buffer to the bus, without ever holding up the datapath.

Why this shape: the kernel side never blocks (a full ring buffer counts ``events_lost``), and
this side must not either: the reader thread (``FlowEventReader.pump``) only appends to a
bounded deque — when the bus is slow or down the newest events are dropped and counted, the
thread keeps draining the ring so the kernel does not start losing events too. The asyncio
side takes what is there in batches (up to ``batch`` events, or whatever came within
``linger``), names them (``flows.to_flow``) and publishes them with ``publish_batch`` on
``weir.v1.flows.<node>.<verdict>`` with deterministic message ids. A batch that still fails is
dropped and counted (flows are observations, not desired state: replaying stale ones later helps
nobody). Counters: ``dropped`` (queue full or publish failed), ``malformed`` (did not convert,
plus the reader's undecodable records), ``published``, ``lost`` (the kernel's count).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from services.common.bus import Outgoing
from services.common.cancelling import raise_if_cancelled
from services.datapath.flowevents import FlowEventReader, RawFlowEvent
from services.datapath.flows import FlowConversionError, FlowNames, flow_msg_id, to_flow

log = logging.getLogger(__name__)

PublishFn = Callable[[Sequence[Outgoing]], Awaitable[object]]


class FlowPublisher:
    """Bounded hand-off from a reader thread to batched bus publishes (see module doc)."""

    def __init__(
        self,
        node: str,
        names: FlowNames,
        publish: PublishFn,
        *,
        queue_size: int = 8192,
        batch: int = 256,
        linger: float = 0.02,
    ) -> None:
        self.node = node
        self.names = names
        self._publish = publish
        self._queue: collections.deque[RawFlowEvent] = collections.deque()
        self._size = queue_size
        self._batch = batch
        self._linger = linger
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._signalled = False
        self.dropped = 0
        self.malformed = 0
        self.published = 0
        self.lost = 0
        self.reader_malformed = 0

    def offer(self, event: RawFlowEvent) -> None:
        """Thread-safe, never blocks: queue the event or drop and count it."""
        if len(self._queue) >= self._size:
            self.dropped += 1
            return
        self._queue.append(event)
        if not self._signalled:
            self._signalled = True
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self._loop.call_soon_threadsafe(self._wake.set)

    def take(self) -> list[RawFlowEvent]:
        out: list[RawFlowEvent] = []
        while self._queue and len(out) < self._batch:
            out.append(self._queue.popleft())
        return out

    async def run(self) -> None:
        """Publish until cancelled."""
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
            self._signalled = False
            if not self._queue:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            if len(self._queue) < self._batch:
                await asyncio.sleep(self._linger)
            await self.publish_events(self.take())

    async def publish_events(self, events: list[RawFlowEvent]) -> None:
        out: list[Outgoing] = []
        for event in events:
            try:
                flow = to_flow(event, self.node, self.names)
            except FlowConversionError as exc:
                self.malformed += 1
                log.warning("%s: %s; skipped", self.node, exc)
                continue
            out.append(Outgoing(flow.subject(), flow, flow_msg_id(self.node, event)))
        if not out:
            return
        try:
            await self._publish(out)
        except Exception as exc:  # the bus is down or refuses: drop, count, go on
            self.dropped += len(out)
            log.warning("%s: dropped %d flows: %r", self.node, len(out), exc)
            return
        self.published += len(out)


class RingReader:
    """``FlowEventReader.pump`` in a daemon thread, feeding a :class:`FlowPublisher`."""

    def __init__(self, pin: Path, publisher: FlowPublisher) -> None:
        self.reader = FlowEventReader(pin)
        self.publisher = publisher
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._pump, name=f"flows-{publisher.node}", daemon=True
        )

    def _pump(self) -> None:
        try:
            self.reader.pump(self.publisher.offer, self._stop, interval=0.1)
        except Exception:
            log.exception("%s: flow event reader stopped", self.publisher.node)

    def start(self) -> None:
        self._thread.start()

    def refresh(self) -> None:
        """Copy the kernel's lost counter and the reader's malformed count to the publisher."""
        self.publisher.lost = self.reader.lost
        self.publisher.reader_malformed = self.reader.malformed

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.reader.close()
