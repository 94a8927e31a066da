"""Datapath benchmark: connect() latency to a ClusterIP as the number of Services grows.

Three contenders in one run, each in its own client namespace with the same topology
(bench/netlab.py): ``direct`` connects straight to a backend (the floor), ``iptables`` goes through
the ruleset kube-proxy would write for N Services (bench/kubeproxy_rules.py, loaded with
iptables-restore, iptables-nft on this machine), ``weir`` goes through Weir's cgroup connect4
program and N Services in its eBPF maps. Each connect picks a random Service, so the iptables walk
covers the whole KUBE-SERVICES chain on average.

Why it is shaped this way: this VM's floor moves between two modes from minute to minute, by more
than Weir's whole overhead. So the contenders alternate every ``--chunk`` connects inside a round
(a round sees one host state for all three), each round gives a paired ratio (its weir p50 / its
direct p50), and the table reads the median of those ratios with their IQR, beside the pooled
ratio of earlier runs. And because even a paired latency carries the host's noise, the kernel's
own BPF statistics give the time spent in the connect4 program per connect (bench/bpfstats.py):
Weir's cost, measured where it is spent.

Run: ``.venv/bin/python -m bench.datapath [--sizes 100,1000,10000,100000]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from bench.bpfstats import ProgMeter, stats_enabled
from bench.kubeproxy_rules import BenchService, ruleset
from bench.machine import describe, save
from bench.netlab import BACKEND_PORT, BACKENDS, NetLab
from bench.stats import paired_ratio, percentile, spread, summary_us
from bench.weir_contender import WeirMaps

SERVICE_PORT = 80
VIP_BASE = ipaddress.IPv4Address("10.96.0.0")
CONTENDERS = ("direct", "iptables", "weir")
ESTIMATORS = {
    "paired_p50_ratio": "per round: contender p50 / direct p50 of the same round; median and "
    "quartiles over rounds",
    "p50_ratio_to_direct": "pooled: p50 over every round's connects / direct's pooled p50",
    "connect4": "kernel BPF statistics (BPF_ENABLE_STATS): run_time_ns / run_cnt of the attached "
    "connect4 program, over all measured rounds (ns_per_run) and per weir chunk (chunk_ns_per_run: "
    "median and quartiles of the chunk means)",
}


class Plan(NamedTuple):
    rounds: int
    per_round: int  # connects per contender per round
    chunk: int  # contenders alternate every this many connects


def make_services(n: int) -> list[BenchService]:
    return [
        BenchService(
            namespace="bench",
            name=f"svc-{i}",
            vip=str(VIP_BASE + 1 + i),
            port=SERVICE_PORT,
            endpoints=[(ip, BACKEND_PORT) for ip in BACKENDS],
        )
        for i in range(n)
    ]


class Client:
    """A long-lived connect_client process inside one contender's namespace and cgroup."""

    def __init__(self, lab: NetLab, contender: str) -> None:
        self.proc = lab.spawn(contender, [sys.executable, "-m", "bench.connect_client"])
        assert self.proc.stdout is not None
        if json.loads(self.proc.stdout.readline()).get("ready") is not True:
            raise RuntimeError(f"{contender} client did not start")

    def run(self, targets: Sequence[tuple[str, int]], count: int, seed: int) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"targets": targets, "count": count, "seed": seed}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result


def load_iptables(lab: NetLab, services: Sequence[BenchService]) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["ip", "netns", "exec", lab.client_ns("iptables"), "iptables-restore"],
        input=ruleset(services),
        text=True,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def plan_round(rng: random.Random, per_round: int, chunk: int) -> list[tuple[str, int, int]]:
    """One round as (contender, connects, seed) steps (pure): ``per_round`` connects per
    contender in chunks of ``chunk``, every chunk the contenders in a fresh shuffled order and with
    one seed shared by the three, so each contender's round spans the same stretch of time."""
    steps: list[tuple[str, int, int]] = []
    order = list(CONTENDERS)
    for done in range(0, per_round, chunk):
        count = min(chunk, per_round - done)
        seed = rng.getrandbits(32)
        rng.shuffle(order)
        steps.extend((contender, count, seed) for contender in order)
    return steps


def paired(rounds: dict[str, list[list[int]]]) -> dict[str, dict[str, Any]]:
    """Per contender, the round-by-round p50 ratio to the floor: median, IQR and every ratio."""
    out: dict[str, dict[str, Any]] = {}
    for c in ("iptables", "weir"):
        ratios = paired_ratio(rounds[c], rounds["direct"])
        out[c] = spread(ratios) | {"rounds": len(ratios), "ratios": ratios}
    return out


def bench_size(
    lab: NetLab,
    clients: dict[str, Client],
    weir: WeirMaps,
    meter: ProgMeter,
    n: int,
    plan: Plan,
) -> dict[str, Any]:
    services = make_services(n)
    restore_s = load_iptables(lab, services)
    weir_s = weir.load(services)
    sample = random.Random(n).sample(services, min(len(services), 256))
    vip_targets = [(s.vip, s.port) for s in sample]
    targets = {
        "direct": [(ip, BACKEND_PORT) for ip in BACKENDS],
        "iptables": vip_targets,
        "weir": vip_targets,
    }
    rounds: dict[str, list[list[int]]] = {c: [] for c in CONTENDERS}
    errors = dict.fromkeys(CONTENDERS, 0)
    rng = random.Random(n * 7)
    for contender in CONTENDERS:  # warm-up, not recorded: caches, the fresh nft ruleset
        clients[contender].run(targets[contender], plan.per_round, rng.getrandbits(32))
    before = meter.read()
    chunks: list[tuple[str, float]] = []  # (contender before it, connect4 ns/run) per weir chunk
    previous = ""
    for _ in range(plan.rounds):
        this_round: dict[str, list[int]] = {c: [] for c in CONTENDERS}
        for contender, count, seed in plan_round(rng, plan.per_round, plan.chunk):
            start = meter.read()
            result = clients[contender].run(targets[contender], count, seed)
            if contender == "weir":
                chunks.append((previous, (meter.read() - start).ns_per_run))
            previous = contender
            this_round[contender].extend(result["ns"])
            errors[contender] += result["errors"]
        for c in CONTENDERS:
            rounds[c].append(this_round[c])
    cost = meter.read() - before
    stats = {
        c: summary_us([t for r in rounds[c] for t in r]) | {"errors": errors[c]} for c in CONTENDERS
    }
    floor = stats["direct"]["p50_us"]
    for c in CONTENDERS:
        stats[c]["p50_ratio_to_direct"] = stats[c]["p50_us"] / floor  # pooled over all rounds
    return {
        "services": n,
        "iptables_restore_s": restore_s,
        "weir_load_s": weir_s,
        **stats,
        "paired_p50_ratio": paired(rounds),
        "round_p50_us": {c: [percentile(r, 50) / 1000.0 for r in rounds[c]] for c in CONTENDERS},
        "connect4": {
            "ns_per_run": cost.ns_per_run,  # mean over every measured run
            "chunk_ns_per_run": spread([ns for _, ns in chunks]),  # one mean per weir chunk
            "chunk_ns_per_run_after": {  # by the contender that ran just before the chunk
                c: spread(after)
                for c in CONTENDERS
                if (after := [ns for p, ns in chunks if p == c])
            },
            "runs": cost.run_cnt,
            "run_time_ns": cost.run_time_ns,
            "weir_connects": plan.rounds * plan.per_round,
        },
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'services':>9} | {'direct p50/p99 us':>18} | {'iptables p50/p99 us':>20} | "
        f"{'weir p50/p99 us':>16} | {'ipt/direct paired':>17} | "
        f"{'weir/direct paired [IQR] (pooled)':>33} | {'connect4 median/mean':>20}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        d, i, w = r["direct"], r["iptables"], r["weir"]
        pi, pw = r["paired_p50_ratio"]["iptables"], r["paired_p50_ratio"]["weir"]
        c4 = r["connect4"]
        pooled = w["p50_ratio_to_direct"]
        weir_ratio = f"{pw['median']:.3f}x [{pw['p25']:.3f}-{pw['p75']:.3f}] ({pooled:.3f}x)"
        print(
            f"{r['services']:>9} | {d['p50_us']:>8.1f} / {d['p99_us']:>7.1f} | "
            f"{i['p50_us']:>9.1f} / {i['p99_us']:>8.1f} | "
            f"{w['p50_us']:>7.1f} / {w['p99_us']:>6.1f} | "
            f"{pi['median']:>16.2f}x | {weir_ratio:>33} | "
            f"{c4['chunk_ns_per_run']['median'] / 1e3:>8.2f} / {c4['ns_per_run'] / 1e3:>5.2f} us"
        )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=100, help="connects per contender")
    parser.add_argument(
        "--chunk", type=int, default=25, help="contenders alternate every this many connects"
    )
    parser.add_argument("--out", default="bench/results/datapath.json")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="clients on one CPU, the backend server on another (the same for all contenders)",
    )
    args = parser.parse_args(argv)
    if min(args.rounds, args.per_round, args.chunk) < 1:
        parser.error("--rounds, --per-round and --chunk must be at least 1")
    plan = Plan(args.rounds, args.per_round, args.chunk)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    cpus = sorted(os.sched_getaffinity(0))
    pin = (cpus[0], cpus[-1]) if args.pin and len(cpus) > 1 else None
    signal.signal(signal.SIGTERM, _exit_on_term)  # a terminated run still removes its lab
    with (
        NetLab(CONTENDERS, cpus=pin) as lab,
        WeirMaps(lab, "weir", max(sizes)) as weir,
        stats_enabled(),
    ):
        clients = {c: Client(lab, c) for c in CONTENDERS}
        meter = ProgMeter(lab.cgroup("weir"))
        try:
            for n in sizes:
                print(
                    f"[datapath] {n} services: loading rulesets and maps, measuring ...", flush=True
                )
                rows.append(bench_size(lab, clients, weir, meter, n, plan))
                print_table(rows[-1:])
        finally:
            meter.close()
    print()
    print_table(rows)
    save(
        args.out,
        {
            "machine": describe(),
            "cpus_server_client": pin,
            "plan": plan._asdict(),
            "estimators": ESTIMATORS,
            "rows": rows,
        },
    )
    return rows


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
