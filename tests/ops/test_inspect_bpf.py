"""`weir bpf dump` on real pinned maps: created by the real loaders in a unique pin directory.

The maps are created by :class:`SockLB` and :class:`PolicyLoader` (compiled and loaded, not
attached: dumping must not need any cgroup or interface), written through :class:`BpfLBMap` and
:class:`BpfPolicyMaps` like the worker writes them (the service ranges by the loader itself), and
the LRU maps (affinity, socket reverse NAT, conntrack) and the per-CPU counters with raw ``bpf(2)``
updates shaped like the C programs'. The command then reads them in a separate handle, as an
operator would.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli.main import app
from services.datapath import bpfsys
from services.datapath.bpflayout import (
    COUNTERS,
    MAP_AFFINITY,
    MAP_COUNTERS,
    MAP_SK_PEER,
    MAP_SK_REVNAT,
    Ipv4RevnatEntry,
    Ipv4RevnatTuple,
    Lb4AffinityKey,
    Lb4AffinityVal,
    Lb4SkPeer,
    MapCapacities,
)
from services.datapath.bpfmaps import BpfLBMap, possible_cpus
from services.datapath.lbmap import (
    PROTO_TCP,
    BackendState,
    BackendValue,
    RevNatValue,
    ServiceFlags,
    ServiceKey,
    ServiceValue,
    derive_frontends,
)
from services.datapath.loader import SockLB, remove_pins
from services.datapath.policybpf import BpfPolicyMaps
from services.datapath.policylayout import (
    MAP_CT,
    MAP_POLICY_COUNTERS,
    POLICY_COUNTERS,
    CtEntry,
    CtKey,
    PolicyCapacities,
)
from services.datapath.policyloader import PolicyLoader
from services.datapath.policymap import (
    ANY_IDENTITY,
    ANY_PROTO,
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
    EndpointValue,
    PolicyKey,
)
from tests.conftest import unique_name

pytestmark = pytest.mark.bpf
SMALL = MapCapacities(services=64, backends=32, revnat=16, affinity=16, sk_revnat=16, sk_peer=16)
SMALL_POLICY = PolicyCapacities(endpoints=16, ipcache=64, rules=64, ct=32, events_bytes=4096)
runner = CliRunner()


def _ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "little")


@pytest.fixture(scope="module")
def pin_base() -> Iterator[Path]:
    """A node's base pin dir holding v1/ with every map, filled with a small known state."""
    if os.geteuid() != 0:
        pytest.fail("bpf dump tests need root (CAP_BPF)")
    base = Path("/sys/fs/bpf") / unique_name("weir-ops-", max_len=24)
    try:
        lb = SockLB(base, SMALL, service_cidrs=["10.96.0.0/12", "172.20.0.0/16"])
        lb.load()
        lb.close()
        with BpfLBMap(base / "v1", SMALL) as maps:
            fill(maps)
        with PolicyLoader(base, SMALL_POLICY) as policy:
            policy.load()
        with BpfPolicyMaps(base / "v1", SMALL_POLICY) as pmaps:
            fill_policy(pmaps)
        yield base
    finally:
        if base.exists():
            for version in base.iterdir():
                remove_pins(version)
            shutil.rmtree(base, ignore_errors=True)


def fill(maps: BpfLBMap) -> None:
    vip = "10.96.0.10"
    maps.update_backends(
        {
            1: BackendValue("10.244.1.5", 8080, PROTO_TCP),
            2: BackendValue("10.244.2.7", 8080, PROTO_TCP, BackendState.TERMINATING),
        }
    )
    maps.update_services(
        {
            ServiceKey(vip, 80, PROTO_TCP, 1): ServiceValue(backend_id=1, rev_nat_id=7),
            ServiceKey(vip, 80, PROTO_TCP, 2): ServiceValue(backend_id=2, rev_nat_id=7),
        }
    )
    maps.update_revnat({7: RevNatValue(vip, 80)})
    flags = ServiceFlags.SESSION_AFFINITY
    master = ServiceValue(count=2, rev_nat_id=7, flags=flags, affinity_timeout=600)
    maps.update_services({ServiceKey(vip, 80, PROTO_TCP, 0): master})
    maps.update_frontends(derive_frontends(maps.dump()))
    aff = maps.maps[MAP_AFFINITY].fd
    akey = Lb4AffinityKey(client_cookie=4242, rev_nat_id=7)
    bpfsys.map_update(aff, akey, Lb4AffinityVal(last_used=123456789, backend_id=2, slot=2))
    skr = maps.maps[MAP_SK_REVNAT].fd
    rkey = Ipv4RevnatTuple(cookie=99, address=_ip("10.244.1.5"), port=socket.htons(8080))
    rval = Ipv4RevnatEntry(address=_ip(vip), port=socket.htons(80), rev_nat_index=7)
    bpfsys.map_update(skr, rkey, rval)
    ring = maps.maps[MAP_SK_PEER].fd
    for cookie, backend in ((4099, "10.244.2.7"), (4109, "10.244.1.5")):  # slots 3 and 13
        peer = Lb4SkPeer(
            cookie=cookie,
            backend_address=_ip(backend),
            backend_port=socket.htons(8080),
            address=_ip(vip),
            port=socket.htons(80),
            rev_nat_index=7,
        )
        bpfsys.map_update(ring, ctypes.c_uint32(cookie & (SMALL.sk_peer - 1)), peer)
    # a freed slot keeps its old fields with cookie 0: not shown
    bpfsys.map_update(ring, ctypes.c_uint32(5), Lb4SkPeer(cookie=0, rev_nat_index=7))
    ncpu = possible_cpus()
    per_cpu = (ctypes.c_uint64 * ncpu)(*([3] + [1] * (ncpu - 1)))  # translated: 3 + (ncpu-1)
    bpfsys.map_update(maps.maps[MAP_COUNTERS].fd, ctypes.c_uint32(0), per_cpu)


def fill_policy(maps: BpfPolicyMaps) -> None:
    flags = EndpointFlags.ENFORCE_INGRESS | EndpointFlags.ENFORCE_EGRESS
    maps.update_endpoints({EndpointKey(12): EndpointValue(3, 1001, flags)})
    maps.update_ipcache({CidrKey("10.244.1.5/32"): 1001, CidrKey("0.0.0.0/0"): 2})
    maps.update_policy(
        [
            PolicyKey(3, Direction.INGRESS, PROTO_TCP, 1002, 80, 16),
            PolicyKey(3, Direction.EGRESS, PROTO_TCP, ANY_IDENTITY, 1024, 6),
            PolicyKey(3, Direction.EGRESS, ANY_PROTO, 2),
        ]
    )
    key = CtKey(
        endpoint_id=3,
        saddr=_ip("10.244.2.7"),
        daddr=_ip("10.244.1.5"),
        sport=socket.htons(40000),
        dport=socket.htons(80),
        proto=PROTO_TCP,
        direction=int(Direction.INGRESS),
    )
    entry = CtEntry(created=5, last_seen=9, packets_fwd=4, packets_rev=3, tcp_flags=0x12)
    bpfsys.map_update(maps.maps[MAP_CT].fd, key, entry)
    ncpu = possible_cpus()
    denied = POLICY_COUNTERS.index("policy_denied")
    per_cpu = (ctypes.c_uint64 * ncpu)(*([2] * ncpu))
    bpfsys.map_update(maps.maps[MAP_POLICY_COUNTERS].fd, ctypes.c_uint32(denied), per_cpu)


def dump(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["bpf", "dump", *args, "-o", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_services_slots_resolve_to_backends(pin_base: Path) -> None:
    doc = dump("services", "--node", "n1", "--pin-dir", str(pin_base))
    assert doc["pin_dir"] == str(pin_base / "v1") and doc["capacity"] == 64
    rows = doc["entries"]
    assert [(r["frontend"], r["slot"]) for r in rows] == [
        ("10.96.0.10:80/TCP", i) for i in range(3)
    ]
    assert rows[0]["count"] == 2 and rows[0]["flags"] == ["SESSION_AFFINITY"]
    assert rows[0]["affinity_timeout"] == 600
    assert [r.get("backend") for r in rows[1:]] == ["10.244.1.5:8080", "10.244.2.7:8080"]
    # the versioned directory itself is accepted too
    again = dump("services", "--node", "n1", "--pin-dir", str(pin_base / "v1"))
    assert again["entries"] == rows


def test_frontends_show_what_connect_reads(pin_base: Path) -> None:
    doc = dump("frontends", "--node", "n1", "--pin-dir", str(pin_base))
    assert doc["capacity"] == SMALL.revnat  # one entry per frontend, like the reverse NAT map
    assert doc["entries"] == [
        {
            "frontend": "10.96.0.10:80/TCP",
            "count": 2,
            "rev_nat_id": 7,
            "flags": ["SESSION_AFFINITY"],
            "affinity_timeout": 600,
            "inline": [],  # affinity keeps a service on the slots
            "picks_from": "slots",
        }
    ]


def test_backends_revnat_and_lru_maps(pin_base: Path) -> None:
    base = ["--node", "n1", "--pin-dir", str(pin_base)]
    backends = dump("backends", *base)["entries"]
    assert backends == [
        {"id": 1, "address": "10.244.1.5:8080", "proto": "TCP", "state": "ACTIVE"},
        {"id": 2, "address": "10.244.2.7:8080", "proto": "TCP", "state": "TERMINATING"},
    ]
    assert dump("revnat", *base)["entries"] == [{"id": 7, "frontend": "10.96.0.10:80"}]
    assert dump("affinity", *base)["entries"] == [
        {
            "client_cookie": 4242,
            "rev_nat_id": 7,
            "backend_id": 2,
            "slot": 2,
            "last_used_ns": 123456789,
        }
    ]
    assert dump("sk_revnat", *base)["entries"] == [
        {
            "socket_cookie": 99,
            "backend": "10.244.1.5:8080",
            "frontend": "10.96.0.10:80",
            "rev_nat_id": 7,
        }
    ]
    counters = {r["counter"]: r["value"] for r in dump("counters", *base)["entries"]}
    assert list(counters) == list(COUNTERS)
    assert counters["translated"] == 3 + possible_cpus() - 1
    assert counters["refused"] == 0


def test_sk_peer_shows_occupied_slots_only(pin_base: Path) -> None:
    doc = dump("sk_peer", "--node", "n1", "--pin-dir", str(pin_base))
    assert doc["capacity"] == SMALL.sk_peer
    assert doc["entries"] == [
        {
            "slot": 3,
            "socket_cookie": 4099,
            "backend": "10.244.2.7:8080",
            "frontend": "10.96.0.10:80",
            "rev_nat_id": 7,
        },
        {
            "slot": 13,
            "socket_cookie": 4109,
            "backend": "10.244.1.5:8080",
            "frontend": "10.96.0.10:80",
            "rev_nat_id": 7,
        },
    ]
    table = runner.invoke(
        app, ["bpf", "dump", "sk_peer", "--node", "n1", "--pin-dir", str(pin_base)]
    )
    assert table.exit_code == 0, table.output
    assert "SOCKET COOKIE" in table.output and "4109" in table.output
    # every slot of the array exists: the fill the worker reports must not count the ring
    with BpfLBMap(pin_base / "v1", SMALL) as maps:
        assert "sk_peer" not in maps.fill()
        assert "sk_peer" not in BpfLBMap.capacities(SMALL)


def test_table_output(pin_base: Path) -> None:
    result = runner.invoke(
        app, ["bpf", "dump", "backends", "--node", "n1", "--pin-dir", str(pin_base)]
    )
    assert result.exit_code == 0, result.output
    assert "backends on n1 (2/32" in result.output
    assert "10.244.2.7:8080" in result.output and "TERMINATING" in result.output


def test_policy_maps_decoded(pin_base: Path) -> None:
    base = ["--node", "n1", "--pin-dir", str(pin_base)]
    endpoints = dump("endpoints", *base)
    assert endpoints["capacity"] == 16
    assert endpoints["entries"] == [
        {
            "ifindex": 12,
            "endpoint_id": 3,
            "identity": 1001,
            "flags": ["ENFORCE_INGRESS", "ENFORCE_EGRESS"],
        }
    ]
    assert dump("ipcache", *base)["entries"] == [
        {"cidr": "0.0.0.0/0", "identity": 2},
        {"cidr": "10.244.1.5/32", "identity": 1001},
    ]
    rules = dump("policy", *base)["entries"]
    assert [(r["direction"], r["peer_identity"], r["proto"], r["port"]) for r in rules] == [
        ("INGRESS", 1002, "TCP", "80"),
        ("EGRESS", 2, "any", "any"),
        ("EGRESS", "any", "TCP", "1024-2047"),
    ]
    assert dump("ct", *base)["entries"] == [
        {
            "endpoint_id": 3,
            "direction": "INGRESS",
            "proto": "TCP",
            "source": "10.244.2.7:40000",
            "destination": "10.244.1.5:80",
            "packets_fwd": 4,
            "packets_rev": 3,
            "tcp_flags": ["SYN", "ACK"],
            "created_ns": 5,
            "last_seen_ns": 9,
        }
    ]
    counters = {r["counter"]: r["value"] for r in dump("policy_counters", *base)["entries"]}
    assert list(counters) == list(POLICY_COUNTERS)
    assert counters["policy_denied"] == 2 * possible_cpus() and counters["new_allowed"] == 0


def test_service_ranges(pin_base: Path) -> None:
    doc = dump("service_ranges", "--node", "n1", "--pin-dir", str(pin_base))
    assert doc["entries"] == [
        {"cidr": "10.96.0.0/12", "addresses": 1 << 20},
        {"cidr": "172.20.0.0/16", "addresses": 1 << 16},
    ]
    table = runner.invoke(app, ["bpf", "dump", "ct", "--node", "n1", "--pin-dir", str(pin_base)])
    assert table.exit_code == 0, table.output
    assert "ct on n1 (1/32" in table.output and "10.244.2.7:40000" in table.output


def test_missing_pins_and_bad_map_name(tmp_path: Path) -> None:
    missing = runner.invoke(
        app, ["bpf", "dump", "services", "--node", "n9", "--pin-dir", str(tmp_path)]
    )
    assert missing.exit_code == 1
    assert f"node n9: cannot open the pinned maps under {tmp_path}/v1" in missing.output
    assert "weir datapath --node n9" in missing.output
    policy = runner.invoke(app, ["bpf", "dump", "ct", "--node", "n9", "--pin-dir", str(tmp_path)])
    assert policy.exit_code == 1 and "with the policy loop (not --no-policy)" in policy.output
    bad = runner.invoke(app, ["bpf", "dump", "nope", "--node", "n1", "--pin-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "MAP 'nope': expected one of frontends, services" in bad.output
