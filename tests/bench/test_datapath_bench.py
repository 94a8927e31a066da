"""The datapath benchmark's estimators and its kernel-side meter measure what they claim.

The paired estimator must cancel a host that changes mode between rounds (the pooled p50 does
not), each round must give every contender the same connects in interleaved chunks, and the
connect4 meter must read the program the kernel runs for the contender's connects: one run per
connect, time > 0, through a real lab, a real cgroup and the real program.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench.bpfstats import ProgMeter, stats_enabled
from bench.datapath import CONTENDERS, Client, Plan, bench_size, make_services, plan_round
from bench.netlab import BACKEND_PORT, BACKENDS, NetLab
from bench.run_all import datapath_rows
from bench.stats import paired_ratio, percentile, spread
from bench.weir_contender import WeirMaps


def test_plan_round_interleaves_equal_chunks_with_shared_seeds() -> None:
    rng = random.Random(5)
    steps = plan_round(rng, per_round=100, chunk=30)
    assert len(steps) == 4 * 3  # chunks of 30, 30, 30, 10
    totals: Counter[str] = Counter()
    for k in range(0, len(steps), 3):
        chunk = steps[k : k + 3]
        assert sorted(c for c, _, _ in chunk) == sorted(CONTENDERS)
        assert len({(n, seed) for _, n, seed in chunk}) == 1  # same size and seed for all three
        totals.update({c: n for c, n, _ in chunk})
    assert totals == dict.fromkeys(CONTENDERS, 100)
    assert len({seed for _, _, seed in steps}) == 4
    orders = {tuple(c for c, _, _ in plan_round(rng, 100, 25)[:3]) for _ in range(30)}
    assert len(orders) > 1  # the order is shuffled, not fixed


def test_paired_ratio_cancels_a_host_that_changes_mode_between_rounds() -> None:
    rng = random.Random(1)
    floor_rounds: list[list[int]] = []
    weir_rounds: list[list[int]] = []
    for r in range(20):
        base = 26_000 if r % 3 else 38_000  # the bimodal floor of this VM
        floor = [base + rng.randrange(-500, 500) for _ in range(101)]
        floor_rounds.append(floor)
        weir_rounds.append([int(t * 1.03) for t in floor])
    ratios = paired_ratio(weir_rounds, floor_rounds)
    assert len(ratios) == 20
    assert spread(ratios)["median"] == pytest.approx(1.03, abs=0.002)
    assert all(r == pytest.approx(1.03, abs=0.002) for r in ratios)  # each round, either mode


def test_paired_ratio_skips_empty_rounds_and_checks_lengths() -> None:
    assert paired_ratio([[10, 20, 30], []], [[10, 10, 10], [5]]) == [2.0]
    with pytest.raises(ValueError, match="3 contender rounds, 2 floor"):
        paired_ratio([[1], [1], [1]], [[1], [1]])


def test_spread_quartiles() -> None:
    s = spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["median"], s["p25"], s["p75"], s["min"], s["max"]) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert spread([7.0])["p25"] == 7.0
    assert percentile([3, 1, 2], 50) == 2.0


def test_datapath_summary_rows_name_the_estimators() -> None:
    row = {
        "services": 100,
        "direct": {"p50_us": 20.0, "p99_us": 50.0, "p50_ratio_to_direct": 1.0},
        "iptables": {"p50_us": 30.0, "p99_us": 70.0, "p50_ratio_to_direct": 1.5},
        "weir": {"p50_us": 21.0, "p99_us": 55.0, "p50_ratio_to_direct": 1.05},
        "paired_p50_ratio": {
            "weir": {"median": 1.02, "p25": 1.01, "p75": 1.04},
            "iptables": {"median": 1.49, "p25": 1.4, "p75": 1.6},
        },
        "connect4": {"ns_per_run": 910.0, "chunk_ns_per_run": {"median": 640.0}},
    }
    (line,) = datapath_rows([row])
    assert line[2] == (
        "21.0/55.0 us (paired 1.02x floor, IQR 1.01-1.04; pooled 1.05x; "
        "connect4 program 0.64 us/connect, mean 0.91)"
    )
    assert line[3] == "30.0/70.0 us (paired 1.49x floor; pooled 1.50x; floor 20.0 us)"
    old = {k: v for k, v in row.items() if k not in ("paired_p50_ratio", "connect4")}
    assert datapath_rows([old])[0][2] == "21.0/55.0 us (1.05x floor)"


@pytest.mark.bpf
def test_connect4_meter_counts_every_connect_of_the_weir_cgroup() -> None:
    with NetLab(("weir",)) as lab, WeirMaps(lab, "weir", 4) as weir, stats_enabled():
        services = make_services(3)
        weir.load(services)
        client = Client(lab, "weir")
        meter = ProgMeter(lab.cgroup("weir"))
        try:
            before = meter.read()
            via_vip = client.run([(s.vip, s.port) for s in services], 40, seed=1)
            direct = client.run([(BACKENDS[0], BACKEND_PORT)], 10, seed=2)
            cost = meter.read() - before
        finally:
            meter.close()
    assert via_vip["errors"] == direct["errors"] == 0
    assert len(via_vip["ns"]) == 40
    assert cost.run_cnt == 50  # every connect in the cgroup runs connect4, service or not
    assert 0 < cost.ns_per_run < 1_000_000


@pytest.mark.bpf
def test_bench_size_pairs_rounds_and_meters_every_weir_connect() -> None:
    plan = Plan(rounds=3, per_round=10, chunk=4)
    with (
        NetLab(CONTENDERS) as lab,
        WeirMaps(lab, "weir", 8) as weir,
        stats_enabled(),
    ):
        clients = {c: Client(lab, c) for c in CONTENDERS}
        meter = ProgMeter(lab.cgroup("weir"))
        try:
            row = bench_size(lab, clients, weir, meter, 5, plan)
        finally:
            meter.close()
    assert all(row[c]["errors"] == 0 and row[c]["n"] == 30 for c in CONTENDERS)
    assert row["connect4"]["runs"] == row["connect4"]["weir_connects"] == 30
    assert row["connect4"]["ns_per_run"] > 0
    assert len(row["paired_p50_ratio"]["weir"]["ratios"]) == 3
    assert len(row["round_p50_us"]["direct"]) == 3
    direct = row["round_p50_us"]["direct"]
    weir_p50 = row["round_p50_us"]["weir"]
    assert row["paired_p50_ratio"]["weir"]["ratios"] == [
        pytest.approx(w / d) for w, d in zip(weir_p50, direct, strict=True)
    ]
