"""The datapath worker against a real nats-server, with in-memory maps standing in for the
pinned eBPF maps (the same FakeLBMap instance survives a worker restart, as pins do).

Covers: bootstrap from last-per-subject to the golden maps; live changes; a restart renumbers
nothing; a Service deleted while the worker was down is gone after restart; NodeStatus; a full
map keeps the worker going; an invalid message is skipped; the CLI process serves /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from bench.burst_cpu import e2e_events  # the relist's shape: pieces of 1000 of a kind
from contracts.subjects import STREAM_K8S, STREAM_STATUS, k8s_filter, k8s_subject, status_subject
from contracts.v1 import EndpointSlice, K8sEvent, NodeStatus, Op, Service
from services.common.bus import Bus, connect_bus, publish, publish_batch
from services.common.consume import ack_position
from services.common.ops import start_ops_server
from services.datapath.decode import decode
from services.datapath.fakemaps import FakeLBMap, check_consistent
from services.datapath.lbmap import LBMapState
from services.datapath.model import DesiredState
from services.datapath.reconcile import Reconciler
from services.datapath.render import render, resolved
from services.datapath.settings import DatapathSettings
from services.datapath.worker import STEADY_GC, DatapathWorker, durable_name, pending_count
from tests.conftest import NatsServer, free_port
from tests.datapath.manifests import NODE, TESTDATA, desired, events

pytestmark = pytest.mark.timeout(60)


async def eventually(check: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


async def publish_events(bus: Bus, evs: list[K8sEvent]) -> int:
    seq = 0
    for ev in evs:
        ack = await publish(bus.js, ev.subject(), ev, msg_id=ev.msg_id())
        seq = ack.seq
    return seq


class Running:
    def __init__(self, worker: DatapathWorker, task: asyncio.Task[None], bus: Bus) -> None:
        self.worker, self.task, self.bus = worker, task, bus

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.bus.close()


@pytest.fixture
async def start_worker(
    nats_server: NatsServer,
) -> AsyncIterator[Callable[[FakeLBMap], asyncio.Future[Running]]]:
    running: list[Running] = []

    async def start(lbmap: FakeLBMap) -> Running:
        settings = DatapathSettings(node_name=NODE, nats_url=nats_server.url, maps="fake")
        bus = await connect_bus(nats_server.url, "test-datapath")
        worker = DatapathWorker(settings, bus, lbmap)
        task = asyncio.create_task(worker.run())
        r = Running(worker, task, bus)
        running.append(r)
        await eventually(lambda: worker.synced or task.done(), what="bootstrap")
        if task.done():
            task.result()
        return r

    yield start  # type: ignore[misc]
    for r in running:
        await r.stop()


def checked_map(**capacity: int) -> FakeLBMap:
    def check(_name: str, state: LBMapState) -> None:
        problems = check_consistent(state)
        assert not problems, problems

    return FakeLBMap(capacity=capacity, on_write=check)


def fresh(*paths: Path) -> LBMapState:
    want = {}
    for path in paths:
        want.update(desired(path))
    lbmap = FakeLBMap()
    Reconciler(lbmap).apply(want, prune=True)
    return lbmap.dump()


async def last_status(bus: Bus, *, applied: int = 0, within: float = 10.0) -> NodeStatus:
    """The node's newest NodeStatus, waiting (statuses are coalesced) until it reports at least
    ``applied``."""
    deadline = time.monotonic() + within
    while True:
        try:
            msg = await bus.js.get_last_msg(STREAM_STATUS, status_subject(NODE))
        except NotFoundError:
            if time.monotonic() > deadline:
                raise
        else:
            assert msg.data is not None
            status = NodeStatus.model_validate_json(msg.data)
            if status.applied[STREAM_K8S] >= applied or time.monotonic() > deadline:
                return status
        await asyncio.sleep(0.02)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_bootstrap_live_changes_restart_and_delete_while_down(
    bus: Bus, start_worker: Callable[[FakeLBMap], asyncio.Future[Running]]
) -> None:
    clusterip = TESTDATA / "clusterip.yaml"
    policy = TESTDATA / "traffic-policy.yaml"
    await publish_events(bus, events(clusterip))
    lbmap = checked_map()
    run1 = await start_worker(lbmap)
    assert render(lbmap.dump()) == clusterip.with_suffix(".golden").read_text()

    ops = await start_ops_server("127.0.0.1:0", ready=run1.worker.ready)
    assert ops is not None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{ops.url}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{ops.url}/metrics") as resp:
                assert "weir_datapath_sync_duration_seconds_bucket" in await resp.text()
    finally:
        await ops.close()

    last = await publish_events(bus, events(policy))
    want = resolved(fresh(clusterip, policy))
    await eventually(lambda: resolved(lbmap.dump()) == want, what="live changes applied")
    await eventually(lambda: run1.worker.applied_seq == last, what="applied sequence")
    status = await last_status(bus, applied=last)
    assert status.applied[STREAM_K8S] == last
    assert status.maps["services"].entries == len(lbmap.dump().services)
    assert status.errors == []
    # the gauges are refreshed with each status (not per batch): they match what it reports
    for name, fill in status.maps.items():
        if name in ("services", "backends", "revnat"):
            assert metric("weir_datapath_map_entries", map=name) == fill.entries, name
    assert metric("weir_datapath_model_errors") == 0
    ids = {(b.ip, b.port, b.proto): i for i, b in lbmap.dump().backends.items()}
    revnat = dict(lbmap.dump().revnat)

    await run1.stop()
    api = next(e for e in events(clusterip) if e.kind == "service" and e.name == "api")
    tombstone = api.model_copy(update={"op": Op.DELETE, "resource_version": "2", "object": None})
    await publish(bus.js, tombstone.subject(), tombstone, msg_id=tombstone.msg_id())

    run2 = await start_worker(lbmap)
    state = lbmap.dump()
    assert "10.96.10.2:8000/TCP" not in resolved(state), "deleted while down, gone after restart"
    assert resolved(state) == {k: v for k, v in want.items() if k != "10.96.10.2:8000/TCP"}
    for i, b in state.backends.items():
        assert ids[(b.ip, b.port, b.proto)] == i, "a restart renumbered a backend"
    assert all(revnat[i] == v for i, v in state.revnat.items()), "rev-NAT renumbered"
    assert 7 not in state.backends  # 10.244.1.21:8000, only used by api: pruned
    # synced comes before the consumer is (re)created from the snapshot's sequence: wait for it
    deadline = time.monotonic() + 10
    while True:
        try:
            info = await bus.js.consumer_info(STREAM_K8S, durable_name(NODE))
            break
        except NotFoundError:
            assert time.monotonic() < deadline, "the restarted worker made no consumer"
            await asyncio.sleep(0.01)
    assert info.num_ack_pending == 0
    # the policy loop names flows' Services from the slices this loop absorbed (no 2nd decode)
    slices = {(e.namespace, e.name): e.object for e in events(clusterip) + events(policy)}
    named = 0
    for (ns, _name), es in slices.items():
        assert isinstance(es, EndpointSlice | Service)
        if isinstance(es, Service) or not es.service_name or not es.endpoints or not es.ports:
            continue
        port = es.ports[0]
        ip = es.endpoints[0].addresses[0]
        assert port.port is not None
        assert run2.worker.slices.service_of(ip, port.port, port.protocol) == (ns, es.service_name)
        named += 1
    assert named > 0
    await run2.stop()


async def test_full_map_reported_and_worker_keeps_going(
    bus: Bus, start_worker: Callable[[FakeLBMap], asyncio.Future[Running]]
) -> None:
    full_before = metric("weir_datapath_map_write_errors_total", map="backends", kind="full")
    await publish_events(bus, events(TESTDATA / "clusterip.yaml"))
    lbmap = checked_map(backends=4)
    run = await start_worker(lbmap)
    status = await last_status(bus)
    assert status.errors and all("backends" in e for e in status.errors)
    assert metric("weir_datapath_map_write_errors_total", map="backends", kind="full") > (
        full_before
    )
    assert run.worker.reconciler.pending
    # the stream keeps flowing: a new service that needs no backend is applied and acked
    last = await publish_events(bus, events(TESTDATA / "no-frontend-and-fallback.yaml"))
    await eventually(lambda: "10.96.40.1:80/TCP" in resolved(lbmap.dump()), what="new service")
    await eventually(lambda: run.worker.applied_seq == last, what="acked past the full map")
    # room appears: the pending frontends are retried without any new message
    lbmap.capacity["backends"] = 100
    want = resolved(fresh(TESTDATA / "clusterip.yaml", TESTDATA / "no-frontend-and-fallback.yaml"))
    await eventually(lambda: resolved(lbmap.dump()) == want, what="retry after room appeared")
    await eventually(lambda: not run.worker.reconciler.pending, what="nothing pending")


async def test_invalid_message_is_skipped_and_counted(
    bus: Bus, start_worker: Callable[[FakeLBMap], asyncio.Future[Running]]
) -> None:
    before = metric("weir_datapath_bad_messages_total", kind="service")
    lbmap = checked_map()
    run = await start_worker(lbmap)
    bad_subject = k8s_subject("service", "shop", "broken")
    await publish(bus.js, bad_subject, b'{"kind": "service", "op": "UPSERT"}', msg_id="bad-1")
    last = await publish_events(bus, events(TESTDATA / "clusterip.yaml"))
    await eventually(lambda: run.worker.applied_seq == last, what="valid events after a bad one")
    assert metric("weir_datapath_bad_messages_total", kind="service") == before + 1
    # applied live, batch by batch: ids follow arrival order, the answers are the golden's
    assert resolved(lbmap.dump()) == resolved(fresh(TESTDATA / "clusterip.yaml"))


async def test_vanished_consumer_is_recreated_and_the_status_follows_the_maps(
    bus: Bus, start_worker: Callable[[FakeLBMap], asyncio.Future[Running]]
) -> None:
    clusterip, policy = TESTDATA / "clusterip.yaml", TESTDATA / "traffic-policy.yaml"
    lbmap = checked_map()
    run = await start_worker(lbmap)
    last = await publish_events(bus, events(clusterip))  # live, not from the snapshot
    await eventually(lambda: run.worker.applied_seq == last, what="live events applied")
    await bus.js.delete_consumer(STREAM_K8S, durable_name(NODE))
    # a slice whose name needs escaping (a dot) takes the slow subject check and still counts
    dotted = next(e for e in events(policy) if e.kind == "endpointslice")
    dotted = dotted.model_copy(update={"name": f"{dotted.name}.v2"})
    last = await publish_events(bus, [*events(policy), dotted])
    want = resolved(fresh(clusterip, policy))
    await eventually(lambda: resolved(lbmap.dump()) == want, what="applied after recreation")
    await eventually(lambda: run.worker.applied_seq == last, what="the recreated consumer")
    owned = {
        (e.namespace, e.name)
        for e in [*events(clusterip), *events(policy), dotted]
        if isinstance(e.object, EndpointSlice) and e.object.service_name
    }
    assert len(run.worker.slices) == len(owned)  # the dotted one was absorbed too
    # the services-map entries are counted incrementally: they match the maps exactly
    status = await last_status(bus, applied=last)
    assert status.maps["services"].entries == len(lbmap.dump().services)
    assert status.maps["backends"].entries == len(lbmap.dump().backends)
    # a message whose body names another object than its subject: skipped and counted
    before = metric("weir_datapath_bad_messages_total", kind="endpointslice")
    await publish(bus.js, k8s_subject("endpointslice", "shop", "elsewhere"), dotted, msg_id="x-1")
    await eventually(
        lambda: metric("weir_datapath_bad_messages_total", kind="endpointslice") == before + 1,
        what="mismatched subject counted",
    )
    assert resolved(lbmap.dump()) == want


async def test_other_kinds_on_the_consumer_are_skipped_unread(
    bus: Bus, start_worker: Callable[[FakeLBMap], asyncio.Future[Running]]
) -> None:
    """The LB loop consumes all of WEIR_K8S through one filter (see consume): pods, nodes and
    the like are skipped before decoding, neither counted as bad nor remembered."""
    run = await start_worker(checked_map())
    bad = {
        kind: metric("weir_datapath_bad_messages_total", kind=kind) for kind in ("pod", "unknown")
    }
    await publish(bus.js, k8s_subject("pod", "shop", "p1"), b"not json", msg_id="pod-1")
    await publish(bus.js, k8s_subject("node", None, "n1"), b"{}", msg_id="node-1")
    last = await publish_events(bus, events(TESTDATA / "clusterip.yaml"))
    await eventually(lambda: run.worker.applied_seq == last, what="applied past other kinds")
    assert resolved(run.worker.lbmap.dump()) == resolved(fresh(TESTDATA / "clusterip.yaml"))
    for kind, before in bad.items():
        assert metric("weir_datapath_bad_messages_total", kind=kind) == before
    info = await bus.js.consumer_info(STREAM_K8S, durable_name(NODE))
    assert info.config.filter_subject == k8s_filter()  # one filter: see consume()


async def test_consuming_runs_with_rare_collections_and_restores_the_gc(
    bus: Bus, start_worker: Callable[[FakeLBMap], asyncio.Future[Running]]
) -> None:
    before = gc.get_threshold()
    run = await start_worker(checked_map())
    await eventually(lambda: gc.get_threshold() == STEADY_GC, what="steady-state GC")
    last = await publish_events(bus, events(TESTDATA / "clusterip.yaml"))
    await eventually(lambda: run.worker.applied_seq == last, what="applied while consuming")
    await run.stop()
    assert gc.get_threshold() == before


async def test_bootstrap_applies_with_the_gc_off_and_turns_it_back_on(
    bus: Bus, start_worker: Callable[[FakeLBMap], asyncio.Future[Running]]
) -> None:
    """The cold sync's full apply runs with the cyclic GC disabled (its objects are long-lived
    and acyclic); once synced the GC is on again and what the bootstrap built is frozen."""
    assert gc.isenabled()
    await publish_events(bus, events(TESTDATA / "clusterip.yaml"))
    during: list[bool] = []
    lbmap = FakeLBMap(on_write=lambda _name, _state: during.append(gc.isenabled()))
    frozen = gc.get_freeze_count()
    run = await start_worker(lbmap)
    assert run.worker.synced and during and not any(during)
    assert gc.isenabled()
    assert gc.get_freeze_count() > frozen
    await run.stop()
    gc.unfreeze()


def test_cli_process_serves_readyz(nats_server: NatsServer, tmp_path: Path) -> None:
    """``weir datapath --maps fake`` as a real process: ready after the first sync, exits on
    SIGTERM."""
    port = free_port()
    env = {**os.environ, "WEIR_NODE": "node-cli", "WEIR_NATS_URL": nats_server.url}
    weir = Path(sys.executable).parent / "weir"
    cmd = [str(weir), "datapath", "--maps", "fake", "--metrics-listen", f"127.0.0.1:{port}"]
    log = (tmp_path / "weir.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        ready = False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            with contextlib.suppress(OSError):
                import urllib.request  # noqa: PLC0415

                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    ready = r.status == 200
            time.sleep(0.1)
        assert ready, (tmp_path / "weir.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_cli_rejects_bad_options() -> None:
    weir = Path(sys.executable).parent / "weir"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_")}
    out = subprocess.run([str(weir), "datapath", "--node", "n1", "--maps", "bogus"], env=env,
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert out.returncode == 2 and "maps" in out.stderr
    out = subprocess.run([str(weir), "datapath", "--maps", "fake"], env=env,
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert out.returncode == 2 and "node_name" in out.stderr


def test_stream_seq_reads_the_ack_subject_like_nats_metadata() -> None:
    from nats.aio.msg import Msg  # noqa: PLC0415

    from services.datapath.worker import stream_seq  # noqa: PLC0415

    for reply in (
        "$JS.ACK.WEIR_K8S.datapath-n1.1.42.7.1700000000000000000.3",  # v1: 9 tokens
        "$JS.ACK.dom.acchash.WEIR_K8S.datapath-n1.2.4242.9.1700000000000000000.0.rand",  # v2
    ):
        msg = Msg(_client=None, subject="weir.v1.k8s.service.a.b", reply=reply)  # type: ignore[arg-type]
        assert stream_seq(msg) == msg.metadata.sequence.stream
    assert stream_seq(Msg(_client=None, subject="s", reply="$JS.ACK.S.C.1.5.1.1.0")) == 5  # type: ignore[arg-type]


_TOKENS = st.one_of(
    st.sampled_from(
        ["$JS", "ACK", "WEIR_K8S", "datapath-n1", "0", "7", "42", "+5", "-1", "²", " 3", "1_0", ""]
    ),
    st.text(alphabet="0123456789", min_size=1, max_size=4),
    st.text(max_size=3),
)


_REPLIES = st.one_of(
    st.lists(_TOKENS, max_size=12).map(".".join),
    # the v1 form's 9 tokens, each field right or wrong
    st.tuples(
        st.sampled_from(["$JS", "$js"]),
        st.sampled_from(["ACK", "NAK"]),
        *[_TOKENS] * 7,
    ).map(".".join),
)


@given(_REPLIES)
def test_stream_seq_is_ack_position_for_any_reply(reply: str) -> None:
    """The worker's own parse of the plain form answers what ack_position answers (or raises
    where it raises), whatever the reply subject."""
    from nats.aio.msg import Msg  # noqa: PLC0415

    from services.common.consume import ack_position  # noqa: PLC0415
    from services.datapath.worker import stream_seq  # noqa: PLC0415

    msg = Msg(_client=None, subject="s", reply=reply)  # type: ignore[arg-type]
    try:
        want: int | type[Exception] = ack_position(msg)[0]
    except Exception as exc:
        want = type(exc)
    try:
        got: int | type[Exception] = stream_seq(msg)
    except Exception as exc:
        got = type(exc)
    assert got == want


async def test_a_backlog_is_taken_in_large_batches_and_a_single_change_in_one(
    bus: Bus, nats_server: NatsServer
) -> None:
    """A worker behind its stream (a relist-shaped burst already there when it consumes) takes
    batches of up to ``backlog_batch``, acks each only after it was applied (its last message:
    AckPolicy ALL), loses nothing; once it keeps up, a single change is a batch of one."""
    settings = DatapathSettings(
        node_name=NODE, nats_url=nats_server.url, maps="fake", batch=8, backlog_batch=64
    )
    lbmap = FakeLBMap()  # no consistency check per write: quadratic at this size
    wbus = await connect_bus(nats_server.url, "test-datapath")
    worker = DatapathWorker(settings, wbus, lbmap)
    start = await worker.bootstrap()
    burst = e2e_events(1200, 0, "pieces")  # 2,400 events: 1000 Services, their slices, ...
    acks = await publish_batch(bus.js, burst)
    sizes: list[int] = []
    early: list[str] = []
    handle = worker.handle_batch

    async def recording(msgs: Sequence[Msg]) -> None:
        sizes.append(len(msgs))
        for msg in msgs:

            async def checked_ack(msg: Msg = msg, ack: Callable[[], Any] = msg.ack) -> None:
                # only the batch's last message, and only once all it changed is in the maps
                model, dumped = worker.model.frontends, lbmap.dump()
                if (
                    msg is not msgs[-1]
                    or worker.reconciler.pending
                    or not set(model) <= set(worker.reconciler.realised.frontend_values)
                    or len(dumped.frontends) != len(model)
                ):
                    early.append(msg.subject)
                await ack()

            msg.ack = checked_ack  # type: ignore[method-assign]
        await handle(msgs)

    worker.handle_batch = recording  # type: ignore[method-assign]
    task = asyncio.create_task(worker.consume(start))
    try:
        await eventually(
            lambda: worker.applied_seq == acks[-1].seq or task.done(), what="the burst applied"
        )
        assert not task.done(), task.result()
        assert not worker.errors, worker.errors[:3]
        assert not check_consistent(lbmap.dump())
        assert max(sizes) == 64, sizes  # the backlog in large batches ...
        assert sizes.count(64) >= len(burst) // 64 - 2, sizes  # ... nearly all of it
        assert sum(sizes) == len(burst)  # each message handed out once: none lost or redelivered
        assert not early
        info = await bus.js.consumer_info(STREAM_K8S, durable_name(NODE))
        assert info.ack_floor.stream_seq == acks[-1].seq and info.num_ack_pending == 0
        want = DesiredState(NODE)
        for out in burst:
            assert isinstance(out.data, bytes)
            want.apply(decode(out.data))
        want.flush()
        expected = FakeLBMap()
        Reconciler(expected).apply(dict(want.frontends), prune=True)
        assert resolved(lbmap.dump()) == resolved(expected.dump())
        # keeping up: one change, one batch of one
        sizes.clear()
        change = events(TESTDATA / "clusterip.yaml")
        for ev in change:
            seq = (await publish(bus.js, ev.subject(), ev, msg_id=ev.msg_id())).seq
            await eventually(lambda: worker.applied_seq == seq, what="a single change")  # noqa: B023
        assert sizes == [1] * len(change)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await wbus.close()


@given(
    seq=st.integers(min_value=1, max_value=2**63),
    pending=st.integers(min_value=0, max_value=2**63),
)
def test_pending_count_is_the_ack_subjects_pending(seq: int, pending: int) -> None:
    reply = f"$JS.ACK.WEIR_K8S.datapath-node-a.1.{seq}.{seq}.1700000000000000000.{pending}"
    msg = Msg(None, subject="weir.v1.k8s.service.a.b", reply=reply)  # type: ignore[arg-type]
    assert pending_count(msg) == ack_position(msg)[1] == pending
    assert pending_count(Msg(None, subject="x", reply="_INBOX.x")) == 0  # type: ignore[arg-type]
