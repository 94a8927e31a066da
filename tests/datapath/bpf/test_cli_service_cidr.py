"""`weir datapath --service-cidr` end to end: option (or WEIR_SERVICE_CIDR) -> worker -> loader
child -> the pinned lb4_service_ranges map, with a real nats-server and real BPF.

Bad values exit 2 naming the option and the value before anything is loaded.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.datapath.bpfmaps import BpfLBMap
from services.datapath.lbmap import MapError
from services.datapath.loader import uninstall
from tests.conftest import NatsServer, unique_name
from tests.datapath.bpf.conftest import BPFFS, make_cgroup, remove_cgroup

pytestmark = pytest.mark.bpf
WEIR = str(Path(sys.executable).parent / "weir")


@pytest.fixture
def node_dirs() -> Iterator[tuple[Path, Path]]:
    pins, cgroup = BPFFS / unique_name("weir-cli-", max_len=24), make_cgroup()
    try:
        yield pins, cgroup
    finally:
        uninstall(pins)
        remove_cgroup(cgroup)


def ranges_once_written(
    version_dir: Path, count: int, timeout: float = 60
) -> list[ipaddress.IPv4Network]:
    """The ranges, once the loader child has written ``count`` (bcc pins the map empty first,
    and the loader writes one range at a time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with BpfLBMap(version_dir) as maps:
                found = maps.service_ranges()
        except MapError:
            found = []
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no service ranges under {version_dir} after {timeout}s")


@pytest.mark.parametrize(
    ("args", "env", "want"),
    [
        (
            ["--service-cidr", "172.30.0.0/24", "--service-cidr", "10.123.0.0/16"],
            {},
            ["10.123.0.0/16", "172.30.0.0/24"],
        ),
        (
            [],
            {"WEIR_SERVICE_CIDR": "10.125.0.0/16 10.124.0.0/16"},
            ["10.124.0.0/16", "10.125.0.0/16"],
        ),
        ([], {}, ["10.96.0.0/12"]),  # Kubernetes' common default
    ],
    ids=["option", "envvar", "default"],
)
def test_ranges_reach_the_pinned_map(
    node_dirs: tuple[Path, Path],
    nats_server: NatsServer,
    args: list[str],
    env: dict[str, str],
    want: list[str],
) -> None:
    pins, cgroup = node_dirs
    cmd = [WEIR, "datapath", "--node", "n1", "--maps", "bpf", "--no-policy", "--nats",
           nats_server.url, "--cgroup", str(cgroup), "--pin-dir", str(pins), *args]  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_")}
    proc = subprocess.Popen(cmd, env=clean | env, stderr=subprocess.PIPE, text=True)
    try:
        got = ranges_once_written(pins / "v1", len(want))
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert [str(n) for n in got] == want, err


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--service-cidr", "10.96.0.1/12"], {}, "--service-cidr: '10.96.0.1/12' is not an IPv4"),
        ([], {"WEIR_SERVICE_CIDR": "10.96.0.0/16 banana"}, "--service-cidr: 'banana' is not"),
        (["--service-cidr", "fd00::/108"], {}, "'fd00::/108' is not IPv4"),
    ],
)
def test_bad_service_cidr_exits_2_naming_it(
    args: list[str], env: dict[str, str], message: str
) -> None:
    cmd = [WEIR, "datapath", "--node", "n1", "--maps", "fake", *args]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_")}
    done = subprocess.run(
        cmd, env=clean | env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
