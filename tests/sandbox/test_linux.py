"""A real two-node sandbox with two echo pods per node: traffic, exec, cgroups, netns, routes.

Built once per module (building takes ~1 s); every test only reads it or runs commands in pods.
Traffic stays inside the sandbox's own namespaces. The sandbox is torn down even if a test
fails, and the teardown itself is checked in ``test_lifecycle.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.sandbox import procs
from services.sandbox.cluster import Sandbox, teardown_all
from services.sandbox.netns import netns_path, read_sysctl
from services.sandbox.state import FileStateStore
from tests.sandbox.conftest import host_snapshot, needs_root, new_sandbox_id

pytestmark = needs_root

PODS = {"default/a1": "node1", "default/a2": "node1", "default/b1": "node2", "other/b2": "node2"}
PORT = 8080


def client(proto: str, ip: str, port: int = PORT, timeout: float = 3.0) -> list[str]:
    """A python client argv that sends one request and prints the reply (or the error)."""
    code = (
        "import socket,sys\n"
        f"kind = socket.SOCK_STREAM if {proto!r} == 'tcp' else socket.SOCK_DGRAM\n"
        "s = socket.socket(socket.AF_INET, kind)\n"
        f"s.settimeout({timeout})\n"
        "try:\n"
        f"    s.connect(({ip!r}, {port}))\n"
        "    s.send(b'hello\\n')\n"
        "    sys.stdout.write(s.recv(100).decode())\n"
        "except OSError as e:\n"
        "    sys.stdout.write(type(e).__name__ + ' ' + str(e.errno) + '\\n'); sys.exit(1)\n"
    )
    return [sys.executable, "-c", code]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    state_root = tmp_path_factory.mktemp("state")
    sandbox_id = new_sandbox_id()
    before = host_snapshot()
    sb = Sandbox.create(sandbox_id, ["node1", "node2"], state_root=state_root)
    try:
        sb.up()
        for key, node in PODS.items():
            ns, name = key.split("/")
            sb.add_pod(ns, name, node, ports=[(PORT, "TCP"), (PORT, "UDP")])
        assert host_snapshot() == before, "the sandbox changed the host namespace"
        yield sb
    finally:
        teardown_all(sandbox_id, FileStateStore(state_root))


def ip_of(sb: Sandbox, key: str) -> str:
    return sb.state.pods[key].ip


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("default/a1", "default/b1"),  # across nodes, through the fabric
        ("other/b2", "default/a2"),  # across nodes, the other way
        ("default/a1", "default/a2"),  # same node
    ],
)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_pod_to_pod_reaches_the_named_pod(sandbox: Sandbox, src: str, dst: str, proto: str) -> None:
    result = sandbox.exec(src, client(proto, ip_of(sandbox, dst)), timeout=10)
    assert result.returncode == 0, result
    assert result.stdout == f"{dst.split('/')[1]}\n".encode()


def test_unassigned_pod_address_is_dropped_in_the_sandbox(sandbox: Sandbox) -> None:
    # 10.244.1.200 is in node1's podCIDR but unassigned: node1's blackhole drops it silently
    result = sandbox.exec("default/b1", client("tcp", "10.244.1.200", timeout=0.5), timeout=10)
    assert (result.returncode, result.stdout) == (1, b"TimeoutError None\n")


@pytest.mark.parametrize("dst", ["10.96.0.1", "10.244.77.7"])
def test_node_blackholes_service_and_unknown_pod_cidrs(sandbox: Sandbox, dst: str) -> None:
    # from the node's own namespace the blackhole route answers at once: EINVAL (22)
    node = sandbox.plan.nodes[0]
    result = procs.run(node.netns, None, client("tcp", dst, timeout=2), timeout=10)
    assert (result.returncode, result.stdout) == (1, b"OSError 22\n")


def test_udp_connect_to_a_service_ip_has_a_route(sandbox: Sandbox) -> None:
    code = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.connect(('10.96.0.10', 53))\nprint(s.getsockname()[0])\n"
    )
    result = sandbox.exec("default/a1", [sys.executable, "-c", code], timeout=10)
    assert result.returncode == 0, result
    assert result.stdout.decode().strip() == ip_of(sandbox, "default/a1")


def test_exec_passes_exit_code_stdout_and_stderr(sandbox: Sandbox) -> None:
    result = sandbox.exec(
        "default/b1", ["sh", "-c", "cat; echo out; echo err >&2; exit 7"], stdin=b"in\n", timeout=10
    )
    assert (result.returncode, result.stdout, result.stderr) == (7, b"in\nout\n", b"err\n")


def test_exec_runs_in_the_pod_namespace(sandbox: Sandbox) -> None:
    result = sandbox.exec("default/b1", ["cat", "/proc/net/fib_trie"], timeout=10)
    assert result.returncode == 0
    assert ip_of(sandbox, "default/b1").encode() in result.stdout
    assert b"192.0.2.2" not in result.stdout  # not the host's address


def test_exec_unknown_command_is_127(sandbox: Sandbox) -> None:
    result = sandbox.exec("default/a1", ["no-such-command-weir"], timeout=10)
    assert result.returncode == 127
    assert b"no-such-command-weir: command not found" in result.stderr


def test_pod_process_is_in_pod_cgroup_and_netns(sandbox: Sandbox) -> None:
    for key, record in sandbox.state.pods.items():
        assert record.pid is not None
        cgroup_line = Path(f"/proc/{record.pid}/cgroup").read_text().splitlines()[-1]
        assert cgroup_line == f"0::/{record.cgroup}", key
        assert record.cgroup.startswith(f"{sandbox.plan.node(record.node).cgroup}/pods/")
        pid_ns = os.stat(f"/proc/{record.pid}/ns/net")
        pod_ns = os.stat(netns_path(record.netns))
        assert (pid_ns.st_dev, pid_ns.st_ino) == (pod_ns.st_dev, pod_ns.st_ino), key


def test_exec_joins_the_pod_cgroup(sandbox: Sandbox) -> None:
    result = sandbox.exec("other/b2", ["cat", "/proc/self/cgroup"], timeout=10)
    assert result.stdout.decode().splitlines()[-1] == "0::/weir-" + (
        f"{sandbox.plan.sandbox_id}/node2/pods/other_b2"
    )


def test_forwarding_only_inside_sandbox(sandbox: Sandbox) -> None:
    assert read_sysctl(sandbox.plan.fabric_netns, "net.ipv4.ip_forward") == "1"
    for node in sandbox.plan.nodes:
        assert read_sysctl(node.netns, "net.ipv4.ip_forward") == "1"
    pod = sandbox.state.pods["default/a1"]
    assert read_sysctl(pod.netns, "net.ipv4.ip_forward") == "0"


def test_node_cgroup_and_pin_dir_exist(sandbox: Sandbox) -> None:
    for node in sandbox.plan.nodes:
        assert (sandbox.node_cgroup(node.name) / "cgroup.procs").is_file()
        assert sandbox.node_pin_dir(node.name).is_dir()
