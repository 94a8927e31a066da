"""The watcher process: campaign for the lease, and while leading, reflect every kind to the bus.

Only the leader publishes. Each term of leadership starts from a clean slate: the published-state
index is rebuilt from the stream (last message per subject), then every kind relists and diffs
against it. That one path covers a first start, a restart, and a takeover after the previous
leader died mid-stream: what is already on the bus is not published again, and objects deleted
while nobody was watching get their DELETE. When the lease is lost the reflectors are cancelled
at once; anything they had in flight carries a deterministic msg id, so an overlap with the next
leader is deduplicated by JetStream.

:func:`run_watcher` takes its collaborators (bus, API client) ready-made or builds them from
settings, so tests run it in-process against the real stand-in and a real nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from contracts.subjects import K8S_KINDS, KV_LEADER
from services.common.bus import Bus, connect_bus, provision
from services.common.cancelling import raise_if_cancelled
from services.common.ops import start_ops_server
from services.common.settings import WeirSettings
from services.watcher import metrics
from services.watcher.elector import Elector
from services.watcher.kube import ApiSource, KubeSource, load_api_client
from services.watcher.lease import LeaseTiming
from services.watcher.observe import make_normaliser
from services.watcher.reflector import Reflector, Sink, WatchSettings
from services.watcher.sink import NatsSink, load_published
from services.watcher.state import PublishedIndex

log = logging.getLogger(__name__)


def default_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WatcherSettings(WeirSettings):
    kubeconfig: str = ""
    id: str = ""
    watch_timeout: int = 300
    watch_idle: float = 60.0
    lease_ttl: float = 3.0
    lease_renew: float = 1.0

    def timing(self) -> LeaseTiming:
        return LeaseTiming(
            ttl=self.lease_ttl,
            renew_interval=self.lease_renew,
            renew_deadline=(self.lease_renew + self.lease_ttl) / 2,
        )


@dataclass
class WatcherState:
    """What /readyz and tests look at."""

    me: str
    leader: bool = False
    reflectors: list[Reflector] = field(default_factory=list)
    terms: int = 0

    @property
    def synced(self) -> bool:
        return bool(self.reflectors) and all(r.synced.is_set() for r in self.reflectors)

    def ready(self) -> bool | str:
        if not self.leader:
            return True  # a standby is ready: it is doing its job
        return True if self.synced else "leader: initial list of every kind not finished"


async def lead_one_term(
    *,
    js: Any,
    source: KubeSource,
    sink: Sink,
    producer: str,
    watch: WatchSettings,
    state: WatcherState,
    kinds: tuple[str, ...] = K8S_KINDS,
) -> None:
    """Bootstrap the index from the stream, then reflect all kinds until cancelled."""
    index = PublishedIndex()
    seeded = await load_published(js, index)
    log.info("%s: leading; %d objects already on the bus", producer, seeded)
    normalise = make_normaliser(producer)
    state.reflectors = [Reflector(k, source, sink, index, normalise, watch) for k in kinds]
    state.terms += 1
    async with asyncio.TaskGroup() as tg:
        for reflector in state.reflectors:
            tg.create_task(reflector.run(), name=f"reflect-{reflector.kind}")


async def run_watcher(
    settings: WatcherSettings,
    *,
    bus: Bus | None = None,
    api_client: Any = None,
    state: WatcherState | None = None,
    kinds: tuple[str, ...] = K8S_KINDS,
) -> None:
    """Run until cancelled. Owns (and closes) the bus and API client only if it made them."""
    me = settings.id or default_id()
    state = state or WatcherState(me=me)
    own_bus, own_client = bus is None, api_client is None
    if bus is None:
        bus = await connect_bus(settings.nats_url, f"weir-watcher-{me}")
    if api_client is None:
        api_client = await load_api_client(settings.kubeconfig or None)
    ops = None
    try:
        await provision(bus.js)
        ops = await start_ops_server(settings.metrics_listen, ready=state.ready)
        kv = await bus.js.key_value(KV_LEADER)

        def on_change(leader: bool) -> None:
            state.leader = leader
            metrics.IS_LEADER.set(1 if leader else 0)

        elector = Elector(kv, me, timing=settings.timing(), on_change=on_change)
        watch = WatchSettings(timeout_seconds=settings.watch_timeout, idle=settings.watch_idle)
        source = ApiSource(api_client)
        sink = NatsSink(bus.js, me)
        campaign = asyncio.create_task(elector.run(), name="lease")
        try:
            while True:
                raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
                await elector.wait_leader()
                term = asyncio.create_task(
                    lead_one_term(
                        js=bus.js,
                        source=source,
                        sink=sink,
                        producer=me,
                        watch=watch,
                        state=state,
                        kinds=kinds,
                    )
                )
                lost = asyncio.create_task(elector.lost.wait())
                await asyncio.wait({term, lost}, return_when=asyncio.FIRST_COMPLETED)
                for task in (term, lost):
                    task.cancel()
                [outcome] = await asyncio.gather(term, return_exceptions=True)
                if isinstance(outcome, Exception):
                    log.error("%s: leadership term failed: %r", me, outcome)
                state.reflectors = []
                if elector.is_leader:  # the term failed (bus trouble): give the lease up
                    await elector.release()
                    await asyncio.sleep(settings.lease_renew)
        finally:
            campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await campaign
            on_change(False)
    finally:
        if ops is not None:
            await ops.close()
        if own_client:
            await api_client.close()
        if own_bus:
            await bus.close()
