"""Real-BPF policy fixtures: a node namespace with three pods on veths, the programs attached.

Why this shape: the policy programs sit on each pod's host-side veth in the node's namespace, so
the lab is one "node" netns and one netns per pod, each pod with a /32 address, a veth whose host
side (``lxc…``) lives in the node, and routes through the node (169.254.1.1, answered by the
node, which forwards between the pods). Nothing routes anywhere else: all traffic stays inside
namespaces this module created. Every pod runs one echo server (TCP and UDP) on a few ports.
Clients are sockets the test process opens *inside* a pod's namespace (a thread enters it with
setns, creates the socket, and leaves), so a connection attempt costs no process start.

Only the fixtures need root (test_decide.py runs without). Names are unique per run;
namespaces (with their processes) and pins are removed at teardown
also when a test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.datapath.flowevents import FlowEventReader, RawFlowEvent
from services.datapath.policybpf import BpfPolicyMaps
from services.datapath.policylayout import PolicyCapacities
from services.datapath.policyloader import PolicyLoader
from tests.conftest import unique_name

ECHO_SERVER = Path(__file__).resolve().parents[1] / "bpf" / "echo_server.py"
BPFFS = Path("/sys/fs/bpf")
GATEWAY = "169.254.1.1"
POD_NET = "10.210.0.0/16"
PORTS = (8080, 8081, 9005, 9011)
SMALL = PolicyCapacities(endpoints=64, ipcache=256, rules=1024, ct=1024, events_bytes=1 << 16)
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Pod:
    name: str  # short role: srv, cli, ext
    netns: str
    ip: str
    lxc: str  # host-side veth in the node netns
    ifindex: int  # of lxc, in the node netns


@dataclass(frozen=True)
class Lab:
    node: str
    pods: dict[str, Pod]
    pin_root: Path


def _add_pod(node: str, role: str, ip: str) -> Pod:
    ns = unique_name(f"weirp{role}-")
    lxc = unique_name("lxc")
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", node, "link", "add", lxc, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", node, "link", "set", lxc, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
    sh("ip", "-n", ns, "route", "add", GATEWAY, "dev", "eth0", "scope", "link")
    sh("ip", "-n", ns, "route", "add", POD_NET, "via", GATEWAY, "dev", "eth0", "src", ip)
    sh("ip", "-n", node, "route", "add", f"{ip}/32", "dev", lxc)
    return Pod(role, ns, ip, lxc, _ifindex(node, lxc))


def _ifindex(netns: str, ifname: str) -> int:
    out = sh("ip", "-n", netns, "-o", "link", "show", "dev", ifname)
    return int(out.split(":", 1)[0])


def _delete_netns(name: str) -> None:
    pids = subprocess.run(
        ["ip", "netns", "pids", name], check=False, capture_output=True, text=True
    )
    for pid in pids.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture(scope="package")
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the policy BPF tests need root (CAP_BPF, netns): run them as root")


@pytest.fixture(scope="package")
def lab(_need_root: None) -> Iterator[Lab]:
    node = unique_name("weirpnode-")
    pin_root = BPFFS / unique_name("weir-ptest-", max_len=24)
    namespaces = [node]
    servers: list[subprocess.Popen[str]] = []
    try:
        sh("ip", "netns", "add", node)
        sh("ip", "-n", node, "link", "set", "lo", "up")
        sh("ip", "-n", node, "addr", "add", f"{GATEWAY}/32", "dev", "lo")
        sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        pods = {}
        for role, ip in (("srv", "10.210.0.10"), ("cli", "10.210.1.5"), ("ext", "10.210.1.20")):
            pod = _add_pod(node, role, ip)
            namespaces.append(pod.netns)
            pods[role] = pod
            addrs = [f"{ip}:{port}" for port in PORTS]
            cmd = ["ip", "netns", "exec", pod.netns, sys.executable, str(ECHO_SERVER), *addrs]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            servers.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", f"echo server in {role} failed"
        yield Lab(node, pods, pin_root)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait(timeout=5)
        for ns in namespaces:
            _delete_netns(ns)
        if pin_root.exists():
            shutil.rmtree(pin_root, ignore_errors=True)


@pytest.fixture(scope="package")
def loader(lab: Lab) -> Iterator[PolicyLoader]:
    loaded = PolicyLoader(lab.pin_root, SMALL)
    try:
        loaded.load()
        for pod in lab.pods.values():
            loaded.attach(pod.lxc, lab.node)
        yield loaded
    finally:
        loaded.close()


@pytest.fixture(scope="package")
def events(loader: PolicyLoader) -> Iterator[FlowEventReader]:
    reader = FlowEventReader(loader.events_pin)
    try:
        yield reader
    finally:
        reader.close()


@pytest.fixture
def maps(loader: PolicyLoader, events: FlowEventReader) -> Iterator[BpfPolicyMaps]:
    """Empty policy maps and conntrack, no pending events, for every test."""
    m = loader.maps()
    try:
        state = m.dump()
        m.delete_endpoints(state.endpoints)
        m.delete_ipcache(state.ipcache)
        m.delete_policy(state.policy)
        m.flush_conntrack()
        events.drain()
        yield m
    finally:
        m.close()


# --- clients inside a pod's namespace -----------------------------------------------------------


def netns_socket(netns: str, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside ``netns`` (it stays there; the creating thread enters and dies)."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_create() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_INET, kind, proto))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=enter_and_create)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def tcp(pod: Pod, ip: str, port: int, timeout: float = 0.6) -> str:
    """Connect from ``pod``; the echo server's answer ("ip:port"), or the failure's name."""
    with netns_socket(pod.netns, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
            return s.recv(64).decode()
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))


def udp(pod: Pod, ip: str, port: int, timeout: float = 0.6) -> str:
    with netns_socket(pod.netns, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(b"hi", (ip, port))
            return s.recvfrom(64)[0].decode()
        except TimeoutError:
            return "timeout"


def ping(pod: Pod, ip: str, ident: int, timeout: float = 0.6) -> bool:
    """One ICMP echo from ``pod`` (raw socket); True when the matching reply arrived."""
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"weir"
    total = sum(struct.unpack("!4H", header[:8])) + sum(struct.unpack("!2H", header[8:]))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    packet = header[:2] + struct.pack("!H", ~total & 0xFFFF) + header[4:]
    with netns_socket(pod.netns, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        s.sendto(packet, (ip, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, (src, _) = s.recvfrom(256)
            except TimeoutError:
                return False
            icmp = data[(data[0] & 0x0F) * 4 :]
            if src == ip and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                return True
    return False


def wait_events(reader: FlowEventReader, count: int, timeout: float = 2.0) -> list[RawFlowEvent]:
    """At least ``count`` events (all that arrived), or fail after ``timeout`` seconds."""
    got: list[RawFlowEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += reader.poll(max(0.0, deadline - time.monotonic()))
    assert len(got) >= count, f"expected {count} events, got {got}"
    return got
