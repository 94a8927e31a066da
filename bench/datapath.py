"""Datapath benchmark: connect() latency to a ClusterIP as the number of Services grows.

Three contenders in one run, each in its own client namespace with the same topology
(bench/netlab.py): ``direct`` connects straight to a backend (the floor), ``iptables`` goes through
the ruleset kube-proxy would write for N Services (bench/kubeproxy_rules.py, loaded with
iptables-restore, iptables-nft on this machine), ``weir`` goes through Weir's cgroup connect4
program and N Services in its eBPF maps. Rounds interleave the contenders in a shuffled order so
drift in the machine (other load, frequency) hits all three alike. Each connect picks a random
Service, so the iptables walk covers the whole KUBE-SERVICES chain on average.

Run: ``.venv/bin/python -m bench.datapath [--sizes 100,1000,10000,100000]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.kubeproxy_rules import BenchService, ruleset
from bench.machine import describe, save
from bench.netlab import BACKEND_PORT, BACKENDS, NetLab
from bench.stats import summary_us
from bench.weir_contender import WeirMaps

SERVICE_PORT = 80
VIP_BASE = ipaddress.IPv4Address("10.96.0.0")
CONTENDERS = ("direct", "iptables", "weir")


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

    def run(self, targets: Sequence[tuple[str, int]], count: int) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"targets": targets, "count": count}) + "\n")
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


def bench_size(
    lab: NetLab, clients: dict[str, Client], weir: WeirMaps, n: int, rounds: int, per_round: int
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
    timings: dict[str, list[int]] = {c: [] for c in CONTENDERS}
    errors = dict.fromkeys(CONTENDERS, 0)
    order = list(CONTENDERS)
    rng = random.Random(n * 7)
    for contender in CONTENDERS:  # warm-up, not recorded: caches, the fresh nft ruleset
        clients[contender].run(targets[contender], per_round)
    for _ in range(rounds):
        rng.shuffle(order)
        for contender in order:
            result = clients[contender].run(targets[contender], per_round)
            timings[contender].extend(result["ns"])
            errors[contender] += result["errors"]
    stats = {c: summary_us(timings[c]) | {"errors": errors[c]} for c in CONTENDERS}
    floor = stats["direct"]["p50_us"]
    for c in CONTENDERS:
        stats[c]["p50_ratio_to_direct"] = stats[c]["p50_us"] / floor
    return {"services": n, "iptables_restore_s": restore_s, "weir_load_s": weir_s, **stats}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'services':>9} | {'direct p50/p99 us':>18} | {'iptables p50/p99 us':>20} | "
        f"{'weir p50/p99 us':>16} | {'ipt/direct':>10} | {'weir/direct':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        d, i, w = r["direct"], r["iptables"], r["weir"]
        print(
            f"{r['services']:>9} | {d['p50_us']:>8.1f} / {d['p99_us']:>7.1f} | "
            f"{i['p50_us']:>9.1f} / {i['p99_us']:>8.1f} | "
            f"{w['p50_us']:>7.1f} / {w['p99_us']:>6.1f} | "
            f"{i['p50_ratio_to_direct']:>9.2f}x | {w['p50_ratio_to_direct']:>10.2f}x"
        )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=250)
    parser.add_argument("--out", default="bench/results/datapath.json")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="clients on one CPU, the backend server on another (the same for all contenders)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    cpus = sorted(os.sched_getaffinity(0))
    pin = (cpus[0], cpus[-1]) if args.pin and len(cpus) > 1 else None
    with NetLab(CONTENDERS, cpus=pin) as lab, WeirMaps(lab, "weir", max(sizes)) as weir:
        clients = {c: Client(lab, c) for c in CONTENDERS}
        for n in sizes:
            print(f"[datapath] {n} services: loading rulesets and maps, measuring ...", flush=True)
            rows.append(bench_size(lab, clients, weir, n, args.rounds, args.per_round))
            print_table(rows[-1:])
    print()
    print_table(rows)
    save(args.out, {"machine": describe(), "cpus_server_client": pin, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
