"""Where a pod's host-side interface is, and putting the policy programs on it (netlink I/O).

Why this shape: the worker runs in the root namespace while the pods' veths live in the node's
namespace, and the only reliable link from a pod (an IP on the bus) to its interface is the
node's own routing table: the sandbox (like a CNI) installs a /32 route to each pod IP on the
pod's host-side veth. So one route dump per resolution maps every local pod IP to its ifindex,
whatever the interface is called. :class:`Interfaces` is the small interface the policy loop
uses; :class:`NetnsInterfaces` is the real one (pyroute2 in the node's netns, attaching through
``PolicyLoader``), :class:`StaticInterfaces` the fake for tests without root.

pyroute2's synchronous API runs its own event loop and is not thread-safe, so every netlink call
of one :class:`NetnsInterfaces` goes through its single worker thread (``call``); the netns
socket is opened once, lazily, in that thread.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

MAIN_TABLE = 254


class Interfaces(Protocol):
    async def routes(self) -> dict[str, int]:
        """Every IPv4 /32 route of the node's main table: address -> output ifindex."""
        ...

    async def attach(self, ifindex: int) -> None:
        """Put (or atomically replace) the policy programs on ``ifindex``; idempotent."""
        ...

    def close(self) -> None: ...


def host_routes(messages: list[Any]) -> dict[str, int]:
    """Pure: /32 unicast routes of the main table from pyroute2 route messages."""
    out: dict[str, int] = {}
    for msg in messages:
        if msg.get("dst_len") != 32 or msg.get("family") != socket.AF_INET:
            continue
        table = msg.get_attr("RTA_TABLE") or msg.get("table")
        dst, oif = msg.get_attr("RTA_DST"), msg.get_attr("RTA_OIF")
        if table == MAIN_TABLE and isinstance(dst, str) and isinstance(oif, int):
            out[dst] = oif
    return out


class NetnsInterfaces:
    """Routes and tc attachment in one named network namespace (None: this process's)."""

    def __init__(self, netns: str | None, attach: Callable[[int, str | None], object]) -> None:
        self.netns = netns or None
        self._attach = attach  # PolicyLoader.attach
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-netlink")
        self._ipr: Any = None

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _iproute(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute  # noqa: PLC0415 - only the bpf path needs netlink

            if self.netns is None:
                self._ipr = IPRoute()
            else:
                path = Path(self.netns) if "/" in self.netns else Path("/run/netns") / self.netns
                if not path.exists():
                    raise FileNotFoundError(f"network namespace {self.netns!r}: no {path}")
                self._ipr = IPRoute(netns=str(path), flags=0)
        return self._ipr

    def _routes(self) -> dict[str, int]:
        return host_routes(list(self._iproute().get_routes(family=socket.AF_INET)))

    async def routes(self) -> dict[str, int]:
        return await self.call(self._routes)

    async def attach(self, ifindex: int) -> None:
        await self.call(lambda: self._attach(ifindex, self.netns))

    def close(self) -> None:
        def shut() -> None:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

        self._pool.submit(shut).result(timeout=10)
        self._pool.shutdown(wait=True)


class StaticInterfaces:
    """A fake: routes from a dict the test edits; records attachments."""

    def __init__(self, routes: dict[str, int] | None = None) -> None:
        self.table: dict[str, int] = dict(routes or {})
        self.attached: list[int] = []
        self.fail_attach: set[int] = set()

    async def routes(self) -> dict[str, int]:
        return dict(self.table)

    async def attach(self, ifindex: int) -> None:
        if ifindex in self.fail_attach:
            raise OSError(f"interface {ifindex}: attach refused (test)")
        self.attached.append(ifindex)

    def close(self) -> None:
        pass
