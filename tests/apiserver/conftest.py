"""Fixtures: a real stand-in on a free loopback port, and kubernetes-asyncio clients for it.

Every HTTP test goes through kubernetes-asyncio loaded from the kubeconfig the server wrote, so the
tests exercise the same path the watcher uses against a real cluster.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiException

from services.apiserver.server import ApiServerConfig, RunningApiServer, start_apiserver


@dataclass
class Kube:
    server: RunningApiServer
    # typed Any: the tests pass plain dicts as bodies, which kubernetes-asyncio serialises as-is
    api: Any
    core: Any
    discovery: Any
    networking: Any
    kubeconfig: Path


async def open_kube(cfg: ApiServerConfig) -> Kube:
    server = await start_apiserver(cfg)
    assert cfg.kubeconfig_out is not None
    conf = client.Configuration()
    await config.load_kube_config(config_file=str(cfg.kubeconfig_out), client_configuration=conf)
    api = client.ApiClient(configuration=conf)
    return Kube(
        server,
        api,
        client.CoreV1Api(api),
        client.DiscoveryV1Api(api),
        client.NetworkingV1Api(api),
        cfg.kubeconfig_out,
    )


@contextlib.asynccontextmanager
async def running_kube(cfg: ApiServerConfig) -> AsyncIterator[Kube]:
    """An API server with a client for the block; both stopped when it ends, also on failure."""
    k = await open_kube(cfg)
    try:
        yield k
    finally:
        await k.api.close()
        await k.server.stop()


def status_of(exc: ApiException) -> dict[str, Any]:
    """The Kubernetes Status body of a failed call."""
    body: dict[str, Any] = json.loads(exc.body or b"{}")
    return body


@pytest.fixture
def apiserver_config(tmp_path: Path) -> ApiServerConfig:
    return ApiServerConfig(
        port=0, kubeconfig_out=tmp_path / "kubeconfig", bookmark_interval=0.2, retain_events=1000
    )


@pytest.fixture
async def kube(apiserver_config: ApiServerConfig) -> AsyncIterator[Kube]:
    async with running_kube(apiserver_config) as k:
        yield k
