"""Real-BPF fixtures: a network namespace with backends, a cgroup v2 directory, a pin directory.

Why this shape: the socket LB only acts on sockets of processes in the cgroup it is attached to,
so clients run as ``ip netns exec NS sh -c 'echo $$ > CG/cgroup.procs; exec python client.py'``:
inside the test's own namespace (all traffic stays there) and inside the test's own cgroup.
Backends are extra addresses on the namespace's loopback, served by one echo process. Every name
is unique per run and everything is torn down also when a test fails: processes in the namespace
and cgroup (ours by construction), links, pins, the cgroup and the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.datapath import bpfsys
from services.datapath.bpflayout import MapCapacities
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.lbmap import (
    PROTO_TCP,
    BackendValue,
    RevNatValue,
    ServiceFlags,
    ServiceKey,
    ServiceValue,
    derive_frontends,
)
from services.datapath.loader import PROGRAMS, SockLB, remove_pins
from tests.conftest import unique_name

HERE = Path(__file__).resolve().parent
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
BPFFS = Path("/sys/fs/bpf")
BACKENDS = ("10.244.0.11", "10.244.0.12", "10.244.0.13")
BACKEND_PORT = 8080
SMALL = MapCapacities(
    services=1024, backends=1024, revnat=256, affinity=256, sk_revnat=1024, sk_peer=1024
)

pytestmark = pytest.mark.bpf


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session", autouse=True)
def _need_root_bpf() -> None:
    if os.geteuid() != 0:
        pytest.fail("the BPF tests need root (CAP_BPF, netns, cgroups): run them as root")


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A fresh netns: lo up, the backend addresses on lo, no route anywhere else."""
    name = unique_name("weirt-")
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        for ip in BACKENDS:
            sh("ip", "-n", name, "addr", "add", f"{ip}/32", "dev", "lo")
        yield name
    finally:
        pids = subprocess.run(
            ["ip", "netns", "pids", name], check=False, capture_output=True, text=True
        )
        kill_pids([int(p) for p in pids.stdout.split()])
        subprocess.run(["ip", "netns", "del", name], check=False)


def make_cgroup() -> Path:
    path = CGROUP_ROOT / unique_name("weir-test-", max_len=24)
    path.mkdir()
    return path


def remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for _ in range(50):
        procs = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        kill_pids(procs)
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)
    path.rmdir()


@pytest.fixture(scope="module")
def cgroup() -> Iterator[Path]:
    path = make_cgroup()
    try:
        yield path
    finally:
        remove_cgroup(path)


@pytest.fixture
def own_cgroup() -> Iterator[Path]:
    """A cgroup of this test's own (programs attached and detached by the test itself)."""
    path = make_cgroup()
    try:
        yield path
    finally:
        remove_cgroup(path)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that changed between two reads of the datapath counters."""
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture(scope="module")
def pin_root() -> Iterator[Path]:
    path = BPFFS / unique_name("weir-test-", max_len=24)
    try:
        yield path
    finally:
        if path.exists():
            for version in path.iterdir():
                remove_pins(version)
            shutil.rmtree(path, ignore_errors=True)


def pinned_shape(path: Path) -> tuple[int, int, int, int, int]:
    """(type, key size, value size, max entries, flags) of the map pinned at ``path``, read from
    the kernel (what pin_handmade_map takes)."""
    fd = bpfsys.obj_get(path)
    try:
        info = bpfsys.map_info(fd)
    finally:
        os.close(fd)
    return (info.type, info.key_size, info.value_size, info.max_entries, info.flags)


def pin_handmade_map(path: Path, shape: tuple[int, int, int, int, int]) -> None:
    """Pin a map of ``shape`` (type, key size, value size, max entries, flags) at ``path``, as
    another build would have left it (for the pin-verification tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = bpfsys.map_create(*shape)
    try:
        bpfsys.obj_pin(fd, path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def echo_servers(netns: str, port: int) -> Iterator[subprocess.Popen[str]]:
    """Echo servers (TCP and UDP) on BACKENDS at ``port`` inside ``netns``, killed on exit."""
    addrs = [f"{ip}:{port}" for ip in BACKENDS]
    cmd = ["ip", "netns", "exec", netns, sys.executable, str(HERE / "echo_server.py"), *addrs]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", "echo server did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def servers(netns: str) -> Iterator[subprocess.Popen[str]]:
    with echo_servers(netns, BACKEND_PORT) as proc:
        yield proc


@pytest.fixture(scope="module")
def sock_lb(pin_root: Path, cgroup: Path) -> Iterator[SockLB]:
    lb = SockLB(pin_root, SMALL)
    try:
        lb.load()
        lb.attach(cgroup)
        yield lb
    finally:
        with contextlib.suppress(Exception):
            lb.detach(cgroup)
        lb.close()


@contextlib.contextmanager
def emptied_maps(lb: SockLB) -> Iterator[BpfLBMap]:
    """``lb``'s maps, emptied first (each test programs its own services); closed on exit."""
    maps = lb.maps()
    try:
        state = maps.dump()
        maps.delete_frontends(state.frontends)
        maps.delete_services(state.services)
        maps.delete_backends(state.backends)
        maps.delete_revnat(state.revnat)
        yield maps
    finally:
        maps.close()


@pytest.fixture
def lbmap(sock_lb: SockLB) -> Iterator[BpfLBMap]:
    """The module's maps, emptied before the test (each test programs its own services)."""
    with emptied_maps(sock_lb) as maps:
        yield maps


def attached(cgroup: Path) -> dict[str, list[int]]:
    """The ids of the programs attached to ``cgroup``, per attach point (short name)."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {short: bpfsys.prog_query(fd, kind) for _f, _type, kind, short in PROGRAMS}
    finally:
        os.close(fd)


def client_cmd(netns: str, cgroup: Path, *args: str) -> list[str]:
    # Join the cgroup first: `ip netns exec` remounts /sys, hiding the cgroup2 mount.
    join = 'echo $$ > "$1"/cgroup.procs && shift && exec "$@"'
    script = str(HERE / "client.py")
    return [
        "sh",
        "-c",
        join,
        "sh",
        str(cgroup),
        "ip",
        "netns",
        "exec",
        netns,
        sys.executable,
        script,
        *args,
    ]


class HeldSocket:
    """One socket of ``client.py hold`` in the netns and cgroup, kept open until close()."""

    def __init__(self, netns: str, cgroup: Path, mode: str, vip: str, port: int) -> None:
        cmd = client_cmd(netns, cgroup, "hold", mode, vip, str(port))
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        first = self._read()
        self.cookie: int = first["cookie"]
        self.backend: str = first["backend"]
        self.first_peer: str | None = first["peer"]
        self.source: str | None = first["source"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            assert self.proc.stderr is not None
            raise AssertionError(f"hold client failed: {self.proc.stderr.read()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def peer(self) -> str:
        return str(self._ask("peer")["peer"])

    def close(self) -> None:
        """Close the socket; returns once the client has closed it (release has run)."""
        assert self._ask("close") == {"closed": True}
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def held(netns: str, cgroup: Path, mode: str, vip: str, port: int) -> Iterator[HeldSocket]:
    """A :class:`HeldSocket`, killed on exit if the test did not close it."""
    sock = HeldSocket(netns, cgroup, mode, vip, port)
    try:
        yield sock
    finally:
        sock.kill()


def run_client(netns: str, cgroup: Path, *args: str, timeout: float = 60) -> object:
    """Run client.py in the netns and cgroup; its JSON output."""
    done = subprocess.run(
        client_cmd(netns, cgroup, *args),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def program_service(
    maps: BpfLBMap,
    vip: str,
    port: int,
    backend_ids: list[int],
    *,
    proto: int = PROTO_TCP,
    rev_nat_id: int = 1,
    flags: ServiceFlags = ServiceFlags.NONE,
    timeout: int = 0,
) -> None:
    """Backends 1..3 are BACKENDS[0..2] on BACKEND_PORT; write in the datapath-safe order
    (the worker's: backends, slots, reverse NAT, master, frontend)."""
    maps.update_backends(
        {i: BackendValue(BACKENDS[i - 1], BACKEND_PORT, proto) for i in backend_ids if i <= 3}
    )
    maps.update_services(
        {
            ServiceKey(vip, port, proto, slot): ServiceValue(backend_id=bid, rev_nat_id=rev_nat_id)
            for slot, bid in enumerate(backend_ids, start=1)
        }
    )
    maps.update_revnat({rev_nat_id: RevNatValue(vip, port)})
    if not backend_ids:
        flags |= ServiceFlags.NO_BACKENDS
    master = ServiceValue(
        count=len(backend_ids), rev_nat_id=rev_nat_id, flags=flags, affinity_timeout=timeout
    )
    maps.update_services({ServiceKey(vip, port, proto): master})
    write_frontend(maps, ServiceKey(vip, port, proto))


def write_frontend(maps: BpfLBMap, key: ServiceKey) -> None:
    """Write the frontend entry the maps' master ``key`` and its slots imply (the last step of a
    service change, before trimming slots), as the reconciler does."""
    maps.update_frontends({key: derive_frontends(maps.dump())[key]})
