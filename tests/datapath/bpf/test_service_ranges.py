"""Unknown addresses of the service CIDR are refused: bpf/sock_lb.c with lb4_service_ranges.

A ClusterIP nobody owns (a deleted Service) or a port a Service does not have must fail at once
with ECONNREFUSED, with no packet leaving, like kube-proxy's REJECT; an address outside every
range is untouched (ENETUNREACH in the test's route-less namespace). The ranges are written
through the loader's own path (``SockLB(service_cidrs=...).load()``) on the module's pins, so the
test also proves that a reload replaces them; each test restores "no ranges" when it ends, as the
other tests of the module expect.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.datapath import bpfsys
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.lbmap import PROTO_UDP
from services.datapath.loader import PinMismatchError, SockLB, install, uninstall
from services.datapath.svcranges import parse_service_cidrs
from tests.datapath.bpf.conftest import (
    SMALL,
    delta,
    make_cgroup,
    pin_handmade_map,
    program_service,
    remove_cgroup,
)
from tests.datapath.bpf.conftest import (
    run_client as run_client_json,
)

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("servers")]

IN_RANGE = "10.96.0.0/12"
OUTSIDE = "10.200.0.10"  # not a service, not in the range: the namespace has no route to it


def run_client(netns: str, cgroup: Path, *args: str) -> Any:
    return run_client_json(netns, cgroup, *args)


def reload(pin_root: Path, cidrs: list[str] | None) -> None:
    """What the worker's loader child does: load (reusing the pins), write the ranges."""
    lb = SockLB(pin_root, SMALL, service_cidrs=cidrs)
    try:
        lb.load()
    finally:
        lb.close()


@pytest.fixture
def ranges(pin_root: Path, sock_lb: SockLB, lbmap: BpfLBMap) -> Iterator[BpfLBMap]:
    reload(pin_root, [IN_RANGE])
    try:
        yield lbmap
    finally:
        reload(pin_root, [])


def test_unknown_vip_in_range_is_refused_at_once(
    netns: str, cgroup: Path, ranges: BpfLBMap
) -> None:
    assert ranges.service_ranges() == [ipaddress.IPv4Network(IN_RANGE)]
    before = ranges.counters()
    started = time.monotonic()
    tcp = run_client(netns, cgroup, "tcp", "10.96.0.99", "80", "3")
    udp = run_client(netns, cgroup, "udp", "10.111.255.254", "53", "2")  # the range's far end
    assert tcp == [{"error": "ECONNREFUSED"}] * 3
    assert udp == [{"error": "ECONNREFUSED"}] * 2
    assert time.monotonic() - started < 5, "refusals must not wait for a timeout"
    assert delta(before, ranges.counters()) == {"refused": 5}


def test_outside_the_range_is_untouched(netns: str, cgroup: Path, ranges: BpfLBMap) -> None:
    before = ranges.counters()
    assert run_client(netns, cgroup, "tcp", OUTSIDE, "80", "1") == [{"error": "ENETUNREACH"}]
    assert run_client(netns, cgroup, "udp", "10.112.0.1", "53", "1") == [{"error": "ENETUNREACH"}]
    assert delta(before, ranges.counters()) == {}


def test_service_in_range_still_balances_and_other_ports_are_refused(
    netns: str, cgroup: Path, ranges: BpfLBMap
) -> None:
    vip = "10.96.5.5"
    program_service(ranges, vip, 80, [1, 2])
    program_service(ranges, vip, 53, [3], proto=PROTO_UDP, rev_nat_id=2)
    assert all("backend" in r for r in run_client(netns, cgroup, "tcp", vip, "80", "4"))
    assert all("backend" in r for r in run_client(netns, cgroup, "udp", vip, "53", "2"))
    # the Service has no port 81, and no UDP port 80
    assert run_client(netns, cgroup, "tcp", vip, "81", "1") == [{"error": "ECONNREFUSED"}]
    assert run_client(netns, cgroup, "udp", vip, "80", "1") == [{"error": "ECONNREFUSED"}]


def test_deleted_service_is_refused(netns: str, cgroup: Path, ranges: BpfLBMap) -> None:
    vip = "10.96.7.7"
    program_service(ranges, vip, 80, [1])
    assert "backend" in run_client(netns, cgroup, "tcp", vip, "80", "1")[0]
    state = ranges.dump()
    # the reconciler's delete order: the frontend, then slots/master, reverse NAT, backends
    ranges.delete_frontends(state.frontends)
    ranges.delete_services(state.services)
    ranges.delete_revnat(state.revnat)
    ranges.delete_backends(state.backends)
    assert run_client(netns, cgroup, "tcp", vip, "80", "1") == [{"error": "ECONNREFUSED"}]


def test_reload_replaces_the_ranges(
    netns: str, cgroup: Path, pin_root: Path, ranges: BpfLBMap
) -> None:
    reload(pin_root, ["10.200.0.0/24", "10.96.0.0/16"])
    assert ranges.service_ranges() == list(parse_service_cidrs(["10.200.0.0/24", "10.96.0.0/16"]))
    assert run_client(netns, cgroup, "tcp", OUTSIDE, "80", "1") == [{"error": "ECONNREFUSED"}]
    # 10.100.0.1 was in 10.96.0.0/12, is not in 10.96.0.0/16: untouched now
    assert run_client(netns, cgroup, "tcp", "10.100.0.1", "80", "1") == [{"error": "ENETUNREACH"}]
    reload(pin_root, None)  # None: leave the ranges as they are
    assert len(ranges.service_ranges()) == 2


def test_install_in_a_cgroup_writes_the_ranges(netns: str, tmp_path: Path) -> None:
    """The loader's install (what the worker's child runs), on its own pins and cgroup."""
    from tests.conftest import unique_name  # noqa: PLC0415

    base = Path("/sys/fs/bpf") / unique_name("weir-rng-", max_len=24)
    cg = make_cgroup()
    try:
        where = install(base, cg, service_cidrs=["10.96.0.0/16"]).dir
        with BpfLBMap(where) as maps:
            assert maps.service_ranges() == [ipaddress.IPv4Network("10.96.0.0/16")]
        assert run_client(netns, cg, "tcp", "10.96.1.1", "80", "1") == [{"error": "ECONNREFUSED"}]
    finally:
        uninstall(base)
        remove_cgroup(cg)


def test_pinned_ranges_map_of_another_shape_is_refused(pin_root: Path) -> None:
    """Pin verification covers the new map like the others (a hash where an LPM trie belongs)."""
    shape = (bpfsys.MAP_TYPE_HASH, 8, 1, 16, bpfsys.BPF_F_NO_PREALLOC)
    pin_handmade_map(pin_root / "ranges-handmade" / "lb4_service_ranges", shape)
    with pytest.raises(PinMismatchError) as info:
        SockLB(pin_root, SMALL, version="ranges-handmade").load()
    assert info.value.problems == [
        "map lb4_service_ranges: type is hash, this build needs lpm_trie"
    ]


@pytest.mark.parametrize(
    ("cidrs", "problem"),
    [
        (["10.96.0.1/12"], "'10.96.0.1/12' is not an IPv4 CIDR"),  # host bits set
        (["fd00::/108"], "'fd00::/108' is not IPv4"),
        (["banana"], "'banana' is not an IPv4 CIDR"),
    ],
)
def test_bad_service_cidr_names_the_value(cidrs: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match="service_cidrs") as info:
        SockLB(Path("/nonexistent"), SMALL, service_cidrs=cidrs)
    assert problem in str(info.value)
