"""lb4_sk_peer on the kernel: connected sockets' reverse NAT in a cookie-indexed ring.

What is checked, with real sockets in the test's netns and cgroup (``client.py hold`` keeps one
socket open and reports its SO_COOKIE, so a test can look at exactly that socket's slot):

* connect4 claims the socket's slot (cookie & (size - 1)) for TCP and connected UDP and writes
  no lb4_sk_revnat entry; getpeername()/recvfrom() show the VIP through it; the release program
  frees the slot when the socket closes, also under churn (a long-lived socket keeps its slot).
* unconnected UDP (sendmsg4) still goes through the LRU.
* a slot owned by another socket: connect4 falls back to the LRU, and the release program
  never frees a slot it does not own.
* a changed or deleted service shows the backend (stale check) without dropping the ring slot.
* the loader attaches the release program (also to pins that predate it), and what it costs.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.bpfstats import ProgMeter, stats_enabled
from services.datapath import bpfsys
from services.datapath.bpflayout import MAP_SK_PEER, MAP_SK_REVNAT, Lb4SkPeer, MapCapacities
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.lbmap import PROTO_UDP, RevNatValue
from services.datapath.loader import RELEASE, SockLB
from services.ops.bpf_view import sk_peer_rows, sk_revnat_rows
from tests.datapath.bpf.conftest import (
    BACKEND_PORT,
    BACKENDS,
    SMALL,
    attached,
    delta,
    held,
    pinned_shape,
    program_service,
    run_client,
)
from tests.datapath.bpf.test_frontends import _fields

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("servers")]

VIP = "10.96.3.10"
ATTACH_INET_SOCK_RELEASE = 34
BACKEND_ADDRS = {f"{ip}:{BACKEND_PORT}" for ip in BACKENDS}


def _ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "little")


def slot_of(maps: BpfLBMap, cookie: int) -> dict[str, Any] | None:
    """The decoded row of the socket's ring slot, or None when the slot is free."""
    m = maps.maps[MAP_SK_PEER]
    index = cookie & (m.max_entries - 1)
    value = Lb4SkPeer()
    bpfsys.map_lookup(m.fd, ctypes.c_uint32(index), value)
    rows = sk_peer_rows([(index, value)])
    return rows[0] if rows else None


def lru_rows(maps: BpfLBMap, cookie: int) -> list[dict[str, Any]]:
    """The socket's lb4_sk_revnat entries, decoded."""
    rows = sk_revnat_rows(maps.maps[MAP_SK_REVNAT].items())
    return [r for r in rows if r["socket_cookie"] == cookie]


# --- layout -------------------------------------------------------------------------------------


def test_the_mirror_matches_the_compiled_struct_byte_for_byte(sock_lb: SockLB) -> None:
    table = sock_lb._bpf[b"lb4_sk_peer"]
    ours = _fields(Lb4SkPeer)
    assert [name for name, _o, _s in ours] == [
        "cookie", "backend_address", "backend_port", "port", "address", "rev_nat_index", "pad"
    ]  # fmt: skip
    assert _fields(table.Leaf) == ours
    assert ctypes.sizeof(Lb4SkPeer) == 32  # two slots per cache line
    shape = pinned_shape(sock_lb.dir / "lb4_sk_peer")
    assert shape == (bpfsys.MAP_TYPE_ARRAY, 4, 32, SMALL.sk_peer, 0)


@pytest.mark.parametrize("size", [0, 3, 1000, 65535, 1 << 25])
def test_capacities_refuse_a_ring_that_is_not_a_power_of_two(size: int) -> None:
    with pytest.raises(ValueError, match=r"MapCapacities\.sk_peer: ") as info:
        dataclasses.replace(SMALL, sk_peer=size)
    assert str(size) in str(info.value)


def test_capacities_positional_order_keeps_sk_peer_last() -> None:
    caps = MapCapacities(8, 8, 8, 8, 8, 16)
    assert (caps.sk_revnat, caps.sk_peer) == (8, 16)
    assert MapCapacities(8, 8, 8, 8, 8).sk_peer == MapCapacities().sk_peer == 262144


# --- connected sockets use the ring ---------------------------------------------------------------


def test_tcp_connect_claims_the_slot_and_close_frees_it(
    netns: str, cgroup: Path, lbmap: BpfLBMap
) -> None:
    program_service(lbmap, VIP, 80, [1, 2, 3], rev_nat_id=31)
    before = lbmap.counters()
    with held(netns, cgroup, "tcp", VIP, 80) as sock:
        assert sock.backend in BACKEND_ADDRS
        assert sock.first_peer == f"{VIP}:80"
        assert slot_of(lbmap, sock.cookie) == {
            "slot": sock.cookie & (SMALL.sk_peer - 1),
            "socket_cookie": sock.cookie,
            "backend": sock.backend,
            "frontend": f"{VIP}:80",
            "rev_nat_id": 31,
        }
        assert lru_rows(lbmap, sock.cookie) == []  # connect4 wrote no LRU entry
        assert sock.peer() == f"{VIP}:80"
        sock.close()
    assert slot_of(lbmap, sock.cookie) is None  # the release program freed it
    assert delta(before, lbmap.counters()) == {"translated": 1, "revnat_hit": 2}


def test_connected_udp_replies_come_from_the_vip_through_the_ring(
    netns: str, cgroup: Path, lbmap: BpfLBMap
) -> None:
    program_service(lbmap, VIP, 53, [1, 2], proto=PROTO_UDP, rev_nat_id=32)
    with held(netns, cgroup, "udp", VIP, 53) as sock:
        assert sock.source == f"{VIP}:53"  # recvmsg4 rewrote the reply's source
        assert sock.first_peer == f"{VIP}:53"
        slot = slot_of(lbmap, sock.cookie)
        assert slot is not None
        assert (slot["backend"], slot["frontend"]) == (sock.backend, f"{VIP}:53")
        assert lru_rows(lbmap, sock.cookie) == []
        sock.close()
    assert slot_of(lbmap, sock.cookie) is None


def test_unconnected_udp_keeps_using_the_lru(netns: str, cgroup: Path, lbmap: BpfLBMap) -> None:
    program_service(lbmap, VIP, 54, [1], proto=PROTO_UDP, rev_nat_id=33)
    with held(netns, cgroup, "udpsendto", VIP, 54) as sock:
        assert sock.source == f"{VIP}:54"
        assert sock.backend == f"{BACKENDS[0]}:{BACKEND_PORT}"
        assert lru_rows(lbmap, sock.cookie) == [
            {
                "socket_cookie": sock.cookie,
                "backend": sock.backend,
                "frontend": f"{VIP}:54",
                "rev_nat_id": 33,
            }
        ]
        assert slot_of(lbmap, sock.cookie) is None  # sendmsg4 claims no slot
        sock.close()


def test_a_disconnected_udp_socket_sending_to_another_service_sees_that_service(
    netns: str, cgroup: Path, lbmap: BpfLBMap
) -> None:
    """connect(VIP) claims the slot; after a disconnect, sendto(OTHER) with the same backend must
    show OTHER as the reply's source (sendmsg4 updates the slot it names), as the LRU alone did."""
    other = "10.96.3.11"
    program_service(lbmap, VIP, 55, [1], proto=PROTO_UDP, rev_nat_id=34)
    program_service(lbmap, other, 55, [1], proto=PROTO_UDP, rev_nat_id=35)
    got = run_client(netns, cgroup, "udpreconn", VIP, "55", other)
    assert got == {"backend": f"{BACKENDS[0]}:{BACKEND_PORT}", "source": f"{other}:55"}


def test_churn_never_takes_a_live_sockets_slot(netns: str, cgroup: Path, lbmap: BpfLBMap) -> None:
    """More short connections than the ring (and the LRU) has entries: each frees its slot on
    close, so the long-lived socket keeps its entry and the ring ends with only its slot."""
    program_service(lbmap, VIP, 80, [1, 2, 3], rev_nat_id=34)
    churn = SMALL.sk_peer + SMALL.sk_revnat // 2
    with held(netns, cgroup, "tcp", VIP, 80) as sock:
        results = run_client(netns, cgroup, "tcp", VIP, "80", str(churn), timeout=120)
        assert isinstance(results, list) and len(results) == churn
        assert {r.get("peer") for r in results} == {f"{VIP}:80"}
        assert sock.peer() == f"{VIP}:80"
        mine = slot_of(lbmap, sock.cookie)
        assert mine is not None and mine["socket_cookie"] == sock.cookie
        assert sk_peer_rows(lbmap.sk_peers()) == [mine]  # every closed socket's slot is free
        sock.close()
    assert lbmap.sk_peers() == []


def test_a_changed_or_deleted_service_shows_the_backend(
    netns: str, cgroup: Path, lbmap: BpfLBMap
) -> None:
    program_service(lbmap, VIP, 80, [2], rev_nat_id=35)
    backend = f"{BACKENDS[1]}:{BACKEND_PORT}"
    with held(netns, cgroup, "tcp", VIP, 80) as sock:
        assert sock.peer() == f"{VIP}:80"
        before = lbmap.counters()
        lbmap.update_revnat({35: RevNatValue(VIP, 8000)})  # the service's port changed
        assert sock.peer() == backend
        assert slot_of(lbmap, sock.cookie) is not None  # stale, but the socket's until close
        lbmap.update_revnat({35: RevNatValue(VIP, 80)})
        assert sock.peer() == f"{VIP}:80"  # the slot was not dropped
        lbmap.delete_revnat([35])  # the service was deleted
        assert sock.peer() == backend
        assert delta(before, lbmap.counters()) == {"revnat_stale": 2, "revnat_hit": 1}
        sock.close()
    assert slot_of(lbmap, sock.cookie) is None


# --- a ring slot owned by another socket ---------------------------------------------------------

TINY_RING = dataclasses.replace(SMALL, sk_peer=4)
FOREIGN = [(1 << 62) | i for i in range(TINY_RING.sk_peer)]  # cookie & 3 == slot


@contextlib.contextmanager
def tiny_ring(pin_root: Path, cgroup: Path) -> Iterator[BpfLBMap]:
    """A SockLB with a 4-slot ring on ``cgroup``, every slot held by a foreign cookie."""
    lb = SockLB(pin_root, TINY_RING, version="tiny-ring")
    try:
        lb.load()
        lb.attach(cgroup)
        with lb.maps() as maps:
            fd = maps.maps[MAP_SK_PEER].fd
            for slot, cookie in enumerate(FOREIGN):
                foreign = Lb4SkPeer(cookie=cookie, backend_address=_ip("192.0.2.1"))
                bpfsys.map_update(fd, ctypes.c_uint32(slot), foreign)
            yield maps
    finally:
        with contextlib.suppress(Exception):
            lb.detach(cgroup)
        lb.close()


def test_a_slot_owned_by_another_socket_falls_back_to_the_lru(
    netns: str, own_cgroup: Path, pin_root: Path
) -> None:
    with tiny_ring(pin_root, own_cgroup) as maps:
        program_service(maps, VIP, 80, [3], rev_nat_id=36)
        foreign = sk_peer_rows(maps.sk_peers())
        assert [r["socket_cookie"] for r in foreign] == FOREIGN
        backend = f"{BACKENDS[2]}:{BACKEND_PORT}"
        with held(netns, own_cgroup, "tcp", VIP, 80) as sock:
            assert sock.first_peer == f"{VIP}:80"
            assert lru_rows(maps, sock.cookie) == [
                {
                    "socket_cookie": sock.cookie,
                    "backend": backend,
                    "frontend": f"{VIP}:80",
                    "rev_nat_id": 36,
                }
            ]
            assert sock.peer() == f"{VIP}:80"
            assert sk_peer_rows(maps.sk_peers()) == foreign  # untouched
            maps.delete_revnat([36])  # the LRU's stale check, as before the ring
            assert sock.peer() == backend
            assert lru_rows(maps, sock.cookie) == []  # a stale LRU entry is dropped
            sock.close()
        assert sk_peer_rows(maps.sk_peers()) == foreign  # release frees only its own slot


# --- the release program: attached, upgraded to, measured ----------------------------------------


def test_pins_without_the_release_link_get_it(own_cgroup: Path, pin_root: Path) -> None:
    """A version before the ring left four links; attach() creates the fifth and re-points the
    others (one program per hook, none twice)."""
    lb = SockLB(pin_root, SMALL, version="no-release")
    try:
        lb.load()
        lb.attach(own_cgroup)
        first = attached(own_cgroup)
        assert all(len(ids) == 1 for ids in first.values()), first
        release_pin = lb.links_dir / f"cg{os.stat(own_cgroup).st_ino}_{RELEASE}"
        release_pin.unlink()  # the link's last reference: the program is detached
        assert attached(own_cgroup)[RELEASE] == []
        lb.close()
        lb = SockLB(pin_root, SMALL, version="no-release")
        lb.load()
        lb.attach(own_cgroup)
        second = attached(own_cgroup)
        assert all(len(ids) == 1 for ids in second.values()), second
        assert release_pin.exists()
        lb.detach(own_cgroup)
        assert attached(own_cgroup) == {short: [] for short in first}
    finally:
        with contextlib.suppress(Exception):
            lb.detach(own_cgroup)
        lb.close()


def test_release_runs_once_per_closed_socket_and_its_cost(
    netns: str, cgroup: Path, lbmap: BpfLBMap, capsys: pytest.CaptureFixture[str]
) -> None:
    """What closing a socket in the cgroup costs: the kernel's own statistics of the attached
    release program (printed with -s; docs/architecture.md quotes it)."""
    program_service(lbmap, VIP, 80, [1, 2, 3], rev_nat_id=37)
    n = 400
    meter = ProgMeter(cgroup, ATTACH_INET_SOCK_RELEASE)
    connect = ProgMeter(cgroup)
    try:
        with stats_enabled():
            start, start_connect = meter.read(), connect.read()
            results = run_client(netns, cgroup, "tcp", VIP, "80", str(n))
            cost, connect_cost = meter.read() - start, connect.read() - start_connect
    finally:
        meter.close()
        connect.close()
    assert isinstance(results, list) and all("error" not in r for r in results), results
    assert cost.run_cnt >= n  # every inet socket closed in the cgroup, ours included
    assert cost.run_time_ns > 0
    assert lbmap.sk_peers() == []
    with capsys.disabled():
        print(
            f"\nsock4_release: {cost.ns_per_run:.0f} ns/run over {cost.run_cnt} closes; "
            f"connect4 (ring): {connect_cost.ns_per_run:.0f} ns/run over {connect_cost.run_cnt}"
        )
