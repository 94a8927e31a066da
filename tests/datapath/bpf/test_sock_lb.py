"""bpf/sock_lb.c against real sockets: clients in the test's netns + cgroup, echo backends.

The VIPs are configured nowhere, so a connect can only succeed if the program rewrote it; the
first test proves that by connecting before the service exists. Counters read from the per-CPU
map make time-dependent behaviour (affinity expiry) observable without relying on chance.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from services.datapath.bpfmaps import BpfLBMap
from services.datapath.lbmap import PROTO_UDP, ServiceFlags, ServiceKey, ServiceValue
from tests.datapath.bpf.conftest import (
    BACKEND_PORT,
    BACKENDS,
    delta,
    program_service,
    run_client,
    write_frontend,
)

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("servers")]

VIP = "10.96.0.10"


def backends_hit(results: Any) -> Counter[str]:
    return Counter(r["backend"].split(":")[0] for r in results if "backend" in r)


def test_tcp_connect_to_vip_is_balanced_and_peer_shows_vip(
    netns: str, cgroup: Path, lbmap: BpfLBMap
) -> None:
    unprogrammed = run_client(netns, cgroup, "tcp", VIP, "80", "1")
    assert unprogrammed == [{"error": "ENETUNREACH"}], "the VIP must not be reachable by itself"

    program_service(lbmap, VIP, 80, [1, 2, 3])
    before = lbmap.counters()
    results = run_client(netns, cgroup, "tcp", VIP, "80", "100")
    assert isinstance(results, list)
    assert all("error" not in r for r in results), results
    hits = backends_hit(results)
    assert set(hits) == set(BACKENDS), hits  # 3 backends, 100 connects: all are used
    assert {r["backend"].split(":")[1] for r in results} == {str(BACKEND_PORT)}
    assert {r["peer"] for r in results} == {f"{VIP}:80"}  # getpeername() shows the service
    counted = delta(before, lbmap.counters())
    assert counted["translated"] == 100
    assert counted["revnat_hit"] == 100


def test_udp_answers_come_from_the_vip(netns: str, cgroup: Path, lbmap: BpfLBMap) -> None:
    program_service(lbmap, VIP, 53, [1, 2], proto=PROTO_UDP, rev_nat_id=2)
    results = run_client(netns, cgroup, "udp", VIP, "53", "40")
    assert isinstance(results, list)
    assert all("error" not in r for r in results), results
    assert {r["source"] for r in results} == {f"{VIP}:53"}  # recvmsg4 rewrote the source
    assert set(backends_hit(results)) == set(BACKENDS[:2])
    connected = run_client(netns, cgroup, "udpconn", VIP, "53")
    assert isinstance(connected, dict)
    assert connected["peer"] == f"{VIP}:53"
    assert connected["backend"].split(":")[0] in BACKENDS[:2]


def test_udp_and_tcp_of_one_vip_port_are_separate_services(
    netns: str, cgroup: Path, lbmap: BpfLBMap
) -> None:
    program_service(lbmap, VIP, 80, [1], rev_nat_id=3)
    program_service(lbmap, VIP, 80, [2], proto=PROTO_UDP, rev_nat_id=4)
    tcp = run_client(netns, cgroup, "tcp", VIP, "80", "10")
    udp = run_client(netns, cgroup, "udp", VIP, "80", "10")
    assert backends_hit(tcp) == {BACKENDS[0]: 10}
    assert backends_hit(udp) == {BACKENDS[1]: 10}


def test_service_without_backends_refuses(netns: str, cgroup: Path, lbmap: BpfLBMap) -> None:
    program_service(lbmap, VIP, 81, [])
    program_service(lbmap, VIP, 54, [], proto=PROTO_UDP, rev_nat_id=2)
    before = lbmap.counters()
    assert run_client(netns, cgroup, "tcp", VIP, "81", "3") == [{"error": "ECONNREFUSED"}] * 3
    assert run_client(netns, cgroup, "udp", VIP, "54", "2") == [{"error": "ECONNREFUSED"}] * 2
    assert delta(before, lbmap.counters()) == {"refused": 5}


def test_slot_with_missing_backend_is_skipped(netns: str, cgroup: Path, lbmap: BpfLBMap) -> None:
    program_service(lbmap, VIP, 82, [1, 99])  # backend 99 is not in the backends map
    before = lbmap.counters()
    results = run_client(netns, cgroup, "tcp", VIP, "82", "40")
    assert backends_hit(results) == {BACKENDS[0]: 40}
    assert delta(before, lbmap.counters())["backend_missing"] > 0


def test_removed_backend_gets_no_new_connections(netns: str, cgroup: Path, lbmap: BpfLBMap) -> None:
    program_service(lbmap, VIP, 83, [1, 2])
    assert set(backends_hit(run_client(netns, cgroup, "tcp", VIP, "83", "40"))) == set(BACKENDS[:2])
    # The reconciler's order for a removal: rewrite the slots, shrink the master, rewrite the
    # frontend, trim.
    lbmap.update_services({ServiceKey(VIP, 83, 6, 1): ServiceValue(backend_id=2, rev_nat_id=1)})
    lbmap.update_services({ServiceKey(VIP, 83, 6): ServiceValue(count=1, rev_nat_id=1)})
    write_frontend(lbmap, ServiceKey(VIP, 83, 6))
    lbmap.delete_services([ServiceKey(VIP, 83, 6, 2)])
    lbmap.delete_backends([1])
    assert backends_hit(run_client(netns, cgroup, "tcp", VIP, "83", "40")) == {BACKENDS[1]: 40}


def test_affinity_sticks_until_timeout(netns: str, cgroup: Path, lbmap: BpfLBMap) -> None:
    program_service(lbmap, VIP, 84, [1, 2, 3], flags=ServiceFlags.SESSION_AFFINITY, timeout=2)
    before = lbmap.counters()
    results = run_client(netns, cgroup, "tcp", VIP, "84", "30")
    assert len(backends_hit(results)) == 1, backends_hit(results)  # 3 backends, 1 used
    counted = delta(before, lbmap.counters())
    assert counted["affinity_hit"] == 29
    time.sleep(2.3)
    before = lbmap.counters()
    run_client(netns, cgroup, "tcp", VIP, "84", "2")
    counted = delta(before, lbmap.counters())
    assert counted["affinity_expired"] == 1  # the first connect re-picked ...
    assert counted["affinity_hit"] == 1  # ... and the second stuck to the new choice


def test_affinity_never_returns_a_backend_removed_from_the_slots(
    netns: str, cgroup: Path, lbmap: BpfLBMap
) -> None:
    program_service(lbmap, VIP, 85, [3], flags=ServiceFlags.SESSION_AFFINITY, timeout=60)
    assert backends_hit(run_client(netns, cgroup, "tcp", VIP, "85", "3")) == {BACKENDS[2]: 3}
    program_service(lbmap, VIP, 85, [1], flags=ServiceFlags.SESSION_AFFINITY, timeout=60)
    before = lbmap.counters()
    assert backends_hit(run_client(netns, cgroup, "tcp", VIP, "85", "5")) == {BACKENDS[0]: 5}
    assert delta(before, lbmap.counters())["affinity_stale"] == 1
