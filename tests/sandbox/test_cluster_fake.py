"""Sandbox orchestration logic against the fake network: write-ahead state, sweep by id.

The cgroup and bpffs roots are plain temporary directories here (hostfs only makes and removes
directories), so these tests need no root and still exercise the real state file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from services.sandbox.cluster import Sandbox, teardown_all
from services.sandbox.netns import FakeNet
from services.sandbox.state import FileStateStore
from services.sandbox.topology import TopologyError
from services.sandbox.wiring import Step


class FailingNet(FakeNet):
    """Creates namespaces, then fails applying the wiring of one namespace (a crash mid-up)."""

    def __init__(self, fail_in: str) -> None:
        super().__init__()
        self.fail_in = fail_in

    def apply(self, steps: Iterable[Step]) -> None:
        steps = list(steps)
        if any(s.netns == self.fail_in for s in steps):
            raise RuntimeError(f"boom in {self.fail_in}")
        super().apply(steps)


def make(tmp_path: Path, net: FakeNet, nodes: list[str]) -> Sandbox:
    return Sandbox.create(
        "ab12",
        nodes,
        state_root=tmp_path / "state",
        cgroup_root=tmp_path / "cg",
        bpffs_root=tmp_path / "bpf",
        net=net,
    )


def test_crash_mid_up_is_recorded_and_fully_torn_down(tmp_path: Path) -> None:
    net = FailingNet("weir-ab12-node-n2")
    sb = make(tmp_path, net, ["n1", "n2"])
    with pytest.raises(RuntimeError, match="boom"):
        sb.up()
    # the netns that was being wired when it crashed is already in the state file
    saved = FileStateStore(tmp_path / "state").load("ab12")
    assert saved is not None
    assert set(saved.netns) == {"weir-ab12-fabric", "weir-ab12-node-n1", "weir-ab12-node-n2"}
    assert (tmp_path / "cg" / "weir-ab12" / "n1" / "pods").is_dir()
    assert (tmp_path / "bpf" / "weir-ab12" / "n1").is_dir()
    removed = teardown_all("ab12", FileStateStore(tmp_path / "state"), net)
    assert net.namespaces == {}
    assert set(net.deleted) == set(saved.netns)
    assert net.deleted[-1] == "weir-ab12-fabric"  # fabric last
    assert not (tmp_path / "cg" / "weir-ab12").exists()
    assert not (tmp_path / "bpf" / "weir-ab12").exists()
    assert not (tmp_path / "state" / "ab12").exists()
    assert "netns weir-ab12-node-n2" in removed


def test_teardown_sweeps_by_prefix_without_state(tmp_path: Path) -> None:
    net = FakeNet()
    net.create_netns("weir-ab12-pod-123")
    net.create_netns("weir-ab123-fabric")  # another sandbox: must survive
    net.create_netns("weir-cd34-fabric")
    teardown_all("ab12", FileStateStore(tmp_path / "state"), net)
    assert sorted(net.namespaces) == ["weir-ab123-fabric", "weir-cd34-fabric"]


def test_pods_get_addresses_and_are_remembered(tmp_path: Path) -> None:
    net = FakeNet()
    sb = make(tmp_path, net, ["n1", "n2"])
    sb.up()
    a = sb.add_pod("default", "a", "n1", start=False)
    b = sb.add_pod("default", "b", "n1", start=False)
    c = sb.add_pod("default", "c", "n2", start=False)
    assert (a.ip, b.ip, c.ip) == ("10.244.1.2", "10.244.1.3", "10.244.2.2")
    with pytest.raises(TopologyError, match="pod default/a: already exists"):
        sb.add_pod("default", "a", "n2", start=False)
    with pytest.raises(TopologyError, match="no node named 'n9'"):
        sb.add_pod("default", "z", "n9", start=False)
    again = make(tmp_path, net, ["n1", "n2"])  # a second process reads the same state
    assert again.plan_pod("default", "d", "n1").ip.compressed == "10.244.1.4"
    with pytest.raises(TopologyError, match=r"nodes: state file has \['n1', 'n2'\]"):
        make(tmp_path, net, ["n1"])
    sb.down()
    assert net.namespaces == {}
