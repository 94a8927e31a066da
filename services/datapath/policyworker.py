"""The worker's policy loop: bus state -> NetworkPolicy resolution -> policy maps, and flows out.

Why it runs beside the LB loop and not inside it: the two share only the process, the bus
connection, the NodeStatus and the EndpointSlices. Policy needs other inputs (pods,
NetworkPolicies, identities, ipcache entries; EndpointSlices only to name a flow's Service),
other maps and other failure handling, and keeping it a sibling task lets the LB loop's hot path
stay as it is. The slices come from a ``SliceDirectory`` the LB loop fills as it absorbs them: it
decodes every slice anyway, so beside it this loop neither consumes nor decodes slices (alone,
e.g. in tests, it consumes and decodes them itself).

Lifecycle, like the LB loop's: (1) dump the realised policy maps into an in-memory mirror and
restore the stable numbering from them (CIDR identities from the ipcache, endpoint ids from the
endpoints map by interface), so a restart rewrites nothing; (2) snapshot WEIR_K8S (pod,
networkpolicy[, endpointslice]) and WEIR_IDENTITY (identity, ipcache) last-per-subject; (3) one
full sync — its diff against the dump is the prune; (4) a durable pull consumer per stream.
Every fetched message is absorbed at once and gets a CONSUMER span (so a Pod change's trace
reaches every node); an applier coalesces bursts (``coalesce`` seconds) into one sync and acks
the messages only after their writes succeeded (a write error naks them; a full map is retried
on a timer and acked, as in the LB loop, since the desired state is held here).

One sync: find the node's pods (``policy_sync``), look their host-side interfaces up in the
node netns (``policy_sync_net``), attach the tc programs to interfaces not seen before, assign
endpoint ids, resolve (``policy.resolve``), write the diff in the safe order
(``policy_sync.plan_writes``). A local pod whose interface is not there yet, or whose attach
failed, is an issue and makes the applier retry every ``retry_interval``.

Flows: ``flows_pub`` reads the ring buffer in a thread and publishes in batches; the names come
from this loop's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry.trace import Span, StatusCode
from pydantic import ValidationError

from contracts.subjects import (
    PREFIX,
    STREAM_IDENTITY,
    STREAM_K8S,
    escape_token,
    k8s_filter,
)
from contracts.v1 import Identity, IPCacheEntry, K8sEvent, MapFill, NodeStatus
from services.common import tracing
from services.common.bus import Bus, Outgoing, last_per_subject, publish_batch
from services.common.cancelling import raise_if_cancelled
from services.common.consume import DurableSpec
from services.common.pullfeed import ConsumerGoneError, PullFeed
from services.datapath import policy_sync_metrics as pm
from services.datapath.decode import decode
from services.datapath.flows import FlowNames, identity_labels
from services.datapath.flows_pub import FlowPublisher, RingReader
from services.datapath.lbmap import MapError, MapFullError
from services.datapath.model import SliceView
from services.datapath.policy import resolve
from services.datapath.policy_cidr import CidrAllocator, CidrExhaustedError
from services.datapath.policy_sync import (
    EndpointIds,
    EndpointIdsExhaustedError,
    PolicyInputs,
    SliceDirectory,
    SliceIndex,
    apply_plan,
    local_endpoints,
    plan_writes,
)
from services.datapath.policy_sync_net import Interfaces, NetnsInterfaces, StaticInterfaces
from services.datapath.policymap import PolicyMaps, PolicyState

log = logging.getLogger(__name__)

K8S_KINDS = ("pod", "networkpolicy", "endpointslice")
IDENTITY_FILTERS = (f"{PREFIX}.identity.>", f"{PREFIX}.ipcache.>")
_IDENTITY_PREFIX = f"{PREFIX}.identity."
_SLICE_PREFIX = f"{PREFIX}.k8s.endpointslice."


class StatusHost(Protocol):
    """What the policy loop needs from the LB worker: a way to publish NodeStatus."""

    def request_status(self) -> None: ...


@dataclass(frozen=True)
class PolicyConfig:
    node: str
    coalesce: float = 0.01
    batch: int = 512
    fetch_timeout: float = 5.0  # nothing to do between messages: the feed renews requests
    retry_interval: float = 0.25


def durable_name(node: str) -> str:
    return f"policy-{escape_token(node)}"


@dataclass
class _Pending:
    msg: Msg
    span: Span


class PolicyWorker:
    """One node's policy loop; :meth:`run` drives it until cancelled."""

    def __init__(
        self,
        cfg: PolicyConfig,
        bus: Bus,
        maps: PolicyMaps,
        interfaces: Interfaces,
        *,
        on_applied: Callable[[], None] = lambda: None,
        slices: SliceDirectory | None = None,
    ) -> None:
        self.cfg = cfg
        self.slices = slices  # the LB loop's slices; None: consume them here
        self.k8s_kinds = K8S_KINDS if slices is None else K8S_KINDS[:2]
        self.node = cfg.node
        self.bus = bus
        self.maps = maps
        self.interfaces = interfaces
        self.on_applied = on_applied
        self.inputs = PolicyInputs()
        self.cidr = CidrAllocator()
        self.ids = EndpointIds()
        self.mirror = PolicyState()
        self.attached: set[int] = set()
        self.issues: list[str] = []
        self.applied: dict[str, int] = {STREAM_K8S: 0, STREAM_IDENTITY: 0}
        self.synced = False
        self.syncs = 0
        self.flows: FlowPublisher | None = None
        self._capacity: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._pending: list[_Pending] = []
        self._dirty = asyncio.Event()
        self._retry = False

    def ready(self) -> bool | str:
        return True if self.synced else "policy bootstrap from the bus not complete"

    # --- status -------------------------------------------------------------------------------

    def fill(self) -> dict[str, tuple[int, int]]:
        m = self.mirror
        entries = {
            "policy_endpoints": len(m.endpoints),
            "policy_ipcache": len(m.ipcache),
            "policy_rules": len(m.policy),
        }
        return {k: (v, self._capacity.get(k, v)) for k, v in entries.items()}

    def extend_status(self, status: NodeStatus) -> None:
        """Add the policy maps, stream positions, flow counters and issues to a NodeStatus."""
        for name, (entries, capacity) in self.fill().items():
            status.maps[name] = MapFill(entries=min(entries, capacity), capacity=capacity)
        status.applied[STREAM_IDENTITY] = self.applied[STREAM_IDENTITY]
        status.errors.extend(self.issues[:50])
        f = self.flows
        if f is not None and (f.lost or f.dropped or f.malformed or f.reader_malformed):
            status.errors.append(
                f"flows: {f.lost} events lost in the datapath, {f.dropped} dropped, "
                f"{f.malformed + f.reader_malformed} malformed"
            )
        status.program_versions.setdefault("policy", "v1")

    def flow_names(self) -> FlowNames:
        inputs = self.inputs

        def pod_of(ip: str) -> tuple[str, str] | None:
            entry = inputs.ipcache.get(ip)
            if entry is None or not entry.namespace or not entry.pod_name:
                return None
            return entry.namespace, entry.pod_name

        def labels_of(identity: int) -> list[str]:
            known = inputs.identities.get(identity, ())
            cidr = next((p for p, i in self.cidr.assignments.items() if i == identity), None)
            return identity_labels(identity, known, cidr)

        service_of = inputs.service_of if self.slices is None else self.slices.service_of
        return FlowNames(pod_of, labels_of, service_of)

    # --- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        starts = await self.bootstrap()
        tasks = [
            asyncio.create_task(self._applier(), name=f"policy-apply-{self.node}"),
            asyncio.create_task(
                self._consume(STREAM_K8S, tuple(k8s_filter(k) for k in self.k8s_kinds), starts[0]),
                name=f"policy-k8s-{self.node}",
            ),
            asyncio.create_task(
                self._consume(STREAM_IDENTITY, IDENTITY_FILTERS, starts[1]),
                name=f"policy-identity-{self.node}",
            ),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a loop that died raises here
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._end_pending(ack=False)

    async def bootstrap(self) -> tuple[int, int]:
        """Restore from the maps, snapshot both streams, full sync. Returns start sequences."""
        self.mirror = await asyncio.to_thread(self.maps.dump)
        self._capacity = {
            f"policy_{'rules' if k == 'policy' else k}": cap
            for k, (_n, cap) in (await asyncio.to_thread(self.maps.fill)).items()
        }
        self.cidr.restore({k.cidr: v for k, v in self.mirror.ipcache.items()})
        self.ids.restore(self.mirror.endpoints)
        js = self.bus.js
        k8s = await asyncio.gather(
            *(last_per_subject(js, STREAM_K8S, k8s_filter(k)) for k in self.k8s_kinds)
        )
        ident = await asyncio.gather(
            *(last_per_subject(js, STREAM_IDENTITY, f) for f in IDENTITY_FILTERS)
        )
        for snaps in (k8s, ident):
            msgs = sorted((m for s in snaps for m in s.messages), key=_seq)
            for msg in msgs:
                self._absorb(msg)
        k8s_seq, ident_seq = min(s.sequence for s in k8s), min(s.sequence for s in ident)
        await self.sync()
        self.applied = {STREAM_K8S: k8s_seq, STREAM_IDENTITY: ident_seq}
        self.synced = True
        log.info(
            "%s: policy bootstrap: %d pods, %d policies, %d identities, %d ipcache; "
            "%d endpoints, %d rules",
            self.node,
            len(self.inputs.pods),
            len(self.inputs.policies),
            len(self.inputs.identities),
            len(self.inputs.ipcache),
            len(self.mirror.endpoints),
            len(self.mirror.policy),
        )
        self.on_applied()
        return k8s_seq + 1, ident_seq + 1

    async def _consume(self, stream: str, filters: tuple[str, ...], start_seq: int) -> None:
        js = self.bus.js
        durable = durable_name(self.node)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, durable)  # the snapshot covers its backlog
        spec = DurableSpec(
            stream=stream,
            durable=durable,
            filter_subjects=filters,
            max_ack_pending=max(4 * self.cfg.batch, 1024),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
        )
        await js.add_consumer(stream, spec.config())
        # requests stay outstanding (services.common.pullfeed): no pull round trip per change,
        # and an idle loop costs one renewed request per expiry instead of a fetch per timeout
        feed = PullFeed(self.bus.nc, stream, durable, window=2 * self.cfg.batch)
        await feed.start()
        try:
            while True:
                raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
                try:
                    msgs = await feed.next_batch(self.cfg.batch, wait=self.cfg.fetch_timeout)
                except ConsumerGoneError:
                    log.warning("%s: consumer %s on %s vanished", self.node, durable, stream)
                    spec = dataclasses.replace(spec, opt_start_seq=self.applied[stream] + 1)
                    await js.add_consumer(stream, spec.config())
                    feed.reset()
                    continue
                except (nats.errors.Error, OSError) as exc:
                    log.warning("%s: policy fetch on %s failed (%r)", self.node, stream, exc)
                    await asyncio.sleep(0.2)
                    continue
                if not msgs:
                    continue
                attrs = {
                    "weir.node": self.node,
                    "weir.loop": "policy",
                    "weir.batch.size": len(msgs),
                }
                for msg in msgs:
                    span = tracing.start_consumer_span(msg, attributes=attrs)
                    what = self._absorb(msg)
                    if what:
                        span.set_attribute("weir.object", what)
                    else:
                        span.set_attribute("weir.skipped", True)
                    self._pending.append(_Pending(msg, span))
                self._dirty.set()
        finally:
            await feed.close()

    def _absorb(self, msg: Msg) -> str | None:
        """Decode one message into the inputs; a short description, or None when skipped."""
        seq = _seq(msg)
        if seq <= self._seen.get(msg.subject, 0):
            return None
        self._seen[msg.subject] = seq
        stream = msg.metadata.stream
        try:
            if stream == STREAM_K8S and msg.subject.startswith(_SLICE_PREFIX):
                change = decode(msg.data)  # the fast path: 10,000s of slices at bootstrap
                if change.subject() != msg.subject:
                    raise ValueError(f"carries {change.subject()}")
                view = change.obj if isinstance(change.obj, SliceView) else None
                index = SliceIndex.of_view(view, change.owner) if view is not None else None
                self.inputs.absorb_slice((change.namespace, change.name), index)
                return f"endpointslice/{change.namespace}/{change.name}"
            if stream == STREAM_K8S:
                event = K8sEvent.model_validate_json(msg.data)
                if event.subject() != msg.subject:
                    raise ValueError(f"carries {event.subject()}")
                self.inputs.absorb_k8s(event)
                return f"{event.kind}/{event.namespace or '-'}/{event.name}"
            if msg.subject.startswith(_IDENTITY_PREFIX):
                ident = Identity.model_validate_json(msg.data)
                self.inputs.absorb_identity(ident)
                return f"identity/{ident.id}"
            entry = IPCacheEntry.model_validate_json(msg.data)
            self.inputs.absorb_ipcache(entry)
            return f"ipcache/{entry.ip}"
        except (ValidationError, ValueError) as exc:
            where, why = _first_error(exc)
            log.error(
                "%s: invalid message on %s (seq %d): %s: %s; skipped",
                self.node, msg.subject, seq, where, why,
            )  # fmt: skip
            pm.POLICY_BAD_MESSAGES.labels(stream).inc()
            return None

    async def _applier(self) -> None:
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
            if self._retry:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), self.cfg.retry_interval)
            else:
                await self._dirty.wait()
            await asyncio.sleep(self.cfg.coalesce)
            self._dirty.clear()
            batch, self._pending = self._pending, []
            ok = await self.sync()
            for p in batch:
                try:
                    if ok:
                        await p.msg.ack()
                    else:
                        p.span.set_status(StatusCode.ERROR, "policy map write failed")
                        await p.msg.nak(delay=self.cfg.retry_interval)
                except Exception as exc:  # the connection may be gone; redelivery covers it
                    log.debug("%s: ack failed: %r", self.node, exc)
                p.span.set_attribute("weir.entries_written", self._last_writes)
                p.span.end()
                if ok:
                    stream = p.msg.metadata.stream
                    self.applied[stream] = max(self.applied.get(stream, 0), _seq(p.msg))
            self.on_applied()

    def _end_pending(self, *, ack: bool) -> None:
        for p in self._pending:
            p.span.set_attribute("weir.ack", ack)
            p.span.end()
        self._pending = []

    _last_writes = 0

    async def sync(self) -> bool:
        """One resolution and write; False when a map write failed (the caller naks)."""
        started = time.perf_counter()
        issues: list[str] = []
        self._retry = False
        local = self.inputs.local_pods(self.node)
        routes: dict[str, int] = {}
        if local:
            try:
                routes = await self.interfaces.routes()
            except Exception as exc:
                issues.append(f"node {self.node}: netns: cannot read routes: {exc}")
                self._retry = True
        wanted: dict[str, int] = {}
        for p in local:
            ifindex = routes.get(p.ip)
            if ifindex is None:
                issues.append(f"pod {p.ref}: interface: no route to {p.ip} in the node netns")
                self._retry = True
                continue
            if ifindex not in self.attached:
                try:
                    await self.interfaces.attach(ifindex)
                except Exception as exc:
                    issues.append(f"pod {p.ref}: interface {ifindex}: attach failed: {exc}")
                    self._retry = True
                    continue
                self.attached.add(ifindex)
            wanted[p.ref] = ifindex
        self.attached &= set(routes.values())  # a vanished veth takes its filters with it
        claimed = set(wanted.values())
        avoid = {
            v.endpoint_id for k, v in self.mirror.endpoints.items() if k.ifindex not in claimed
        }
        try:
            ids = self.ids.assign(wanted, avoid)
        except EndpointIdsExhaustedError as exc:
            issues.append(str(exc))
            ids = {}
        policies = self.inputs.policy_refs()
        identities = dict(self.inputs.identities)
        pods = self.inputs.cluster_pods()
        endpoints = local_endpoints(local, wanted, ids)
        ok = True
        try:
            writes, found = await asyncio.to_thread(
                self._resolve_and_write, policies, endpoints, identities, pods
            )
            issues.extend(found)
            self._last_writes = writes
            pm.POLICY_WRITES.inc(writes)
        except MapError as exc:
            pm.POLICY_WRITE_ERRORS.labels(exc.map_name).inc()
            log.error("%s: policy map write failed: %s", self.node, exc)
            issues.append(f"policy map {exc}")
            self._retry = True
            ok = isinstance(exc, MapFullError)
            self.mirror = await asyncio.to_thread(self.maps.dump)
        except CidrExhaustedError as exc:
            issues.append(str(exc))
            self._retry = True
        self.issues = issues
        self.syncs += 1
        pm.POLICY_RESOLVE.observe(time.perf_counter() - started)
        pm.POLICY_ISSUES.set(len(issues))
        pm.POLICY_ENDPOINTS.set(len(self.mirror.endpoints))
        for name, (entries, capacity) in self.fill().items():
            pm.POLICY_ENTRIES.labels(name).set(entries)
            pm.POLICY_CAPACITY.labels(name).set(capacity)
        return ok

    def _resolve_and_write(
        self,
        policies: Sequence[Any],
        endpoints: Sequence[Any],
        identities: dict[int, tuple[str, ...]],
        pods: Sequence[Any],
    ) -> tuple[int, list[str]]:
        found: list[Any] = []
        desired = resolve(policies, endpoints, identities, pods, self.cidr, found)
        plan = plan_writes(self.mirror, desired)
        apply_plan(self.maps, plan, self.mirror)
        return plan.writes(), [str(i) for i in found]


def _seq(msg: Msg) -> int:
    return int(msg.metadata.sequence.stream)


def _first_error(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        return ".".join(str(p) for p in first["loc"]) or "<message>", str(first["msg"])
    return "<message>", str(exc)


# --- wiring into the datapath process ---------------------------------------------------------


async def run_policy(
    bus: Bus,
    host: StatusHost,
    *,
    node: str,
    maps_kind: str,
    pin_dir: Path,
    netns: str = "",
    on_worker: Callable[[PolicyWorker], None] = lambda _w: None,
    slices: SliceDirectory | None = None,
    compile_after: Callable[[], None] = lambda: None,
) -> None:
    """Open the policy maps (load + pin bpf/policy.c, or fakes), run the loop and the flow
    publisher until cancelled. ``on_worker`` receives the loop once it exists (status hook).
    ``compile_after`` blocks until the LB loader child is done: on a cold node the policy
    compile starts after it rather than beside it, so the two compiles (each about a
    CPU-second) share one core and the worker's bootstrap keeps the other."""
    closers: list[Callable[[], None]] = []
    interfaces: Interfaces
    maps: PolicyMaps
    events_pin: Path | None = None
    if maps_kind == "fake":
        from services.datapath.fakepolicymaps import FakePolicyMaps  # noqa: PLC0415

        maps, interfaces = FakePolicyMaps(), StaticInterfaces()
    else:
        from services.datapath.policyinstall import (  # noqa: PLC0415
            AdoptedPolicyLoader,
            install_in_child,
        )

        def install() -> AdoptedPolicyLoader:
            compile_after()  # one compile at a time (see above)
            # compiled in a child: bcc's LLVM never enters this long-lived process
            return install_in_child(pin_dir)

        loader = await asyncio.to_thread(install)
        closers.append(loader.close)
        bpf_maps = loader.maps()
        closers.append(bpf_maps.close)
        maps = bpf_maps
        interfaces = NetnsInterfaces(netns or None, loader.attach)
        closers.append(interfaces.close)
        events_pin = loader.events_pin
    worker = PolicyWorker(
        PolicyConfig(node), bus, maps, interfaces, on_applied=host.request_status, slices=slices
    )
    on_worker(worker)
    tasks: list[asyncio.Task[None]] = []
    reader: RingReader | None = None
    try:
        if events_pin is not None:

            async def send(items: Sequence[Outgoing]) -> None:
                await publish_batch(bus.js, items, attempts=2)

            publisher = FlowPublisher(node, worker.flow_names(), send)
            worker.flows = publisher
            reader = RingReader(events_pin, publisher)
            reader.start()
            tasks.append(asyncio.create_task(publisher.run(), name=f"flows-{node}"))
            tasks.append(asyncio.create_task(_flow_metrics(reader), name=f"flow-metrics-{node}"))
        await worker.run()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if reader is not None:
            await asyncio.to_thread(reader.stop)
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()


async def _flow_metrics(reader: RingReader) -> None:
    seen = {"lost": 0, "dropped": 0, "malformed": 0, "published": 0}
    counters = {
        "lost": pm.FLOW_EVENTS_LOST,
        "dropped": pm.FLOWS_DROPPED,
        "malformed": pm.FLOWS_MALFORMED,
        "published": pm.FLOWS_PUBLISHED,
    }
    while True:
        with contextlib.suppress(Exception):
            reader.refresh()
        p = reader.publisher
        now = {
            "lost": p.lost,
            "dropped": p.dropped,
            "malformed": p.malformed + p.reader_malformed,
            "published": p.published,
        }
        for key, value in now.items():
            if value > seen[key]:
                counters[key].inc(value - seen[key])
                seen[key] = value
        await asyncio.sleep(1.0)


class StatusHooks(StatusHost, Protocol):
    status_hooks: list[Callable[[NodeStatus], None]]
    slices: SliceDirectory  # the LB loop's EndpointSlices (see the module doc)


class PolicySidecar:
    """The policy loop as a sibling of the LB loop in one datapath process (see module doc):
    readiness of both, the NodeStatus hook, and failure of either ends both."""

    def __init__(
        self,
        bus: Bus,
        host: StatusHooks,
        *,
        node: str,
        maps_kind: str,
        pin_dir: Path,
        netns: str = "",
        enabled: bool = True,
        compile_after: Callable[[], None] = lambda: None,
    ) -> None:
        self.bus, self.host, self.enabled = bus, host, enabled
        self.compile_after = compile_after
        self.node, self.maps_kind, self.pin_dir, self.netns = node, maps_kind, pin_dir, netns
        self.worker: PolicyWorker | None = None

    def _attach_worker(self, worker: PolicyWorker) -> None:
        self.worker = worker
        self.host.status_hooks.append(worker.extend_status)

    def ready(self, lb_ready: Callable[[], bool | str]) -> Callable[[], bool | str]:
        def check() -> bool | str:
            first = lb_ready()
            if first is not True or not self.enabled:
                return first
            return self.worker.ready() if self.worker else "policy maps not loaded yet"

        return check

    async def run_with(self, main: Coroutine[Any, Any, None]) -> None:
        """Run ``main`` (the LB loop) and, when enabled, the policy loop until either ends."""
        if not self.enabled:
            await main
            return
        lb = asyncio.create_task(main, name=f"lb-{self.node}")
        policy = asyncio.create_task(
            run_policy(
                self.bus,
                self.host,
                node=self.node,
                maps_kind=self.maps_kind,
                pin_dir=self.pin_dir,
                netns=self.netns,
                on_worker=self._attach_worker,
                slices=self.host.slices,
                compile_after=self.compile_after,
            ),
            name=f"policy-{self.node}",
        )
        try:
            done, _ = await asyncio.wait((lb, policy), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():  # nobody cancels them but our caller: say it loudly
                    raise RuntimeError(f"{task.get_name()}: the loop was cancelled")
                task.result()
                raise RuntimeError(f"{task.get_name()}: the loop ended")
        finally:
            for task in (lb, policy):
                task.cancel()
            await asyncio.gather(lb, policy, return_exceptions=True)
