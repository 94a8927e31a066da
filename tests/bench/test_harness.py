"""The benchmark harness measures what it claims: the probe reads real maps, the objects are
valid Kubernetes objects for Weir's contracts, the churn mix and the anchor's ruleset follow the
changes, and the summary table is built from result files.

The benchmarks themselves never run in tests (too slow, too noisy); these check the parts whose
mistakes would silently produce wrong numbers.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import objects as o
from bench.anchor import IptablesAnchor
from bench.churn import Change, ChurnState, Poller
from bench.mapprobe import MapProbe
from bench.plots import cdf
from bench.run_all import summary_rows
from bench.stats import e2e_text, summarise_rounds
from contracts.v1.convert import to_event
from services.datapath.bpflayout import MapCapacities
from services.datapath.lbmap import (
    PROTO_TCP,
    BackendValue,
    RevNatValue,
    ServiceKey,
    ServiceValue,
    derive_frontends,
)
from services.datapath.loader import SockLB, remove_pins
from tests.conftest import unique_name

SMALL = MapCapacities(services=1024, backends=1024, revnat=256, affinity=256, sk_revnat=1024)


@pytest.fixture
def pinned_lb() -> Iterator[SockLB]:
    root = Path("/sys/fs/bpf") / unique_name("weir-bench-test-", max_len=28)
    lb = SockLB(root, SMALL)
    try:
        lb.load()
        yield lb
    finally:
        lb.close()
        with contextlib.suppress(OSError):
            remove_pins(lb.dir)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.bpf
def test_map_probe_reads_the_pinned_maps(pinned_lb: SockLB) -> None:
    vip, fresh, other = "10.96.0.7", "10.192.0.9", "10.192.0.10"
    with pinned_lb.maps() as maps:
        maps.update_backends(
            {1: BackendValue("10.128.0.1", 8080, PROTO_TCP), 2: BackendValue(fresh, 8080, 6)}
        )
        maps.update_services(
            {
                ServiceKey(vip, 80, PROTO_TCP, 1): ServiceValue(backend_id=1, rev_nat_id=1),
                ServiceKey(vip, 80, PROTO_TCP, 2): ServiceValue(backend_id=2, rev_nat_id=1),
            }
        )
        maps.update_revnat({1: RevNatValue(vip, 80)})
        probe = MapProbe(pinned_lb.dir)
        try:
            assert not probe.has_frontend(vip, 80)  # slots without a master are not a service
            maps.update_services({ServiceKey(vip, 80, PROTO_TCP, 0): ServiceValue(count=2)})
            assert not probe.has_frontend(vip, 80)  # connect() reads the frontend entry
            maps.update_frontends(derive_frontends(maps.dump()))
            assert probe.master_count(vip, 80) == 2
            assert probe.has_backend(vip, 80, fresh)
            assert not probe.has_backend(vip, 80, other)
            assert not probe.has_backend(vip, 81, fresh)
            change = Change("delete", "svc-0", vip, "")
            assert not change.landed(probe)
            maps.delete_frontends([ServiceKey(vip, 80, PROTO_TCP, 0)])
            assert change.landed(probe)
            assert not probe.has_frontend(vip, 80)
        finally:
            probe.close()


@pytest.mark.bpf
def test_poller_process_sees_a_change_land_after_it_was_added(pinned_lb: SockLB) -> None:
    vip, fresh = "10.96.0.8", "10.192.0.11"
    poller = Poller({"node-a": pinned_lb.dir}, interval=0.0005)
    poller.start()
    try:
        change = Change("endpoints", "svc-8", vip, fresh)
        poller.add(change)
        time.sleep(0.05)
        assert poller.pending() == 1 and not change.seen  # not in the maps yet
        written = time.monotonic()
        with pinned_lb.maps() as maps:
            maps.update_backends({7: BackendValue(fresh, 8080, PROTO_TCP)})
            maps.update_services(
                {
                    ServiceKey(vip, 80, PROTO_TCP, 1): ServiceValue(backend_id=7, rev_nat_id=3),
                    ServiceKey(vip, 80, PROTO_TCP, 0): ServiceValue(count=1),
                }
            )
            maps.update_frontends(derive_frontends(maps.dump()))
        deadline = time.monotonic() + 5
        while poller.pending() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert poller.failure is None
        assert set(change.seen) == {"node-a"}
        assert change.t0 < written <= change.seen["node-a"] < written + 1.0
        dropped = Change("delete", "svc-9", "10.96.0.9", "")
        poller.add(dropped)  # absent frontend: lands at once
        late = Change("endpoints", "svc-10", "10.96.0.10", "10.192.0.12")
        poller.add(late)
        time.sleep(0.1)
        assert "node-a" in dropped.seen
        assert poller.drop_pending() == [late]
    finally:
        poller.stop()


def test_loaded_objects_are_valid_for_the_contracts() -> None:
    items = o.manifest(services=3, per_service=2)["items"]
    kinds = Counter(item["kind"] for item in items)
    assert kinds == {"Namespace": 1, "Service": 3, "EndpointSlice": 3}
    now = datetime.now(UTC)
    ips: list[str] = []
    for item in items[1:]:
        kind = item["kind"].lower()
        item["metadata"] |= {"uid": "u", "resourceVersion": "1"}
        event = to_event(kind, "UPSERT", item, "test", now)  # raises on an invalid object
        assert event.name == item["metadata"]["name"]
        if kind == "endpointslice":
            ips += [a for ep in item["endpoints"] for a in ep["addresses"]]
    assert len(ips) == len(set(ips)) == 6
    assert o.vip(0) != o.vip(1)


def test_churn_mix_fresh_ips_and_deletes_only_created_services() -> None:
    state = ChurnState(services=100, per_service=2, seed=1)
    changes = [state.next_change() for _ in range(2000)]
    kinds = Counter(c.kind for c in changes)
    assert 0.75 < kinds["endpoints"] / 2000 < 0.85
    assert kinds["create"] > kinds["delete"] > 100
    fresh = [c.ip for c in changes if c.kind != "delete"]
    assert len(fresh) == len(set(fresh))  # every change carries a never-used backend IP
    created = {c.service for c in changes if c.kind == "create"}
    assert {c.service for c in changes if c.kind == "delete"} <= created
    endpoints = next(c for c in changes if c.kind == "endpoints")
    i = int(endpoints.service.split("-")[1])
    assert state.slice_ips(endpoints) == [o.backend_ip(i, 0, 2), endpoints.ip]


def test_change_latency_needs_every_node() -> None:
    change = Change("endpoints", "svc-1", o.vip(1), "10.192.0.1", t0=10.0)
    change.seen = {"a": 10.004, "b": 10.010}
    assert change.latency_all(3) is None
    assert change.latency_all(2) == pytest.approx(0.010)
    change.error = "ApiException"
    assert change.latency_all(2) is None


@pytest.mark.bpf
def test_anchor_restores_the_changed_ruleset() -> None:
    state = ChurnState(services=5, per_service=2, seed=3)
    with IptablesAnchor(5, 2, run_id=unique_name("t", max_len=8)) as anchor:
        change = next(c for c in iter(state.next_change, None) if c.kind == "endpoints")
        anchor.apply(change, state)
        assert anchor.restore() > 0
        saved = subprocess.run(
            ["ip", "netns", "exec", anchor.netns, "iptables-save", "-t", "nat"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"--to-destination {change.ip}:{o.TARGET_PORT}" in saved
        assert saved.count("-A KUBE-SERVICES") == 5 + 1  # one per Service + the nodeports jump
    listed = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True)
    netns = listed.stdout
    assert anchor.netns not in netns


def test_cdf_and_summary_rows() -> None:
    xs, ys = cdf([3.0, 1.0, 2.0, 2.0])
    assert xs == [1.0, 2.0, 2.0, 3.0]
    assert ys == [0.25, 0.5, 0.75, 1.0]
    programming = {
        "services": 100,
        "rows": [
            {
                "nodes": 2,
                "weir": {"p50_ms": 5.0, "p99_ms": 20.0, "missing": 1.0},
                "kube_proxy_restore": {"p50_ms": 500.0, "p99_ms": 800.0},
                "p50_ratio_kp_to_weir": 100.0,
                "p99_ratio_kp_to_weir": 40.0,
                "worker_rss_mib_max": 300.0,
            }
        ],
    }
    runs = {
        "programming": {"ok": True, "seconds": 1.0, "data": programming},
        "throughput": {"ok": False, "seconds": 1.0, "error": "exit code 1"},
    }
    rows = summary_rows(runs)
    assert rows[0][1] == "API -> all 2 node(s) maps, 100 Services"
    assert rows[0][2] == "p50 5.0 / p99 20.0 ms (1 missing)"
    assert "(100x / 40x)" in rows[0][3]
    assert rows[1] == ("programming", "worker RSS (max over nodes)", "300 MiB", "")
    assert rows[2] == ("throughput", "FAILED", "exit code 1", "")


def test_end_to_end_rounds_report_the_median_round_and_keep_every_round() -> None:
    rounds = [
        {"events": 20000, "events_per_s": rate, "applied_s": 20000 / rate}
        for rate in (9000.0, 12000.0, 7000.0)
    ]
    e = summarise_rounds(rounds)
    assert e["events_per_s"] == 9000.0
    assert e["applied_s"] == 20000 / 9000.0
    assert (e["events_per_s_min"], e["events_per_s_max"]) == (7000.0, 12000.0)
    assert e["rounds"] == rounds  # in the order they ran
    assert e2e_text(e) == "median 9000 (20000 in 2.22 s); rounds 9000 / 12000 / 7000"
    assert summarise_rounds(rounds[:2])["events_per_s"] == 9000.0  # even count: lower median
    assert e2e_text(summarise_rounds(rounds[:1])) == "9000 (20000 in 2.22 s)"
