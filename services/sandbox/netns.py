"""Network-namespace I/O: create/delete named netns and apply wiring steps with pyroute2.

This is the thin edge under the pure ``wiring.py``: it knows pyroute2 and the kernel, nothing
about nodes or pods. Two implementations share the ``NetOps`` interface: ``LinuxNet`` (real
namespaces, root only) and ``FakeNet`` (an in-memory model for tests of the orchestration
logic). Everything is idempotent, because ``up`` may be re-run after a partial failure and
``down`` may run against a half-built sandbox:

* adding an address or route that already exists is not an error; a veth whose name already
  exists in its namespace is left alone;
* deleting a netns that does not exist is not an error; processes still inside a namespace are
  SIGKILLed first, because a process keeps a namespace (and its veths) alive after the name is
  unmounted, which would leak invisible interfaces.

Links are always created INSIDE a sandbox namespace with the peer moved straight into the other
sandbox namespace, so not even a transient interface appears in the host (root) namespace.
Sysctls are written from a short-lived thread that joins the namespace (setns only affects the
calling thread; ``/proc/sys/net`` resolves against the opener's netns), so no subprocess is
needed and the host's own sysctls are never touched.

pyroute2's synchronous ``IPRoute`` runs its own event loop: call these functions from a thread
(``asyncio.to_thread``) when inside asyncio.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from pyroute2 import IPRoute, NetlinkError
from pyroute2 import netns as pr_netns

from services.sandbox.wiring import Addr, LinkUp, Route, Step, Sysctl, Veth

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
RT_SCOPE_LINK = 253


class NetError(RuntimeError):
    """A wiring step failed; the message names the namespace, the link and the step."""


class NetOps(Protocol):
    def create_netns(self, name: str) -> None: ...
    def delete_netns(self, name: str) -> None: ...
    def list_netns(self, prefix: str) -> list[str]: ...
    def apply(self, steps: Iterable[Step]) -> None: ...


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def pids_in_netns(name: str) -> list[int]:
    """Pids whose network namespace is the named one (compares device + inode)."""
    try:
        st = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ps = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (ps.st_dev, ps.st_ino) == (st.st_dev, st.st_ino):
            pids.append(int(entry))
    return pids


def _setns_thread(name: str, action: Any) -> None:
    """Run ``action()`` in a fresh thread that has joined netns ``name``; re-raise its error."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path(name), os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            action()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name=f"setns-{name}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def write_sysctl(netns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as fh:
            fh.write(value)

    _setns_thread(netns, write)


def read_sysctl(netns: str, key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/")
    out: list[str] = []

    def read() -> None:
        with open(path) as fh:
            out.append(fh.read().strip())

    _setns_thread(netns, read)
    return out[0]


class LinuxNet:
    """The real implementation: named namespaces under /run/netns, pyroute2 for netlink."""

    def create_netns(self, name: str) -> None:
        if netns_path(name).exists():
            return
        pr_netns.create(name)

    def delete_netns(self, name: str) -> None:
        if not netns_path(name).exists():
            return
        for pid in pids_in_netns(name):
            if pid != os.getpid():
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with suppress(FileNotFoundError):
            pr_netns.remove(name)

    def list_netns(self, prefix: str) -> list[str]:
        if not NETNS_DIR.is_dir():
            return []
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))

    def apply(self, steps: Iterable[Step]) -> None:
        with ExitStack() as stack:
            handles: dict[str, Any] = {}

            def ipr(ns: str) -> Any:
                if ns not in handles:
                    if not netns_path(ns).exists():
                        raise NetError(f"netns {ns}: does not exist")
                    handles[ns] = stack.enter_context(IPRoute(netns=ns, flags=0))
                return handles[ns]

            for step in steps:
                try:
                    self._apply_one(step, ipr)
                except NetlinkError as exc:
                    raise NetError(f"{step}: netlink error {exc.code}: {exc}") from exc

    @staticmethod
    def _index(ip: Any, netns: str, ifname: str) -> int:
        found = ip.link_lookup(ifname=ifname)
        if not found:
            raise NetError(f"netns {netns}: link {ifname}: not found")
        return int(found[0])

    def _apply_one(self, step: Step, ipr: Any) -> None:
        if isinstance(step, Sysctl):
            write_sysctl(step.netns, step.key, step.value)
            return
        ip = ipr(step.netns)
        if isinstance(step, Veth):
            if ip.link_lookup(ifname=step.ifname):
                return
            ipr(step.peer_netns)  # fail with a clear error if the peer namespace is missing
            ip.link(
                "add",
                ifname=step.ifname,
                kind="veth",
                peer={"ifname": step.peer_ifname, "net_ns_fd": step.peer_netns},
            )
        elif isinstance(step, LinkUp):
            ip.link("set", index=self._index(ip, step.netns, step.ifname), state="up")
        elif isinstance(step, Addr):
            idx = self._index(ip, step.netns, step.ifname)
            with _tolerate(errno.EEXIST):
                ip.addr("add", index=idx, address=step.address, prefixlen=step.prefixlen)
        elif isinstance(step, Route):
            dst = "0.0.0.0/0" if step.dst == "default" else step.dst
            spec: dict[str, Any] = {"dst": dst}
            if step.blackhole:
                spec["type"] = "blackhole"
            else:
                if step.ifname is not None:
                    spec["oif"] = self._index(ip, step.netns, step.ifname)
                if step.gateway is not None:
                    spec["gateway"] = step.gateway
                else:
                    spec["scope"] = RT_SCOPE_LINK
            with _tolerate(errno.EEXIST):
                ip.route("add", **spec)


@contextmanager
def _tolerate(code: int) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        if exc.code != code:
            raise


class FakeNet:
    """In-memory model with the same contract, for tests that must run without root."""

    def __init__(self) -> None:
        self.namespaces: dict[str, list[Step]] = {}
        self.deleted: list[str] = []

    def create_netns(self, name: str) -> None:
        self.namespaces.setdefault(name, [])

    def delete_netns(self, name: str) -> None:
        if self.namespaces.pop(name, None) is not None:
            self.deleted.append(name)

    def list_netns(self, prefix: str) -> list[str]:
        return sorted(n for n in self.namespaces if n.startswith(prefix))

    def apply(self, steps: Iterable[Step]) -> None:
        for step in steps:
            for ns in (step.netns, *([step.peer_netns] if isinstance(step, Veth) else [])):
                if ns not in self.namespaces:
                    raise NetError(f"netns {ns}: does not exist")
            if step not in self.namespaces[step.netns]:
                self.namespaces[step.netns].append(step)
