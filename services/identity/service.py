"""``weir identity`` at run time: bootstrap, consume Pod/Namespace events, allocate, publish.

Why this shape:
- Each allocator instance has its OWN durable consumer (``identity-<instance>``), not a shared
  one: every instance needs every pod and namespace event (namespace relabels re-identify all
  pods of the namespace; per-pod ordering must hold). Several instances then publish the same
  Identity/IPCache messages; their ``Nats-Msg-Id`` is derived only from bus data (identity number
  + KV incarnation; IP + identity + pod + triggering K8s stream sequence), so JetStream drops the
  copies. The KV protocol (:mod:`services.identity.allocator`) keeps the numbers consistent.
- Start-up: provision, rebuild the allocator cache from the KV, snapshot namespaces and pods
  (last message per subject) and the published ipcache, publish only the difference (including
  tombstones for IPs of pods that vanished while no allocator ran), then consume from just after
  the namespace snapshot (the instance's old durable is deleted first: the snapshot supersedes
  its position). Older messages per subject are skipped (:class:`ClusterState`).
- A message is acked (by :func:`consume`) only after its KV writes and publishes succeeded; any
  bus or KV failure raises and the message is redelivered. Bad input (an invalid event, an
  oversized label set) is logged and counted, and the pod loses its identity and ipcache entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from contracts import subjects as s
from contracts.v1 import Identity, IPCacheEntry, K8sEvent, Op
from services.common import tracing
from services.common.bus import Bus, consume, last_per_subject, provision, publish
from services.common.cancelling import raise_if_cancelled
from services.identity import metrics
from services.identity.allocator import Allocator
from services.identity.labels import (
    DEFAULT_FILTER,
    MAX_CANONICAL_BYTES,
    MAX_SECURITY_LABELS,
    LabelFilter,
    LabelSetError,
    security_labels,
)
from services.identity.state import ClusterState, IPCacheTable, IPEntry, PodView, pod_entries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    instance: str = "identity-0"
    label_filter: LabelFilter = DEFAULT_FILTER
    gc_interval: float = 5.0
    max_labels: int = MAX_SECURITY_LABELS
    max_bytes: int = MAX_CANONICAL_BYTES


class IdentityService:
    """Derives identities for pods and publishes Identity and IPCache messages."""

    def __init__(self, bus: Bus, allocator: Allocator, config: ServiceConfig) -> None:
        self.bus = bus
        self.allocator = allocator
        self.config = config
        self.state = ClusterState()
        self.ipcache = IPCacheTable()
        self.ready = False
        self._start_seq = 1

    @property
    def durable(self) -> str:
        return f"identity-{s.escape_token(self.config.instance)}"

    # ---- start-up -------------------------------------------------------------------------

    async def bootstrap(self) -> None:
        await provision(self.bus.js)
        # the snapshot below replaces whatever the old durable had left: start it afresh after it
        with contextlib.suppress(NotFoundError):
            await self.bus.js.delete_consumer(s.STREAM_K8S, self.durable)
        await self.allocator.start()
        await self._load_ipcache()
        ns_snap = await last_per_subject(self.bus.js, s.STREAM_K8S, s.k8s_filter("namespace"))
        pod_snap = await last_per_subject(self.bus.js, s.STREAM_K8S, s.k8s_filter("pod"))
        for msg in ns_snap.messages + pod_snap.messages:
            with tracing.consumer_span(msg, operation="bootstrap"):
                await self.handle(msg)
        for entry in self.ipcache.orphans(set(self.state.pods)):
            await self._publish_ip(entry, None, seq=ns_snap.sequence, at=_now())
        self._start_seq = ns_snap.sequence + 1
        self.ready = True
        log.info(
            "bootstrapped: %d namespaces, %d pods, %d ipcache entries; consuming from seq %d",
            len(self.state.namespaces),
            len(self.state.pods),
            len(self.ipcache.entries),
            self._start_seq,
        )

    async def _load_ipcache(self) -> None:
        snap = await last_per_subject(self.bus.js, s.STREAM_IDENTITY, f"{s.PREFIX}.ipcache.>")
        published: dict[str, IPEntry] = {}
        for msg in snap.messages:
            try:
                entry = IPCacheEntry.model_validate_json(msg.data)
            except ValidationError as exc:
                log.warning("ignoring unreadable ipcache message on %s: %s", msg.subject, exc)
                continue
            if entry.op is Op.UPSERT and entry.identity is not None and entry.pod_name:
                published[entry.ip] = IPEntry(
                    entry.ip,
                    entry.identity,
                    f"{entry.namespace}/{entry.pod_name}",
                    entry.node_name,
                    entry.host_ip,
                    entry.resource_version,
                )
        self.ipcache.load(published)

    async def run(self) -> None:
        """Consume until cancelled, collecting garbage alongside."""
        gc_task = asyncio.create_task(self._gc_loop(), name="identity-gc")
        try:
            await consume(
                self.bus.js,
                stream=s.STREAM_K8S,
                durable=self.durable,
                filter_subjects=[s.k8s_filter("pod"), s.k8s_filter("namespace")],
                handler=self.handle,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._start_seq,
            )
        finally:
            gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gc_task

    # ---- one message ----------------------------------------------------------------------

    async def handle(self, msg: Msg) -> None:
        seq = _sequence(msg)
        if self.state.is_stale(msg.subject, seq):
            return
        try:
            event = K8sEvent.model_validate_json(msg.data)
        except ValidationError as exc:
            metrics.REJECTED.labels("bad_event").inc()
            log.error("ignoring invalid K8sEvent on %s (seq %d): %s", msg.subject, seq, exc)
            return
        for key in self.state.apply(event, seq):
            await self._reconcile_pod(key, seq, event.observed_at)

    async def _reconcile_pod(self, key: str, seq: int, at: datetime) -> None:
        view = self.state.pods.get(key)
        identity: int | None = None
        if view is None:
            previous = await self.allocator.release(key)
            log.debug("pod %s gone (identity %s)", key, previous)
        else:
            identity = await self._identify(view, at)
        upserts, deletes = self.ipcache.set_owner(key, pod_entries(view, identity) if view else [])
        for entry in deletes:
            await self._publish_ip(entry, None, seq=seq, at=at)
        for entry in upserts:
            await self._publish_ip(entry, view, seq=seq, at=at)

    async def _identify(self, view: PodView, at: datetime) -> int | None:
        try:
            labels = security_labels(
                pod=view.name,
                namespace=view.namespace,
                pod_labels=view.pod.labels,
                namespace_labels=self.state.namespaces.get(view.namespace),
                service_account=view.pod.service_account,
                label_filter=self.config.label_filter,
                max_labels=self.config.max_labels,
                max_bytes=self.config.max_bytes,
            )
            # validate the labels against the Identity contract before allocating a number
            message = Identity(id=1, labels=list(labels.labels), observed_at=at)
        except (LabelSetError, ValidationError) as exc:
            metrics.REJECTED.labels("labels").inc()
            log.error("pod %s: no identity: %s", view.key, exc)
            await self.allocator.release(view.key)
            return None
        acquired = await self.allocator.acquire(view.key, labels)
        if acquired.first:
            message = message.model_copy(update={"id": acquired.identity})
            msg_id = f"identity/{acquired.identity}/{acquired.incarnation}/UPSERT"
            await publish(self.bus.js, message.subject(), message, msg_id=msg_id)
        return acquired.identity

    async def _publish_ip(
        self, entry: IPEntry, view: PodView | None, *, seq: int, at: datetime
    ) -> None:
        namespace, _, pod_name = entry.owner.partition("/")
        if view is None:  # tombstone
            message = IPCacheEntry(
                ip=entry.ip,
                op=Op.DELETE,
                namespace=namespace,
                pod_name=pod_name,
                observed_at=at,
            )
        else:
            message = IPCacheEntry(
                ip=entry.ip,
                identity=entry.identity,
                namespace=namespace,
                pod_name=pod_name,
                node_name=entry.node_name,
                host_ip=entry.host_ip,
                resource_version=entry.resource_version,
                observed_at=at,
            )
        msg_id = (
            f"ipcache/{entry.ip}/{message.identity or 0}/{entry.owner}/{seq}/{message.op.value}"
        )
        await publish(self.bus.js, message.subject(), message, msg_id=msg_id)

    # ---- garbage collection ---------------------------------------------------------------

    async def collect_garbage(self) -> list[int]:
        collected = await self.allocator.gc()
        for c in collected:
            message = Identity(id=c.identity, labels=[], op=Op.DELETE, observed_at=_now())
            msg_id = f"identity/{c.identity}/{c.incarnation}/DELETE"
            await publish(self.bus.js, message.subject(), message, msg_id=msg_id)
        return [c.identity for c in collected]

    async def _gc_loop(self) -> None:
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
            await asyncio.sleep(self.config.gc_interval)
            try:
                await self.collect_garbage()
            except Exception as exc:  # the bus may be reconnecting: try again next round
                log.warning("identity GC round failed: %r", exc)


def _sequence(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # not a JetStream message (never on our consumers)
        return 0


def _now() -> datetime:
    return datetime.now(UTC)
