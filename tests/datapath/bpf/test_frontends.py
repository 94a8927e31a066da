"""lb4_frontends on the kernel: its layout against what bcc compiled, the inline path connect4
takes for 1..4 backends, the slots path it still takes for more backends and for affinity, and
the loader's rebuild of the map from the pinned record before it attaches.

How a test tells the two paths apart: once a service works, its slots and backends are deleted
from lb4_services/lb4_backends (master, frontend and reverse NAT stay). A service on the inline
path keeps working (connect4 never read them); one on the slots path is refused from then on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.datapath import bpfsys
from services.datapath.bpflayout import MAP_FRONTENDS, Lb4Frontend, Lb4Key, map_specs
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.lbmap import (
    INLINE_BACKENDS_MAX,
    PROTO_TCP,
    BackendValue,
    FrontendValue,
    InlineBackend,
    RevNatValue,
    ServiceFlags,
    ServiceKey,
    ServiceValue,
    derive_frontends,
)
from services.datapath.loader import (
    PinMismatchError,
    SockLB,
    install_in_child,
    rebuild_frontends,
    uninstall,
    verify_pins,
)
from tests.datapath.bpf.conftest import (
    BACKEND_PORT,
    BACKENDS,
    SMALL,
    delta,
    echo_servers,
    pin_handmade_map,
    pinned_shape,
    run_client,
    write_frontend,
)

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("servers")]

OTHER_PORT = BACKEND_PORT + 1
# six distinct backends: the conftest's three addresses on two ports (ids 1..6)
ENDPOINTS = [(ip, port) for port in (BACKEND_PORT, OTHER_PORT) for ip in BACKENDS]


@pytest.fixture(scope="module")
def other_port_servers(netns: str) -> Iterator[None]:
    """Echo servers on the conftest's addresses at OTHER_PORT (beside the ``servers`` fixture)."""
    with echo_servers(netns, OTHER_PORT):
        yield


def program(
    maps: BpfLBMap,
    vip: str,
    port: int,
    n_backends: int,
    *,
    rev_nat_id: int,
    flags: ServiceFlags = ServiceFlags.NONE,
    timeout: int = 0,
    frontend: bool = True,
) -> None:
    """A service on backends 1..n (ENDPOINTS), written in the worker's order: backends, slots,
    reverse NAT, master, frontend (``frontend=False``: as a version without the map wrote it)."""
    ids = range(1, n_backends + 1)
    maps.update_backends({i: BackendValue(*ENDPOINTS[i - 1], PROTO_TCP) for i in ids})
    maps.update_services(
        {ServiceKey(vip, port, PROTO_TCP, i): ServiceValue(i, rev_nat_id=rev_nat_id) for i in ids}
    )
    maps.update_revnat({rev_nat_id: RevNatValue(vip, port)})
    master = ServiceValue(0, n_backends, rev_nat_id, flags, timeout)
    maps.update_services({ServiceKey(vip, port, PROTO_TCP): master})
    if frontend:
        write_frontend(maps, ServiceKey(vip, port, PROTO_TCP))


def drop_slots_and_backends(maps: BpfLBMap, vip: str, port: int) -> None:
    """Leave only the master, the frontend and the reverse NAT of the service."""
    state = maps.dump()
    slots = [k for k in state.services if (k.vip, k.port) == (vip, port) and k.slot]
    maps.delete_services(slots)
    maps.delete_backends(state.backends)


def hits(results: Any) -> Counter[str]:
    assert isinstance(results, list)
    assert all("error" not in r for r in results), results
    return Counter(r["backend"] for r in results)


def endpoints(n: int) -> set[str]:
    return {f"{ip}:{port}" for ip, port in ENDPOINTS[:n]}


# --- layout -------------------------------------------------------------------------------------


def _fields(ctype: Any, base: int = 0, prefix: str = "") -> list[tuple[str, int, int]]:
    """(path, offset, size) of every scalar in a ctypes type, arrays and nested structs unrolled:
    the byte layout, comparable between bcc's generated type and our mirror."""
    if issubclass(ctype, ctypes.Structure):
        out: list[tuple[str, int, int]] = []
        for name, ftype, *_bits in ctype._fields_:
            offset = getattr(ctype, name).offset
            out += _fields(ftype, base + offset, f"{prefix}.{name}" if prefix else name)
        return out
    if issubclass(ctype, ctypes.Array):
        size = ctypes.sizeof(ctype._type_)
        out = []
        for i in range(ctype._length_):
            out += _fields(ctype._type_, base + i * size, f"{prefix}[{i}]")
        return out
    return [(prefix, base, ctypes.sizeof(ctype))]


def test_the_mirror_matches_the_compiled_struct_byte_for_byte(sock_lb: SockLB) -> None:
    table = sock_lb._bpf[b"lb4_frontends"]
    ours = _fields(Lb4Frontend)
    assert len(ours) == 6 + 4 * INLINE_BACKENDS_MAX  # every scalar, inline slots unrolled
    assert _fields(table.Leaf) == ours
    assert _fields(table.Key) == _fields(Lb4Key)


def test_the_pinned_map_has_the_spec_shape(sock_lb: SockLB) -> None:
    spec = next(s for s in map_specs(SMALL) if s.name == MAP_FRONTENDS)
    shape = pinned_shape(sock_lb.dir / "lb4_frontends")
    assert shape == (bpfsys.MAP_TYPE_HASH, 12, 64, SMALL.revnat, bpfsys.BPF_F_NO_PREALLOC)
    key, value = ctypes.sizeof(spec.key), ctypes.sizeof(spec.value)
    assert shape == (spec.map_type, key, value, spec.max_entries, spec.flags)
    verify_pins(sock_lb.dir, sock_lb.specs)  # and the loader's own check agrees


def test_a_pinned_frontends_map_of_another_shape_is_refused(pin_root: Path) -> None:
    version = pin_root / "fe-handmade"
    shape = (bpfsys.MAP_TYPE_HASH, 12, 48, SMALL.revnat, bpfsys.BPF_F_NO_PREALLOC)
    pin_handmade_map(version / "lb4_frontends", shape)
    with pytest.raises(PinMismatchError) as info:
        SockLB(pin_root, SMALL, version="fe-handmade").load()
    assert info.value.problems == ["map lb4_frontends: value_size is 48, this build needs 64"]
    assert not (version / "lb4_services").exists()  # refused before bcc created anything


# --- the two paths of connect4 --------------------------------------------------------------------


@pytest.mark.usefixtures("other_port_servers")
@pytest.mark.parametrize("n", [1, 2, 4])
def test_up_to_four_backends_are_picked_from_the_frontend_entry(
    netns: str, cgroup: Path, lbmap: BpfLBMap, n: int
) -> None:
    vip = f"10.96.1.{n}"
    program(lbmap, vip, 80, n, rev_nat_id=10 + n)
    frontend = lbmap.dump().frontends[ServiceKey(vip, 80, PROTO_TCP)]
    assert [(b.ip, b.port) for b in frontend.inline] == ENDPOINTS[:n]
    before = lbmap.counters()
    results = run_client(netns, cgroup, "tcp", vip, "80", "50")
    assert set(hits(results)) == endpoints(n)  # every backend gets picked over 50 connects
    assert {r["peer"] for r in results} == {f"{vip}:80"}  # type: ignore[attr-defined]
    counted = delta(before, lbmap.counters())
    assert counted == {"translated": 50, "revnat_hit": 50}
    drop_slots_and_backends(lbmap, vip, 80)  # the slots path would refuse from now on
    assert set(hits(run_client(netns, cgroup, "tcp", vip, "80", "30"))) <= endpoints(n)


@pytest.mark.usefixtures("other_port_servers")
def test_five_backends_go_through_the_slots(netns: str, cgroup: Path, lbmap: BpfLBMap) -> None:
    vip = "10.96.1.5"
    program(lbmap, vip, 80, 5, rev_nat_id=20)
    frontend = lbmap.dump().frontends[ServiceKey(vip, 80, PROTO_TCP)]
    assert frontend == FrontendValue(5, 20)  # no backend inline
    before = lbmap.counters()
    results = run_client(netns, cgroup, "tcp", vip, "80", "60")
    assert set(hits(results)) == endpoints(5)
    assert {r["peer"] for r in results} == {f"{vip}:80"}  # type: ignore[attr-defined]
    assert delta(before, lbmap.counters())["translated"] == 60
    drop_slots_and_backends(lbmap, vip, 80)
    assert run_client(netns, cgroup, "tcp", vip, "80", "2") == [{"error": "ECONNREFUSED"}] * 2


def test_affinity_goes_through_the_slots(netns: str, cgroup: Path, lbmap: BpfLBMap) -> None:
    vip = "10.96.1.6"
    program(lbmap, vip, 80, 2, rev_nat_id=21, flags=ServiceFlags.SESSION_AFFINITY, timeout=60)
    frontend = lbmap.dump().frontends[ServiceKey(vip, 80, PROTO_TCP)]
    assert frontend == FrontendValue(2, 21, ServiceFlags.SESSION_AFFINITY, 60)
    before = lbmap.counters()
    assert len(hits(run_client(netns, cgroup, "tcp", vip, "80", "20"))) == 1  # it sticks
    assert delta(before, lbmap.counters())["affinity_hit"] == 19
    drop_slots_and_backends(lbmap, vip, 80)
    assert run_client(netns, cgroup, "tcp", vip, "80", "1") == [{"error": "ECONNREFUSED"}]


# --- the loader's rebuild -----------------------------------------------------------------------

REBUILT = "rebuilt"
INLINE_VIP, SLOTS_VIP, AFFINITY_VIP, EMPTY_VIP, GONE_VIP = (
    "10.96.2.1",
    "10.96.2.2",
    "10.96.2.3",
    "10.96.2.4",
    "10.96.2.5",
)


@contextlib.contextmanager
def loaded(pin_root: Path, version: str) -> Iterator[SockLB]:
    lb = SockLB(pin_root, SMALL, version=version)
    try:
        lb.load()
        yield lb
    finally:
        lb.close()


def program_record(maps: BpfLBMap, *, frontends: bool) -> None:
    """Services of every kind: inline, slots, affinity, no backends."""
    program(maps, INLINE_VIP, 80, 3, rev_nat_id=1, frontend=frontends)
    program(maps, SLOTS_VIP, 80, 6, rev_nat_id=2, frontend=frontends)
    flags = ServiceFlags.SESSION_AFFINITY
    program(maps, AFFINITY_VIP, 80, 2, rev_nat_id=3, flags=flags, timeout=5, frontend=frontends)
    program(maps, EMPTY_VIP, 80, 0, rev_nat_id=4, flags=ServiceFlags.NO_BACKENDS,
            frontend=frontends)  # fmt: skip


def check_rebuilt(maps: BpfLBMap) -> None:
    state = maps.dump()
    assert len(state.frontends) == 4
    assert state.frontends == derive_frontends(state)


@pytest.mark.usefixtures("other_port_servers")
def test_load_rebuilds_an_empty_and_a_stale_frontends_map(
    netns: str, own_cgroup: Path, pin_root: Path
) -> None:
    try:
        with loaded(pin_root, REBUILT) as lb, lb.maps() as maps:
            assert lb.frontends_repaired == (0, 0)  # a new node
            program_record(maps, frontends=False)  # the record, and no frontend at all
            assert maps.dump().frontends == {}
        with loaded(pin_root, REBUILT) as lb, lb.maps() as maps:
            assert lb.frontends_repaired == (4, 0)
            check_rebuilt(maps)
            # stale: a wrong entry, one whose master is gone, one missing
            inline_key = ServiceKey(INLINE_VIP, 80, PROTO_TCP)
            wrong = FrontendValue(1, 1, inline=(InlineBackend(9, "10.244.9.9", 9),))
            gone = FrontendValue(1, 5, inline=(InlineBackend(1, *ENDPOINTS[0]),))
            maps.update_frontends({inline_key: wrong, ServiceKey(GONE_VIP, 80, PROTO_TCP): gone})
            maps.delete_frontends([ServiceKey(SLOTS_VIP, 80, PROTO_TCP)])
        with loaded(pin_root, REBUILT) as lb, lb.maps() as maps:
            assert lb.frontends_repaired == (2, 1)
            check_rebuilt(maps)
            lb.attach(own_cgroup)
            inline = run_client(netns, own_cgroup, "tcp", INLINE_VIP, "80", "40")
            assert set(hits(inline)) == endpoints(3)
            slots = run_client(netns, own_cgroup, "tcp", SLOTS_VIP, "80", "100")
            assert set(hits(slots)) == endpoints(6)
            assert len(hits(run_client(netns, own_cgroup, "tcp", AFFINITY_VIP, "80", "5"))) == 1
            refused = run_client(netns, own_cgroup, "tcp", EMPTY_VIP, "80", "1")
            assert refused == [{"error": "ECONNREFUSED"}]
            # the frontend without a master was deleted: the VIP is no service any more
            gone_now = run_client(netns, own_cgroup, "tcp", GONE_VIP, "80", "1")
            assert gone_now == [{"error": "ENETUNREACH"}]
            lb.detach(own_cgroup)
        with loaded(pin_root, REBUILT) as lb:
            assert lb.frontends_repaired == (0, 0)  # consistent: nothing to write
    finally:
        with contextlib.suppress(Exception):
            SockLB(pin_root, SMALL, version=REBUILT).detach(own_cgroup)


@pytest.mark.usefixtures("other_port_servers")
def test_upgrade_from_pins_without_the_frontends_map(
    netns: str, own_cgroup: Path, pin_root: Path
) -> None:
    """The version before lb4_frontends left lb4_services & co. pinned, and no lb4_frontends."""
    version = "upgrade"
    try:
        with loaded(pin_root, version) as lb, lb.maps() as maps:
            program_record(maps, frontends=True)
            lb.attach(own_cgroup)
        (pin_root / version / "lb4_frontends").unlink()  # as the older version left the pins
        with loaded(pin_root, version) as lb, lb.maps() as maps:
            assert lb.frontends_repaired == (4, 0)
            check_rebuilt(maps)
            lb.attach(own_cgroup)  # re-points the links to the program reading the new map
            inline = run_client(netns, own_cgroup, "tcp", INLINE_VIP, "80", "40")
            assert set(hits(inline)) == endpoints(3)
    finally:
        with contextlib.suppress(Exception):
            SockLB(pin_root, SMALL, version=version).detach(own_cgroup)


def test_rebuild_on_an_empty_node_reads_nothing(
    pin_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader child is on the cold-start path: an empty node must not pay for a dump."""
    with loaded(pin_root, "empty-node") as lb, lb.maps() as maps:

        def no_dump() -> None:
            raise AssertionError("rebuild_frontends dumped the maps of an empty node")

        monkeypatch.setattr(maps, "dump", no_dump)
        assert rebuild_frontends(maps) == (0, 0)
        program(maps, INLINE_VIP, 80, 1, rev_nat_id=1, frontend=False)
        with pytest.raises(AssertionError, match="dumped"):  # with a service it must read
            rebuild_frontends(maps)


def test_the_worker_is_told_when_the_loader_repaired_the_frontends_map(
    own_cgroup: Path, pin_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the worker runs (the loader child, default capacities): a repair is logged with its
    counts, a clean start is not."""
    base = pin_root / "child"
    try:
        where = install_in_child(base, own_cgroup)
        with BpfLBMap(where) as maps:
            program_record(maps, frontends=False)  # the record, as an older version wrote it
        with caplog.at_level(logging.WARNING, logger="services.datapath.loader"):
            assert install_in_child(base, own_cgroup) == where
        repaired = [r.getMessage() for r in caplog.records]
        assert len(repaired) == 1 and "rewrote 4 entries and removed 0" in repaired[0]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="services.datapath.loader"):
            install_in_child(base, own_cgroup)
        assert caplog.records == []  # consistent now: nothing to say
    finally:
        uninstall(base, own_cgroup)
