"""Where the kubelet's pods actually run: the sandbox's namespaces (real) or a dict (fake).

The kubelet's I/O edge toward the machine is this small interface: start a pod's workload,
stop it, and wait for it to exit. ``SandboxRuntime`` maps it onto :class:`Sandbox` (whose
pyroute2 calls must run off the event loop, so every call goes through ``asyncio.to_thread``,
serialised by one lock because ``Sandbox`` and its state file are not thread-safe).
``FakeRuntime`` hands out addresses from the node's CIDR and lets a test end a pod's process,
so the kubelet's API behaviour is tested against the real API stand-in without root.

Exit detection uses a pidfd: it becomes readable when the process exits, and
``waitid(P_PIDFD, WNOWAIT)`` reads the exit status without reaping, so ``Sandbox`` (which owns
the ``Popen``) still reaps its child on ``remove_pod``. No polling, no SIGCHLD handler.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Protocol

from services.sandbox.cluster import Sandbox
from services.sandbox.podspec import Workload


@dataclass(frozen=True)
class StartedPod:
    ip: str
    pid: int


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ip: str
    pod_cidr: str


class PodRuntime(Protocol):
    def nodes(self) -> list[NodeInfo]: ...
    async def start(
        self, namespace: str, name: str, node: str, workload: Workload
    ) -> StartedPod: ...
    async def stop(self, key: str) -> None: ...
    async def wait_exit(self, key: str, pid: int) -> int: ...


async def wait_pid_exit(pid: int) -> int:
    """Wait until ``pid`` (a child of ours) exits; its exit code, or -signal; -1 if unknown."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return -1
    loop = asyncio.get_running_loop()
    try:
        readable: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        try:
            # the pidfd is readable: the process has exited, so this returns at once
            info = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOWAIT)  # noqa: ASYNC222
        except ChildProcessError:  # not our child, or already reaped elsewhere
            return -1
        if info is None:
            return -1
        if info.si_code == os.CLD_EXITED:
            return int(info.si_status)
        return -int(info.si_status)
    finally:
        os.close(fd)


class SandboxRuntime:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._lock = asyncio.Lock()

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(n.name, str(n.node_ip), str(n.pod_cidr)) for n in self.sandbox.plan.nodes]

    def _start(self, namespace: str, name: str, node: str, workload: Workload) -> StartedPod:
        key = f"{namespace}/{name}"
        try:
            record = self.sandbox.add_pod(
                namespace,
                name,
                node,
                ports=workload.ports,
                command=workload.command,
            )
        except BaseException:
            if key in self.sandbox.state.pods:  # half-built: take it apart again
                self.sandbox.remove_pod(key)
            raise
        assert record.pid is not None
        return StartedPod(record.ip, record.pid)

    async def start(self, namespace: str, name: str, node: str, workload: Workload) -> StartedPod:
        async with self._lock:
            return await asyncio.to_thread(self._start, namespace, name, node, workload)

    async def stop(self, key: str) -> None:
        async with self._lock:
            if key in self.sandbox.state.pods:
                await asyncio.to_thread(self.sandbox.remove_pod, key)

    async def wait_exit(self, key: str, pid: int) -> int:
        return await wait_pid_exit(pid)


@dataclass
class FakeRuntime:
    """In-memory pods: addresses from each node's CIDR, exits under the test's control."""

    node_infos: list[NodeInfo]
    pods: dict[str, tuple[str, Workload, str]] = field(default_factory=dict)  # key->(node,wl,ip)
    fail_with: dict[str, Exception] = field(default_factory=dict)  # pod name -> start error
    _exits: dict[str, asyncio.Future[int]] = field(default_factory=dict)
    _next_pid: int = 1000
    stopped: list[str] = field(default_factory=list)

    def nodes(self) -> list[NodeInfo]:
        return list(self.node_infos)

    async def start(self, namespace: str, name: str, node: str, workload: Workload) -> StartedPod:
        if name in self.fail_with:
            raise self.fail_with[name]
        key = f"{namespace}/{name}"
        info = next(n for n in self.node_infos if n.name == node)
        used = {ip for (n, _, ip) in self.pods.values() if n == node}
        hosts = list(ipaddress.IPv4Network(info.pod_cidr).hosts())[1:]  # .1 is the gateway
        ip = next(str(h) for h in hosts if str(h) not in used)
        self.pods[key] = (node, workload, ip)
        self._exits[key] = asyncio.get_running_loop().create_future()
        self._next_pid += 1
        return StartedPod(ip, self._next_pid)

    async def stop(self, key: str) -> None:
        self.pods.pop(key, None)
        self._exits.pop(key, None)
        self.stopped.append(key)

    async def wait_exit(self, key: str, pid: int) -> int:
        return await self._exits[key]

    def exit(self, key: str, code: int) -> None:
        """Make the pod's process exit with ``code`` (what the process would have done)."""
        self._exits[key].set_result(code)
