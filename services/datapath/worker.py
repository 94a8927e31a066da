"""The per-node datapath worker: bus in, eBPF map writes out, status back to the bus.

Lifecycle, and why: (1) open the maps (pinned eBPF maps via the loader, or in-memory fakes for
tests) and rebuild the reconciler's mirror and id allocators from them, so a restart renumbers
nothing and traffic keeps flowing on the old entries; (2) bootstrap from the bus with
last-per-subject snapshots of Services and EndpointSlices; (3) apply that full desired state
and only then prune, because before the snapshot is complete an entry missing from the model may
just not have been read yet; (4) consume from the snapshot's sequence on with a durable pull
consumer named after the node, coalescing what has arrived into one apply and acking only
after its writes succeeded (AckPolicy ALL: one ack, on the batch's last message, covers it).
Batches are small (``batch``) while the worker keeps up and large (``backlog_batch``) while its
feed holds a backlog, where fewer, larger applies cost less CPU per event (see ``BACKLOG``).
The consumer's pull requests stay outstanding (``services.common.pullfeed``), so the next
messages arrive while a batch is written and a single change costs no pull round trip.

Per-change fixed costs matter as much as per-message ones: ten workers share two cores in the
benchmark, so a millisecond per change per worker is ten per change. An apply of up to a
backlog batch's worth of frontends runs on the loop (see ``INLINE_APPLY``), the NodeStatus counts
the services map incrementally (``mapfill``) and is published without waiting for the stream's ack.

A full map is not a crash and not a reason to stop the stream: the frontends that did not fit
stay pending (retried on every batch and on idle ticks), the error is logged, counted and put in
the NodeStatus, and the batch is acked. Any other map error naks the batch for redelivery. A
message that is not a valid K8sEvent is logged with the object and field, counted, and acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry.trace import Span, StatusCode
from prometheus_client import Gauge
from pydantic import ValidationError

from contracts.subjects import (
    PREFIX,
    STREAM_K8S,
    SubjectError,
    escape_token,
    k8s_filter,
    parse_k8s_subject,
    status_subject,
)
from contracts.v1 import MapFill, NodeStatus
from services.common import tracing
from services.common.bus import MSG_ID_HEADER, Bus, connect_bus, provision
from services.common.cancelling import raise_if_cancelled
from services.common.consume import DurableSpec, ack_position, last_per_subject
from services.common.gcphase import BULK
from services.common.ops import OpsServer, start_ops_server
from services.common.pullfeed import ConsumerGoneError, PullFeed
from services.datapath import metrics as m
from services.datapath.decode import decode
from services.datapath.frontend import Frontend
from services.datapath.lbmap import LBMap
from services.datapath.loader import default_pin_dir
from services.datapath.mapfill import ServiceEntries
from services.datapath.mapsopen import OpenedMaps, open_maps
from services.datapath.model import Change, DesiredState
from services.datapath.policy_sync import SliceDirectory
from services.datapath.policyworker import PolicySidecar
from services.datapath.reconcile import ApplyResult, Reconciler
from services.datapath.settings import DatapathSettings
from services.datapath.writecount import WriteCounter

log = logging.getLogger(__name__)

KINDS = ("service", "endpointslice")
# The cyclic GC while consuming: with the default (700, 10, 10) a burst of 40,000 slices cost
# ~20 us per event in collections (gen0/1 every few hundred events, and full collections of
# every object created since the bootstrap's freeze, 100-130 ms each). Nearly everything the
# worker allocates is acyclic and freed by reference counting, so the net count of tracked
# objects stays far below 50,000 in steady state: collections become rare instead of constant.
STEADY_GC = (50_000, 20, 100)
# Frontends (changed + pending) an apply may write on the event loop itself; more go to a thread.
# A thread hop costs ~0.1 ms of CPU by itself, and the apply then runs on the other core, where
# the model and the mirror the batch just touched are not in its caches: at 10,000 Services an
# apply in the thread cost 5-10 us more CPU per event than the same apply on the loop (batches of
# 512), ~20 us more at batches of 32. Under the GIL the thread overlaps the loop only during the
# map syscalls (~3 us an event), so it bought little. The same holds for a backlog's batch of
# 2048 (see BACKLOG): handle_batch over the relist-shaped burst cost 49.6 us an event with its
# applies in the thread and 33.5 on the loop (41.7 in batches of 512; in process, real maps, no
# bus, best of 3).
# A full small batch (~15-35 us a frontend) keeps the loop for 10-20 ms, a backlog's 40-70 ms
# (only while the worker is behind anyway), which pings, statuses and the ops server absorb;
# larger applies (a re-sync, a burst of multi-port Services) still go to the thread.
INLINE_APPLY = 2048
GATHER_WAIT = 0.05  # seconds a backlog's batch waits for its next message before it is applied
# BACKLOG: a worker behind its stream (the burst of a relist: 1000 Services, then the 1000 slices
# of the same Services, ...) takes up to ``settings.backlog_batch`` messages per batch whenever
# more than ``settings.batch`` are buffered in its feed or still pending on the server. With
# batches of 512 a Service and its slice land in different batches, so each frontend is planned
# and written twice (without backends, then with them); with 2048 most are written once, and the
# per-batch costs (flush, apply, ack, status) are spread over four times the events. A worker that
# keeps up has nothing pending, so single changes still go out in batches of one. The feed holds
# only what the read loop parsed while the last batch was applied (~270 relist messages: about a
# socket buffer), so the backlog is read from the last message's pending count and the batch is
# topped up from the feed (see _gather_backlog). The larger apply stays on the loop (see
# INLINE_APPLY: in the thread it cost more than the batching saved).
_LB_SUBJECTS = tuple(f"{PREFIX}.k8s.{kind}." for kind in KINDS)
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9-]+")  # names that escape_token leaves as they are


def durable_name(node: str) -> str:
    return f"datapath-{escape_token(node)}"


class DatapathWorker:
    """The state of one node's worker; :meth:`run` drives it until cancelled."""

    def __init__(
        self,
        settings: DatapathSettings,
        bus: Bus,
        lbmap: LBMap,
        program_versions: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.node = settings.node_name
        self.bus = bus
        self.lbmap = lbmap
        self.model = DesiredState(self.node)
        self.writes = WriteCounter(lbmap)  # per-map entry counts for the trace spans
        self.reconciler = Reconciler(self.writes)  # mirror + allocators restored from the maps
        self.program_versions = program_versions or {}
        self.synced = False
        self.applied_seq = 0
        self.errors: list[str] = []  # the last apply's map errors + the model's problems
        self._apply_errors: list[str] = []
        self._gauges_stale = True
        self._seen: dict[str, int] = {}  # subject -> newest stream sequence absorbed
        # capacities never change under a running worker; entries come from the mirror, so a
        # status costs no map walk (a dump of 200,000 entries would cost ~100 ms per batch)
        self._capacity = {name: cap for name, (_n, cap) in lbmap.fill().items()}
        self._status_wanted = asyncio.Event()
        self._write_failed = False
        self.status_hooks: list[Callable[[NodeStatus], None]] = []  # e.g. the policy loop's
        self.slices = SliceDirectory()  # the policy loop names flows' Services from these
        self._entries = ServiceEntries()  # services-map entries without a walk per status
        self._status_subject = status_subject(self.node)
        self._map_gauges: dict[str, tuple[Gauge, Gauge, Gauge]] = {}  # per map: entries, cap, fill

    def ready(self) -> bool | str:
        return True if self.synced else "bootstrap from the bus not complete"

    async def run(self) -> None:
        status = asyncio.create_task(self._status_loop(), name=f"status-{self.node}")
        try:
            start = await self.bootstrap()
            await self.consume(start)
        finally:
            # nats-py can turn a cancellation into a timeout that publish() retries: never
            # wait on the status task for long (the status is best effort)
            status.cancel()
            await asyncio.wait({status}, timeout=1.0)

    def request_status(self) -> None:
        """Ask for a NodeStatus; bursts of batches coalesce into one publish per interval."""
        self._status_wanted.set()

    async def _status_loop(self) -> None:
        me = asyncio.current_task()
        while me is None or not me.cancelling():
            await self._status_wanted.wait()
            self._status_wanted.clear()
            if not self.synced:  # the mirror is being filled (the bootstrap asks once done), and
                continue  # reading it would wait on the loader child with the loop blocked
            try:
                await self.publish_status()
            except Exception:  # never lose the status loop to one bad status
                log.exception("%s: cannot build the node status", self.node)
            await asyncio.sleep(self.settings.status_interval)

    async def bootstrap(self) -> int:
        """Snapshot, full apply, prune. Returns the first stream sequence to consume."""
        js = self.bus.js
        started = time.perf_counter()
        # The bootstrap allocates a few million long-lived, acyclic objects: every collection
        # during it rescans them for nothing (~60-120 ms CPU of a cold sync even with rare
        # collections), so it is a bulk GC phase (services.common.gcphase): the cyclic GC is
        # off until it ends, and freezing the result afterwards keeps full collections from
        # walking the whole desired state on every later change. No young-generation pass at
        # its end: it would walk that whole state with the loop blocked (100-300 ms) just as
        # the node turns ready, to find a one-time ~2,000 objects of cyclic garbage.
        with BULK.phase(collect=False):
            return await self._bootstrap(js, started)

    async def _bootstrap(self, js: JetStreamContext, started: float) -> int:
        count = 0

        def absorb(msg: Msg) -> None:  # each message is decoded as it arrives, then dropped:
            nonlocal count  # raw messages of the whole snapshot never coexist with the model
            count += 1
            self._absorb(msg)

        snaps = await asyncio.gather(
            *(
                last_per_subject(js, STREAM_K8S, k8s_filter(kind), on_message=absorb)
                for kind in KINDS
            )
        )
        read = time.perf_counter()  # the snapshot's messages are read AND decoded by now
        # each kind's snapshot is complete up to its own sequence: resume after the older one
        first = min(snap.sequence for snap in snaps)
        self.applied_seq = max(self.applied_seq, first)
        self.model.flush()
        decoded = time.perf_counter()
        # the maps may still be in the making (loader child): wait here, then read the mirror
        await asyncio.to_thread(self.reconciler.load)
        restored = time.perf_counter()
        result = await asyncio.to_thread(self.reconciler.apply, self.model.frontends, prune=True)
        done = time.perf_counter()
        m.SYNC_DURATION.labels("full").observe(done - restored)
        for phase, seconds in (
            ("snapshot", read - started),
            ("model", decoded - read),
            ("maps", restored - decoded),
            ("apply", done - restored),
            ("sync", done - started),
        ):
            m.BOOTSTRAP.labels(phase).set(seconds)
        self._account(result)
        self._entries.invalidate()  # the full apply bypassed the incremental count
        self.synced = True
        log.info(
            "%s: full sync of %d objects in %.3fs (snapshot+decode %.3fs, model %.3fs, maps %.3fs,"
            " apply %.3fs): %d frontends, %d writes, %d errors",
            self.node,
            count,
            done - started,
            read - started,
            decoded - read,
            restored - decoded,
            done - restored,
            len(self.model.frontends),
            result.writes,
            len(result.errors),
        )
        self.request_status()
        return first + 1

    async def consume(self, start_seq: int) -> None:
        js = self.bus.js
        durable = durable_name(self.node)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(STREAM_K8S, durable)  # the snapshot covers its backlog
        small, largest = batch_sizes(self.settings)
        spec = DurableSpec(
            stream=STREAM_K8S,
            durable=durable,
            # one filter for every kind, the others skipped here: nats-server 2.15 delivers a
            # consumer with several filter subjects at ~6,400 messages/s and in dribbles (a
            # batch of one, mostly); with one filter, 60,000+/s in full batches
            filter_subjects=(k8s_filter(),),
            max_ack_pending=max(4 * largest, 1024),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=AckPolicy.ALL,  # a batch is applied as one: ack its last message
        )
        await js.add_consumer(STREAM_K8S, spec.config())
        thresholds = gc.get_threshold()
        gc.set_threshold(*STEADY_GC)
        # requests stay outstanding: the next messages arrive while a batch is applied, and a
        # single change costs no pull round trip (see services.common.pullfeed)
        feed = PullFeed(self.bus.nc, STREAM_K8S, durable, window=2 * largest)
        await feed.start()
        last_retry = time.monotonic()
        try:
            while True:
                raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
                try:
                    # a backlog (more than a batch here or behind it on the server) is taken
                    # in large batches; a worker that keeps up applies what came, in small ones
                    limit = largest if feed.buffered > small else small
                    msgs = await feed.next_batch(limit, wait=self.settings.fetch_timeout)
                    if msgs and largest > small:
                        msgs = await _gather_backlog(feed, msgs, small, largest)
                except ConsumerGoneError:
                    log.warning("%s: consumer %s vanished; recreating", self.node, durable)
                    spec = dataclasses.replace(spec, opt_start_seq=self.applied_seq + 1)
                    await js.add_consumer(STREAM_K8S, spec.config())
                    feed.reset()
                    continue
                except (nats.errors.Error, OSError) as exc:
                    log.warning("%s: fetch failed (%r); retrying", self.node, exc)
                    await asyncio.sleep(0.2)
                    continue
                if msgs:
                    await self.handle_batch(msgs)
                elif self.reconciler.pending and (
                    time.monotonic() - last_retry >= self.settings.retry_interval
                ):
                    last_retry = time.monotonic()
                    await self._apply(set(), "retry")
                    self.request_status()
        finally:
            gc.set_threshold(*thresholds)
            await feed.close()

    async def handle_batch(self, msgs: Sequence[Msg]) -> None:
        """Absorb every message, apply once, then ack (or nak the batch on a map error).

        With tracing on, each message gets its own CONSUMER span (child of its producer's
        context), open from absorb to ack, carrying what the batch's reconcile wrote and the
        network-programming latency of its change, so ``weir trace`` shows every node's work for
        that change. Without an exporter no span is started at all."""
        traced = tracing.enabled()
        spans: list[Span] = []
        if traced:
            attrs = {"weir.node": self.node, "weir.batch.size": len(msgs)}
            spans = [tracing.start_consumer_span(msg, attributes=attrs) for msg in msgs]
        try:
            seqs = [stream_seq(msg) for msg in msgs]
            events = [self._absorb(msg, seq) for msg, seq in zip(msgs, seqs, strict=True)]
            changed = self.model.flush()
            self.writes.take()
            result = await self._apply(changed, "incremental")
            maps = self.writes.take()
            if traced:
                _annotate(spans, events, result, maps)
            if result.errors and not result.full:
                for msg in msgs:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=self.settings.retry_interval)
                return
            _observe_programming(events)
            # AckPolicy.ALL: acking the batch's last message acks the whole batch, all of it
            # applied (one publish instead of one per message)
            await msgs[-1].ack()
        finally:
            for span in spans:
                span.end()
        self.applied_seq = max(self.applied_seq, *seqs)
        self.request_status()

    async def _apply(self, changed: set[Frontend], kind: str) -> ApplyResult:
        started = time.perf_counter()
        touched = changed | self.reconciler.pending
        before = self._entries.before(self.reconciler.realised, touched)
        if len(touched) <= INLINE_APPLY:
            # up to a batch's worth: cheaper on the loop than in a thread (see INLINE_APPLY)
            result = self.reconciler.apply(self.model.frontends, changed)
        else:
            result = await asyncio.to_thread(self.reconciler.apply, self.model.frontends, changed)
        self._entries.after(self.reconciler.realised, touched, before, ok=not result.errors)
        m.SYNC_DURATION.labels(kind).observe(time.perf_counter() - started)
        self._account(result)
        return result

    def _absorb(self, msg: Msg, seq: int | None = None) -> Change | None:
        """Decode one bus message into the model; skip stale or invalid ones (None)."""
        subject = msg.subject
        if not subject.startswith(_LB_SUBJECTS):
            return None  # a kind the LB loop does not read (see consume: one filter for all)
        if seq is None:
            seq = stream_seq(msg)
        if seq <= self._seen.get(subject, 0):
            return None  # already absorbed (snapshot or an earlier delivery)
        self._seen[subject] = seq
        try:
            event = decode(msg.data)
        except ValidationError as exc:
            self._bad(msg, exc)
            return None
        if _subject_of(event) != subject:
            log.error("%s: %s carries %s; skipped", self.node, subject, event.subject())
            m.BAD_MESSAGES.labels(event.kind).inc()
            return None
        self.model.apply(event)
        self.slices.absorb(event)
        return event

    def _bad(self, msg: Msg, exc: ValidationError) -> None:
        try:
            kind, ns, name = parse_k8s_subject(msg.subject)
            obj = f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
        except SubjectError:
            kind, obj = "unknown", msg.subject
        first = exc.errors()[0] if exc.errors() else None
        where = ".".join(str(p) for p in first["loc"]) if first else ""
        why = first["msg"] if first else str(exc)
        log.error("%s: invalid message for %s (seq %d): %s: %s; skipped", self.node, obj,
                  msg.metadata.sequence.stream, where or "<message>", why)  # fmt: skip
        m.BAD_MESSAGES.labels(kind).inc()

    def _account(self, result: ApplyResult) -> None:
        if result.errors or self._write_failed:  # full maps: room may have been made (a walk)
            self._capacity = {name: cap for name, (_n, cap) in self.lbmap.fill().items()}
        self._write_failed = bool(result.errors)
        m.MAP_WRITES.inc(result.writes)
        self._apply_errors = [e.message for e in result.errors]
        for err in result.errors:
            m.MAP_WRITE_ERRORS.labels(err.map_name, "full" if err.full else "error").inc()
            log.error("%s: map write failed for %s: %s", self.node, err.frontend, err.message)
        m.PENDING_FRONTENDS.set(len(self.reconciler.pending))
        self._gauges_stale = True

    def _refresh(self, fill: dict[str, tuple[int, int]]) -> None:
        """Gauges and :attr:`errors` from the mirror's ``fill`` and the model. The model's walk
        costs ~0.3 ms at 10,000 services, so it runs once per status (coalesced), not once per
        batch."""
        if not self._gauges_stale:
            return
        self._gauges_stale = False
        gauges = self._map_gauges
        for name, (entries, capacity) in fill.items():
            children = gauges.get(name)
            if children is None:  # labels() validates and locks on every call: once per map
                children = gauges[name] = (
                    m.MAP_ENTRIES.labels(name),
                    m.MAP_CAPACITY.labels(name),
                    m.MAP_FILL.labels(name),
                )
            children[0].set(entries)
            children[1].set(capacity)
            children[2].set(entries / capacity if capacity else 0.0)
        counts = self.model.counts()
        m.SERVICES.set(counts["services"])
        m.FRONTENDS.set(counts["frontends"])
        m.BACKENDS.set(counts["backends"])
        problems = self.model.problems()
        m.MODEL_ERRORS.set(len(problems))
        self.errors = self._apply_errors + problems

    def fill(self) -> dict[str, tuple[int, int]]:
        """(entries, capacity) per LB map, as the mirror knows them (rebuilt from the maps
        after any failed write, so it does not drift)."""
        r = self.reconciler.realised
        if not self.synced:  # the bootstrap applies without telling the incremental count
            self._entries.invalidate()
        services = self._entries.count(r)
        entries = {
            "services": services,
            "backends": len(r.backends),
            "revnat": len(r.revnat),
            "frontends": len(r.frontend_values),
        }
        return {name: (entries.get(name, 0), cap) for name, cap in self._capacity.items()}

    def status(self) -> NodeStatus:
        fill = self.fill()  # counted incrementally: no walk of the mirror per status
        self._refresh(fill)
        status = NodeStatus(
            node=self.node,
            applied={STREAM_K8S: self.applied_seq},
            maps={k: MapFill(entries=e, capacity=c) for k, (e, c) in fill.items()},
            program_versions=self.program_versions,
            errors=self.errors[:100],
            time=datetime.now(UTC),
        )
        for hook in self.status_hooks:
            hook(status)
        return status

    async def publish_status(self) -> None:
        """Publish the NodeStatus without waiting for the stream's ack: the status is best
        effort and superseded by the next one, and the ack wait cost a round trip and an extra
        wake-up of the loop per status (one per change under steady churn). The deterministic
        msg id still dedups identical statuses."""
        m.APPLIED_SEQUENCE.set(self.applied_seq)
        status = self.status()
        body = status.model_dump_json(exclude={"time"}).encode()
        msg_id = f"status/{self.node}/{self.applied_seq}/{hashlib.sha256(body).hexdigest()[:16]}"
        try:
            await self.bus.nc.publish(
                self._status_subject,
                status.model_dump_json().encode(),
                headers=tracing.inject({MSG_ID_HEADER: msg_id}),
            )
        except Exception as exc:  # status is best effort; the maps are what matters
            log.warning("%s: cannot publish status: %r", self.node, exc)


async def _gather_backlog(feed: PullFeed, msgs: list[Msg], small: int, largest: int) -> list[Msg]:
    """``msgs`` topped up to ``largest`` while a backlog is behind them (see BACKLOG): more than
    ``small`` messages buffered or still pending on the server (the last message's ack subject
    says how many). The feed buffers only what the read loop parsed between two batches (about
    a socket buffer's worth, ~270 relist messages), so a backlog would otherwise be applied in
    batches of that size; here the loop reads on while the batch grows. Nothing pending: as is
    (a single change stays a batch of one). A fetch error ends the gathering, not the batch."""
    while len(msgs) < largest:
        pending = pending_count(msgs[-1])
        if not pending or len(msgs) + feed.buffered + pending <= small:
            break
        try:
            more = await feed.next_batch(largest - len(msgs), wait=GATHER_WAIT)
        except (nats.errors.Error, OSError):
            break
        if not more:
            break
        msgs += more
    return msgs


def pending_count(msg: Msg) -> int:
    """Messages of the consumer still on the server after ``msg`` (:func:`ack_position`; 0 when
    ``msg`` carries no JetStream position: then nothing is gathered)."""
    try:
        return ack_position(msg)[1]
    except (ValueError, nats.errors.Error):  # not a JetStream message (no metadata)
        return 0


def batch_sizes(settings: DatapathSettings) -> tuple[int, int]:
    """(the batch of a worker that keeps up, the batch under a backlog), see BACKLOG. The feed
    keeps twice the larger one requested and the consumer lets four times it be unacked: a
    large batch being applied plus the next one arriving never wait on ``max_ack_pending``."""
    small = max(1, settings.batch)
    return small, max(small, settings.backlog_batch)


def stream_seq(msg: Msg) -> int:
    """A JetStream message's stream sequence (see :func:`services.common.consume.ack_position`,
    which reads it from the ack subject instead of building ``Msg.metadata``). Once per message:
    the plain ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.
    <pending>`` form with ASCII-digit sequence and pending tokens (which ``int`` always reads as
    ``ack_position`` does) is read here without its ``contextlib.suppress`` (~1 us a message);
    anything else goes through ``ack_position``."""
    reply = msg.reply
    if reply and reply.startswith("$JS.ACK."):
        tokens = reply.split(".")
        if len(tokens) == 9:
            seq, pending = tokens[5], tokens[8]
            if seq.isascii() and seq.isdigit() and pending.isascii() and pending.isdigit():
                return int(seq)
    return ack_position(msg)[0]


def _subject_of(change: Change) -> str:
    """``change.subject()`` without escaping names that need none (most): ~3 us per message."""
    ns, name = change.namespace, change.name
    if ns and _PLAIN_TOKEN.fullmatch(ns) and _PLAIN_TOKEN.fullmatch(name):
        return f"{PREFIX}.k8s.{change.kind}.{ns}.{name}"
    return change.subject()


def _observe_programming(events: Sequence[Change | None]) -> None:
    """API change -> maps written on this node, per object (the watcher's clock vs ours); the
    batch's observations in one go (``metrics.observe_many``), not one observe per event."""
    now = time.time()
    m.observe_many(
        m.NETWORK_PROGRAMMING,
        [max(0.0, now - event.observed_at) for event in events if event is not None],
    )


def _annotate(
    spans: Sequence[Span],
    events: Sequence[Change | None],
    result: ApplyResult,
    maps: dict[str, int],
) -> None:
    """Trace attributes of one applied batch on each message's span."""
    now = time.time()
    shared: dict[str, Any] = {
        "weir.entries_written": result.writes,
        "weir.maps_touched": list(maps),
    }
    shared.update({f"weir.map.{name}.entries_written": n for name, n in maps.items()})
    for span, event in zip(spans, events, strict=True):
        if event is None:  # one set_attributes per span: each call takes the span's lock
            span.set_attributes({**shared, "weir.skipped": True})
            continue
        span.set_attributes({
            **shared,
            "weir.object": f"{event.kind}/{event.namespace or '-'}/{event.name}",
            "weir.op": event.op.value,
            "weir.network_programming_seconds": now - event.observed_at,
        })  # fmt: skip
        if result.errors:
            span.set_status(StatusCode.ERROR, result.errors[0].message)


def process_age() -> float:
    """Seconds since this process started (from /proc: includes interpreter start-up)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    return float(Path("/proc/uptime").read_text().split()[0]) - start


async def run_datapath(
    settings: DatapathSettings, *, lbmap: LBMap | None = None, opened: OpenedMaps | None = None
) -> None:
    """Run one node's worker until cancelled. ``opened``: the node's maps, already being opened
    (``weir datapath`` starts the loader child before it imports this module); None: open them
    here. ``lbmap`` overrides the maps (tests pass a fake that outlives the worker, like pinned
    maps outlive a process) and runs the LB loop alone."""
    owned = lbmap is None  # tests passing their own maps run the LB loop alone
    if lbmap is not None:
        opened = OpenedMaps(lbmap)
    elif opened is None:
        opened = open_maps(settings)
    if owned:
        m.BOOTSTRAP.labels("start").set(process_age())
    bus: Bus | None = None
    ops: OpsServer | None = None
    try:
        bus = await connect_bus(settings.nats_url, f"datapath-{settings.node_name}")
        await provision(bus.js)
        worker = DatapathWorker(settings, bus, opened.lbmap, opened.program_versions)
        policy = PolicySidecar(
            bus,
            worker,
            node=settings.node_name,
            maps_kind=settings.maps,
            pin_dir=Path(settings.pin_dir) if settings.pin_dir else default_pin_dir(worker.node),
            netns=settings.netns,
            enabled=settings.policy and owned,
            compile_after=opened.loaded,  # one bcc compile at a time (services.datapath.mapsopen)
        )
        ops = await start_ops_server(settings.metrics_listen, ready=policy.ready(worker.ready))
        await policy.run_with(worker.run())  # the policy loop runs beside the LB loop
    finally:
        if ops is not None:
            await ops.close()
        if bus is not None:
            await bus.close()
        opened.close()
