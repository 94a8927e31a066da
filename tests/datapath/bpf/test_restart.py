"""Pins and links across worker lifetimes: SIGKILL + restart without a failed connect,
one attachment per hook, atomic program replacement, and refusal of mismatched pins.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.datapath import bpfsys
from services.datapath.bpflayout import MapCapacities
from services.datapath.lbmap import ServiceKey
from services.datapath.loader import PROGRAMS, PinMismatchError, SockLB
from tests.datapath.bpf.conftest import (
    SMALL,
    attached,
    client_cmd,
    pin_handmade_map,
    run_client,
)

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("servers")]
HERE = Path(__file__).resolve().parent
VIP = "10.96.0.20"


def start_worker(pin_root: Path, cgroup: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(HERE / "worker.py"), str(pin_root), str(cgroup)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"worker did not start (exit {proc.poll()})"
    return proc


def test_sigkill_and_restart_lose_no_connection(
    netns: str, own_cgroup: Path, pin_root: Path
) -> None:
    workers: list[subprocess.Popen[str]] = []
    try:
        workers.append(start_worker(pin_root, own_cgroup))
        first = attached(own_cgroup)
        assert all(len(ids) == 1 for ids in first.values()), first
        loop = subprocess.Popen(
            client_cmd(netns, own_cgroup, "loop", VIP, "80", "4"), stdout=subprocess.PIPE, text=True
        )
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait(timeout=5)
        # The worker is gone: its programs and maps are not.
        assert attached(own_cgroup) == first
        with SockLB(pin_root, SMALL).maps() as maps:
            assert ServiceKey(VIP, 80, 6) in maps.dump().services
        workers.append(start_worker(pin_root, own_cgroup))
        second = attached(own_cgroup)
        assert loop.poll() is None, "the client loop must span the kill and the restart"
        out, _ = loop.communicate(timeout=30)
        result = json.loads(out)
        assert result["failed"] == 0, result
        assert result["ok"] > 50, result
        # Exactly one program per hook, and it is the restarted worker's (atomically swapped).
        assert all(len(ids) == 1 for ids in second.values()), second
        assert all(second[k] != first[k] for k in first), (first, second)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(timeout=5)

    SockLB(pin_root, SMALL).detach(own_cgroup)
    assert attached(own_cgroup) == {short: [] for *_rest, short in PROGRAMS}
    assert run_client(netns, own_cgroup, "tcp", VIP, "80", "1") == [{"error": "ENETUNREACH"}]


def test_pinned_map_with_other_max_entries_is_refused(pin_root: Path) -> None:
    SockLB(pin_root, SMALL, version="mismatch").load()
    bigger = MapCapacities(SMALL.services * 2, SMALL.backends, SMALL.revnat, SMALL.affinity,
                           SMALL.sk_revnat, SMALL.sk_peer)  # fmt: skip
    with pytest.raises(PinMismatchError) as info:
        SockLB(pin_root, bigger, version="mismatch").load()
    msg = str(info.value)
    assert "map lb4_services: max_entries is 1024, this build needs 2048" in msg
    assert f"Remove the pin directory {pin_root / 'mismatch'}" in msg
    SockLB(pin_root, SMALL, version="mismatch").load()  # the matching build still loads


def test_pinned_map_with_other_key_size_and_type_is_refused(pin_root: Path) -> None:
    version = pin_root / "handmade"
    pin_handmade_map(version / "lb4_backends", (bpfsys.MAP_TYPE_LRU_HASH, 8, 8, SMALL.backends, 0))
    with pytest.raises(PinMismatchError) as info:
        SockLB(pin_root, SMALL, version="handmade").load()
    assert info.value.problems == [
        "map lb4_backends: type is lru_hash, this build needs hash",
        "map lb4_backends: key_size is 8, this build needs 4",
        "map lb4_backends: flags is 0, this build needs 1",
    ]
    assert not (version / "lb4_services").exists()  # refused before bcc created anything
