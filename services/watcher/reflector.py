"""One kind's list+watch loop: list, diff, watch from the list's resourceVersion, repeat.

The loop is an explicit state machine over the typed outcomes of :mod:`.kube`:

=====================================  ==============================================
outcome                                next step
=====================================  ==============================================
watch ended cleanly (server timeout)   watch again from the last resourceVersion seen
410 Gone (ERROR event or HTTP 410)     relist + diff (reason ``gone``)
silent past the idle deadline          relist + diff (reason ``idle``)
any other API or bus failure           back off (capped, jittered), relist (``error``)
=====================================  ==============================================

The last resourceVersion comes from every event *and* bookmark, so a quiet kind can still resume
after compaction of other kinds' events. Decisions (publish or not, and what) come from the pure
:mod:`.state`; the loop only moves data between the API source and the :class:`Sink`, and records
into the index what the sink confirms, so a crash or failed publish is repaired by the next relist
with nothing published twice.

A relist is published in pieces of :data:`RELIST_CHUNK` objects while the next piece is being
normalised (one piece in flight), so the bus works on one piece while the watcher converts the
next; the DELETEs for objects that vanished follow once the whole listing has been seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.bus import reconnect_delay
from services.common.cancelling import raise_if_cancelled
from services.common.gcphase import BULK
from services.watcher import metrics
from services.watcher.kube import Gone, KubeError, KubeSource, WatchIdle
from services.watcher.state import (
    Action,
    Observation,
    PublishedIndex,
    RelistDiff,
    Report,
    decide_deleted,
    decide_present,
)

log = logging.getLogger(__name__)


# objects normalised between two yields to the event loop during a relist
RELIST_YIELD_EVERY = 200
# objects per published piece of a relist: the next piece is normalised while this one is sent
RELIST_CHUNK = 1000


class SinkError(RuntimeError):
    """Publishing stopped part-way; ``done`` are the actions the bus did accept."""

    def __init__(self, message: str, done: Sequence[Action]) -> None:
        super().__init__(message)
        self.done = list(done)


class Sink(Protocol):
    async def send(self, actions: Sequence[Action]) -> Sequence[Action]:
        """Publish in order; return the accepted actions or raise :class:`SinkError`."""
        ...


Normalise = Callable[[str, Any], Observation]


@dataclass(frozen=True, slots=True)
class WatchSettings:
    timeout_seconds: int = 300
    idle: float = 60.0
    backoff_cap: float = 5.0


class Reflector:
    """Keeps the bus in step with one kind; shares the :class:`PublishedIndex` with its siblings."""

    def __init__(
        self,
        kind: str,
        source: KubeSource,
        sink: Sink,
        index: PublishedIndex,
        normalise: Normalise,
        settings: WatchSettings | None = None,
    ) -> None:
        self.kind = kind
        self._source = source
        self._sink = sink
        self._index = index
        self._normalise = normalise
        self._settings = settings or WatchSettings()
        self.synced = asyncio.Event()
        self.resource_version: str | None = None

    async def run(self) -> None:
        """Reflect forever (until cancelled); never raises on bad input or a failing API."""
        reason, failures = "start", 0
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
            try:
                await self.relist(reason)
                failures = 0
                while True:
                    raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
                    await self.watch_once()
                    metrics.WATCH_RESTARTS.labels(self.kind).inc()
            except (Gone, WatchIdle) as exc:
                reason = "gone" if isinstance(exc, Gone) else "idle"
                log.info("%s: %s; relisting", self.kind, exc)
            except (KubeError, SinkError) as exc:
                reason = "error"
                delay = reconnect_delay(failures, base=0.1, cap=self._settings.backoff_cap)
                failures += 1
                log.warning("%s: %s; relisting in %.2fs", self.kind, exc, delay)
                await asyncio.sleep(delay)

    async def relist(self, reason: str) -> None:
        metrics.RELISTS.labels(self.kind, reason).inc()
        with BULK.phase():  # see services.common.gcphase
            await self._relist()

    async def _relist(self) -> None:
        listing = await self._source.list(self.kind)
        diff = RelistDiff(self._index, self.kind)
        items = listing.items
        sending: asyncio.Task[None] | None = None
        try:
            for start in range(0, len(items), RELIST_CHUNK):
                actions: list[Action] = []
                for i, item in enumerate(items[start : start + RELIST_CHUNK], 1):
                    actions.extend(diff.present(self._normalise(self.kind, item)))
                    if i % RELIST_YIELD_EVERY == 0:
                        # Normalising tens of thousands of objects takes seconds of CPU; yield so
                        # the previous chunk's publishes, the lease and the other kinds progress.
                        await asyncio.sleep(0)
                if sending is not None:
                    await sending  # at most one chunk in flight; a failure stops the relist
                sending = asyncio.create_task(self._apply(actions)) if actions else None
            if sending is not None:
                await sending
            await self._apply(diff.vanished())
        finally:
            if sending is not None and not sending.done():
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
        self.resource_version = listing.resource_version
        self.synced.set()

    async def watch_once(self) -> None:
        """One watch request from :attr:`resource_version` until the server ends it."""
        assert self.resource_version is not None, "watch before the first list"
        events = self._source.watch(
            self.kind,
            self.resource_version,
            timeout_seconds=self._settings.timeout_seconds,
            idle=self._settings.idle,
        )
        async for event in events:
            rv = _resource_version(event.obj)
            if event.type in ("ADDED", "MODIFIED"):
                await self._apply(
                    decide_present(self._index, self._normalise(self.kind, event.obj))
                )
            elif event.type == "DELETED":
                final = self._normalise(self.kind, event.obj)
                await self._apply(decide_deleted(self._index, final))
            elif event.type != "BOOKMARK":
                log.warning("%s: ignoring watch event of unknown type %r", self.kind, event.type)
            if rv:
                self.resource_version = rv

    async def _apply(self, actions: Sequence[Action]) -> None:
        if not actions:
            return
        for action in actions:
            if isinstance(action, Report):
                _log_invalid(action)
        try:
            done = await self._sink.send(actions)
        except SinkError as exc:
            self._record(exc.done)
            raise
        self._record(done)

    def _record(self, done: Sequence[Action]) -> None:
        for action in done:
            self._index.record(action)


def _log_invalid(report: Report) -> None:
    inv = report.invalid
    metrics.INVALID_OBJECTS.labels(inv.key.kind, metrics.field_label(inv.field)).inc()
    log.error(
        "invalid %s (uid %s, resourceVersion %s) skipped: field %s: %s",
        inv.key,
        inv.uid or "-",
        inv.resource_version or "-",
        inv.field or "-",
        inv.message,
    )


def _resource_version(obj: Any) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) and rv else None
