"""Teardown leaves nothing behind: after ``down``, and after a crash that lost the state file.

"Nothing" is checked directly in the kernel's views: named netns, the cgroup and bpffs trees,
processes (by pid and by cgroup membership), and the host namespace's routes, rules and links.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.sandbox import procs
from services.sandbox.cluster import Sandbox, teardown_all
from services.sandbox.netns import NETNS_DIR, pids_in_netns
from services.sandbox.state import DEFAULT_BPFFS_ROOT, DEFAULT_CGROUP_ROOT, FileStateStore
from tests.sandbox.conftest import host_snapshot, needs_root, new_sandbox_id

pytestmark = needs_root


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of this test process is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def leftovers(sandbox_id: str, state_root: Path) -> list[str]:
    found = [f"netns {n}" for n in os.listdir(NETNS_DIR) if n.startswith(f"weir-{sandbox_id}-")]
    for root in (DEFAULT_CGROUP_ROOT, DEFAULT_BPFFS_ROOT):
        if (root / f"weir-{sandbox_id}").exists():
            found.append(str(root / f"weir-{sandbox_id}"))
    if (state_root / sandbox_id).exists():
        found.append(f"state {state_root / sandbox_id}")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/cgroup").read_text()
            except OSError:
                continue
            if not alive(int(entry)):
                continue  # a zombie: already dead, only waiting for its parent to reap it
            if f"/weir-{sandbox_id}/" in text or text.endswith(f"/weir-{sandbox_id}\n"):
                found.append(f"process {entry} in the sandbox cgroup")
    return found


def build(sandbox_id: str, state_root: Path) -> Sandbox:
    sb = Sandbox.create(sandbox_id, ["node1", "node2"], state_root=state_root)
    sb.up()
    sb.add_pod("default", "echo", "node1", ports=[(9000, "TCP")])
    sb.add_pod("default", "sleeper", "node2", command=["sleep", "300"])
    # the node's datapath would pin maps here; a pinned dir + file must go too
    pin = sb.node_pin_dir("node1") / "v1"
    pin.mkdir()
    return sb


def test_up_then_down_leaves_nothing_and_host_unchanged(state_root: Path) -> None:
    sandbox_id = new_sandbox_id()
    before = host_snapshot()
    try:
        sb = build(sandbox_id, state_root)
        assert host_snapshot() == before
        pids = [p.pid for p in sb.state.pods.values() if p.pid is not None]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        assert FileStateStore(state_root).load(sandbox_id) is not None
        sb.down()
        assert [p for p in pids if alive(p)] == [], [
            (Path(f"/proc/{p}/cgroup").read_text(), Path(f"/proc/{p}/cmdline").read_bytes())
            for p in pids
            if alive(p)
        ]
        assert leftovers(sandbox_id, state_root) == []
        assert host_snapshot() == before
        teardown_all(sandbox_id, FileStateStore(state_root))  # idempotent: nothing left to do
    finally:
        teardown_all(sandbox_id, FileStateStore(state_root))


def test_teardown_after_crash_without_state_file(state_root: Path) -> None:
    sandbox_id = new_sandbox_id()
    before = host_snapshot()
    stray: subprocess.Popen[bytes] | None = None
    try:
        sb = build(sandbox_id, state_root)
        # a process that entered a pod's netns but NOT its cgroup (e.g. a debugging shell):
        # it would keep the namespace and its veths alive after the name is gone
        pod_ns = sb.state.pods["default/echo"].netns
        stray = subprocess.Popen(
            procs.exec_argv(pod_ns, None, ["sleep", "300"]), start_new_session=True
        )
        for _ in range(200):
            if stray.pid in pids_in_netns(pod_ns):
                break
            subprocess.run(["sleep", "0.01"], check=True)
        assert stray.pid in pids_in_netns(pod_ns)
        # the orchestrator "crashes": its state file is lost
        FileStateStore(state_root).delete(sandbox_id)
        teardown_all(sandbox_id, FileStateStore(state_root))
        stray.wait(timeout=5)
        assert stray.returncode == -signal.SIGKILL
        assert leftovers(sandbox_id, state_root) == []
        assert host_snapshot() == before
    finally:
        if stray is not None and stray.poll() is None:
            stray.kill()
            stray.wait()
        teardown_all(sandbox_id, FileStateStore(state_root))


def test_remove_pod_kills_its_process_and_frees_its_address(
    make_sandbox: list[Sandbox], state_root: Path
) -> None:
    sb = Sandbox.create(new_sandbox_id(), ["node1"], state_root=state_root)
    make_sandbox.append(sb)
    sb.up()
    first = sb.add_pod("default", "p1", "node1", command=["sleep", "300"])
    assert first.pid is not None and alive(first.pid)
    sb.remove_pod("default/p1")
    assert not alive(first.pid)
    assert not (NETNS_DIR / first.netns).exists()
    assert not (sb.cgroup_root / first.cgroup).exists()
    again = sb.add_pod("default", "p2", "node1", start=False)
    assert again.ip == first.ip  # the freed address is reused
    ns_state = FileStateStore(state_root).load(sb.plan.sandbox_id)
    assert ns_state is not None and list(ns_state.pods) == ["default/p2"]


def test_pod_with_failing_echo_reports_its_log(
    make_sandbox: list[Sandbox], state_root: Path
) -> None:
    sb = Sandbox.create(new_sandbox_id(), ["node1"], state_root=state_root)
    make_sandbox.append(sb)
    sb.up()
    sb.add_pod("default", "p1", "node1", ports=[(9000, "TCP")], start=False)
    argv = [
        sys.executable,
        "-m",
        procs.ECHO_MODULE,
        "--name",
        "p1",
        "--tcp",
        "9000",
        "--tcp",
        "9000",
    ]
    with pytest.raises(procs.ProcError, match=r"pod default/p1: exited with 1 before ready"):
        sb.start_pod("default/p1", argv)
