"""The policy programs loaded in a child process, attached by the parent through adopted fds.

Real BPF: a pin dir on bpffs and a veth pair in a network namespace, both created here with
unique names and removed also on failure. The parent never compiles (bcc stays out of a process
that only adopts), the fds it gets are loaded sched_cls programs, attaching them puts Weir's two
filters on the veth, and a child that cannot load reports its own error line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.datapath.loader import LoadError
from services.datapath.policyinstall import install_in_child
from services.datapath.policyloader import attachments
from tests.conftest import unique_name

BPFFS = Path("/sys/fs/bpf")
SCHED_CLS = 3


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("needs root (CAP_BPF, netns)")
    name = unique_name("weirpi-")
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "lxctest", "type", "veth", "peer", "name", "peer0")
        sh("ip", "-n", name, "link", "set", "lxctest", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def pin_root() -> Iterator[Path]:
    root = BPFFS / unique_name("weir-pi-", max_len=24)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def prog_type(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("prog_type:"):
            return int(line.split()[1])
    return -1


def test_child_loads_parent_attaches(netns: str, pin_root: Path) -> None:
    loader = install_in_child(pin_root)
    try:
        assert loader.dir.is_dir() and any(loader.dir.iterdir()), "the child pinned the maps"
        assert loader.events_pin.exists()
        fds = list(loader._progs.values())
        assert len(fds) == 2 and all(prog_type(fd) == SCHED_CLS for fd in fds)
        ifindex = loader.attach("lxctest", netns)
        found = [a for a in attachments(netns) if a.ifindex == ifindex]
        assert sorted(a.hook for a in found) == ["egress", "ingress"]
        maps = loader.maps()  # the pinned maps open in the parent
        maps.close()
    finally:
        loader.close()
    assert not any(Path(f"/proc/self/fd/{fd}").exists() and prog_type(fd) == SCHED_CLS
                   for fd in fds), "close() drops the adopted program fds"  # fmt: skip
    # the filters hold the programs: still attached after the parent let go
    assert len([a for a in attachments(netns) if a.ifindex == ifindex]) == 2


def test_parent_never_imports_bcc(pin_root: Path) -> None:
    code = (
        "import sys; from pathlib import Path;"
        "from services.datapath.policyinstall import install_in_child;"
        f"l = install_in_child(Path({str(pin_root)!r})); l.close();"
        "print('bcc' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_child_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(LoadError) as info:
        install_in_child(tmp_path / "not-on-bpffs")  # pins cannot be created off bpffs
    assert str(info.value).startswith("LoadError: loading "), "the child's own error line"
    assert "policy.c" in str(info.value)
