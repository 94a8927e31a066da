"""Embeddable entry point: ``start_apiserver(config)`` -> a running stand-in on a real socket.

The CLI and other engineers' tests use the same function, so an in-process test exercises exactly
what ``weir apiserver`` runs. Port 0 binds a free port first (on our own socket) so the chosen port
is known before anything is printed or written to the kubeconfig.

Pre-loaded manifests (10k Services and their slices in the benchmarks) become a few hundred
thousand long-lived dicts; a full cyclic-GC pass over them took 240-400 ms (measured with
``gc.callbacks`` during the programming benchmark), an event-loop stall in the middle of the
churn that every API write and watch event behind it waits for. So after loading, one collection
cleans up and :func:`gc.freeze` takes the loaded state out of later passes (frozen objects are
still freed by reference counting when a later write replaces them).
"""

from __future__ import annotations

import gc
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from aiohttp import web

from services.apiserver.clusterip import ClusterIPAllocator
from services.apiserver.http import HttpSettings, build_app
from services.apiserver.manifests import load_into, read_manifests
from services.apiserver.metrics import ApiMetrics
from services.apiserver.registry import NAMESPACES, Registry
from services.apiserver.store import Store
from services.apiserver.validation import contracts_validator
from services.common.settings import parse_listen

CONTEXT = "weir-sandbox"
INITIAL_NAMESPACES = ("default", "kube-system")


@dataclass
class ApiServerConfig:
    host: str = "127.0.0.1"
    port: int = 6443
    kubeconfig_out: Path | None = None
    manifests: list[Path] = field(default_factory=list)
    service_cidr: str = "10.96.0.0/16"
    bookmark_interval: float = 1.0
    retain_events: int = 10_000
    accept_invalid: bool = False

    @staticmethod
    def parse_listen(listen: str) -> tuple[str, int]:
        parsed = parse_listen(listen)
        if parsed is None:
            raise ValueError("--listen must be HOST:PORT, got an empty value")
        return parsed


@dataclass
class RunningApiServer:
    url: str
    port: int
    store: Store
    registry: Registry
    kubeconfig: Path | None
    _runner: web.AppRunner

    async def stop(self) -> None:
        self.store.close_watches()
        await self._runner.cleanup()


def kubeconfig_text(url: str) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": CONTEXT, "user": {}}],
        "contexts": [
            {
                "name": CONTEXT,
                "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": "default"},
            }
        ],
        "current-context": CONTEXT,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_kubeconfig(path: Path, url: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(kubeconfig_text(url))
    os.replace(tmp, path)  # readers never see a half-written file


def build_registry(config: ApiServerConfig) -> Registry:
    store = Store(retain_events=config.retain_events)
    registry = Registry(store, ClusterIPAllocator(config.service_cidr))
    for ns in INITIAL_NAMESPACES:
        registry.create(NAMESPACES, None, {"metadata": {"name": ns}})
    if not config.accept_invalid:
        registry.deep_validator = contracts_validator()
    if config.manifests:
        load_into(registry, read_manifests(config.manifests))
        gc.collect()
        gc.freeze()
    return registry


async def start_apiserver(config: ApiServerConfig) -> RunningApiServer:
    registry = build_registry(config)
    app = build_app(registry, ApiMetrics(), HttpSettings(config.bookmark_interval))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(128)
        sock.setblocking(False)
        site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    port = sock.getsockname()[1]
    host = f"[{config.host}]" if family == socket.AF_INET6 else config.host
    url = f"http://{host}:{port}"
    if config.kubeconfig_out is not None:
        write_kubeconfig(config.kubeconfig_out, url)
    return RunningApiServer(url, port, registry.store, registry, config.kubeconfig_out, runner)
