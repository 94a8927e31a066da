"""Fixtures for the watcher: the real API stand-in over HTTP, a bus tap, an in-process watcher.

Objects are created through kubernetes-asyncio against the stand-in (the same client path the
watcher uses); published messages are observed with a plain core-NATS subscription on
``weir.v1.>``, which sees *every* publish, including ones JetStream would drop as duplicates, so
"nothing published twice" is checked strictly.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pytest
from nats.aio.msg import Msg

from services.apiserver.server import ApiServerConfig
from services.common.bus import Bus, connect_bus
from services.watcher.service import WatcherSettings, WatcherState, run_watcher
from tests.apiserver.conftest import Kube, running_kube
from tests.conftest import NatsServer

Obj = dict[str, Any]


@dataclass(frozen=True)
class Seen:
    subject: str
    data: Obj
    headers: dict[str, str]
    at: float


@dataclass
class Tap:
    """Every message published under ``weir.v1.>``, in arrival order."""

    messages: list[Seen] = field(default_factory=list)

    def on(self, prefix: str) -> list[Seen]:
        return [m for m in self.messages if m.subject.startswith(prefix)]

    async def wait_for(self, pred: Callable[[Seen], bool], within: float) -> Seen:
        deadline = time.monotonic() + within
        while True:
            for m in self.messages:
                if pred(m):
                    return m
            if time.monotonic() > deadline:
                subjects = [m.subject for m in self.messages[-20:]]
                raise AssertionError(f"no matching message within {within}s; last: {subjects}")
            await asyncio.sleep(0.01)

    def count(self, pred: Callable[[Seen], bool]) -> int:
        return sum(1 for m in self.messages if pred(m))

    def schema_violations(self) -> list[str]:
        """Messages that do not validate against contracts/schemas (by subject family)."""
        problems = []
        for m in self.messages:
            family = m.subject.split(".")[2]
            validator = _validators().get(family)
            if validator is None:
                continue
            problems += [f"{m.subject}: {e.message}" for e in validator.iter_errors(m.data)]
        return problems


SCHEMAS = Path(__file__).resolve().parents[2] / "contracts" / "schemas"


@functools.cache
def _validators() -> dict[str, Any]:
    out = {}
    for family, stem in (("k8s", "k8s-event"), ("errors", "validation-report")):
        schema = json.loads((SCHEMAS / f"{stem}.json").read_text())
        out[family] = jsonschema.validators.validator_for(schema)(schema)
    return out


@pytest.fixture
async def tap(nats_server: NatsServer) -> AsyncIterator[Tap]:
    nc = await nats.connect(nats_server.url)
    t = Tap()

    async def on_msg(msg: Msg) -> None:
        t.messages.append(
            Seen(msg.subject, json.loads(msg.data), dict(msg.headers or {}), time.monotonic())
        )

    await nc.subscribe("weir.v1.>", cb=on_msg)
    await nc.flush()
    try:
        yield t
    finally:
        await nc.close()


@pytest.fixture
def apiserver_config(tmp_path: Path) -> ApiServerConfig:
    return ApiServerConfig(
        port=0,
        kubeconfig_out=tmp_path / "kubeconfig",
        bookmark_interval=0.2,
        retain_events=1000,
        accept_invalid=True,
    )


@pytest.fixture
async def kube(apiserver_config: ApiServerConfig) -> AsyncIterator[Kube]:
    async with running_kube(apiserver_config) as k:
        yield k


@dataclass
class RunningWatcher:
    task: asyncio.Task[None]
    state: WatcherState
    bus: Bus

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.bus.close()


async def start_watcher(
    nats_server: NatsServer, kube: Kube, name: str, **overrides: Any
) -> RunningWatcher:
    """An in-process watcher with its own bus connection and kubeconfig-built API client."""
    settings = WatcherSettings(
        nats_url=nats_server.url,
        kubeconfig=str(kube.kubeconfig),
        id=name,
        **overrides,
    )
    bus = await connect_bus(nats_server.url, name, max_initial_attempts=3)
    state = WatcherState(me=name)
    task = asyncio.create_task(run_watcher(settings, bus=bus, state=state))
    deadline = time.monotonic() + 10
    while not state.synced:
        if task.done():
            await task
        assert time.monotonic() < deadline, "watcher did not finish its initial lists"
        await asyncio.sleep(0.02)
    return RunningWatcher(task, state, bus)


@pytest.fixture
async def watcher(nats_server: NatsServer, kube: Kube, tap: Tap) -> AsyncIterator[RunningWatcher]:
    w = await start_watcher(nats_server, kube, "w-inproc")
    try:
        yield w
    finally:
        await w.stop()
