"""Network-programming latency: an API change -> in the eBPF maps of every node, against
kube-proxy's full iptables-restore, with 1, 5 and 10 nodes and N Services loaded.

One stack (bench/stack.py): nats-server, ``weir apiserver`` pre-loaded with N Services and their
EndpointSlices, ``weir watcher``, and ``weir datapath --maps bpf`` worker processes, each with its
own pinned maps and cgroup. Workers are added between measurements (1, then 5, then 10), each
waits for its full sync. At each node count, rounds alternate in a shuffled order between a Weir
block (steady churn at ``--rate`` changes/s through kubernetes-asyncio; each change timed from
the start of its API write until a map probe sees it in every node's pinned maps) and a
kube-proxy block (the same kind of changes applied to the same Services, each followed by a
timed iptables-restore of the full ruleset in a namespace of the benchmark's own).

Run: ``.venv/bin/python -m bench.programming [--services 10000 --nodes 1,5,10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

from kubernetes_asyncio import client, config

from bench import objects as o
from bench.anchor import IptablesAnchor
from bench.busprobe import stream_state, wait_applied, wait_published
from bench.churn import Change, ChurnState, KubeWriter, Poller, run_churn
from bench.machine import describe, save
from bench.stack import Stack, Worker
from bench.stats import percentile
from services.common.bus import connect_bus


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": float(len(ms)),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
    }


async def start_workers(stack: Stack, js: Any, want: int, seq: int, within: float) -> float:
    """Grow the stack to ``want`` workers and wait for all of them to apply ``seq``."""
    started = time.monotonic()
    new: list[Worker] = [stack.add_worker() for _ in range(want - len(stack.workers))]
    try:
        await wait_applied(js, [w.node for w in stack.workers], seq, within)
    except TimeoutError:
        stack.check_alive()
        raise
    return time.monotonic() - started if new else 0.0


async def measure_nodes(
    stack: Stack, writer: KubeWriter, state: ChurnState, anchor: IptablesAnchor,
    anchor_state: ChurnState, args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    poller = Poller({w.node: w.maps_dir for w in stack.workers}, interval=args.poll_interval)
    poller.start()
    weir: list[Change] = []
    restores: list[float] = []
    rates: list[float] = []
    rng = random.Random(len(stack.workers))
    try:
        await run_churn(writer, poller, state, rate=args.rate, count=5)  # warm-up, not recorded
        for _ in range(args.rounds):
            blocks = ["weir", "kube-proxy"]
            rng.shuffle(blocks)
            for block in blocks:
                if block == "weir":
                    changes, achieved = await run_churn(
                        writer, poller, state, rate=args.rate, count=args.changes
                    )
                    weir.extend(changes)
                    rates.append(achieved)
                else:
                    for _ in range(args.anchor_changes):
                        anchor.apply(anchor_state.next_change(), anchor_state)
                        restores.append(await asyncio.to_thread(anchor.restore))
        stack.check_alive()
    finally:
        poller.stop()
    nodes = len(stack.workers)
    all_nodes = [lat for c in weir if (lat := c.latency_all(nodes)) is not None]
    per_node = [t - c.t0 for c in weir if not c.error for t in c.seen.values()]
    errors = [c.error for c in weir if c.error]
    weir_stats = summary_ms(all_nodes) | {
        "missing": float(len(weir) - len(all_nodes)),
        "api_write_p50_ms": percentile([c.api_s * 1000 for c in weir], 50),
        "rate_achieved": sum(rates) / len(rates) if rates else 0.0,
    }
    kp = summary_ms(restores)
    return {
        "nodes": nodes,
        "weir": weir_stats,
        "weir_per_node": summary_ms(per_node),
        "kube_proxy_restore": kp,
        "p50_ratio_kp_to_weir": kp["p50_ms"] / weir_stats["p50_ms"],
        "p99_ratio_kp_to_weir": kp["p99_ms"] / weir_stats["p99_ms"],
        "latencies_ms": sorted(x * 1000 for x in all_nodes),
        "restores_ms": sorted(x * 1000 for x in restores),
        "errors": errors[:5],
        "by_kind": {
            kind: summary_ms(
                [lat for c in weir if c.kind == kind and (lat := c.latency_all(nodes)) is not None]
            )
            for kind in ("endpoints", "create", "delete")
        },
    }


def print_table(rows: list[dict[str, Any]], services: int) -> None:
    header = (
        f"{'nodes':>5} | {'weir p50/p99 ms':>17} | {'missing':>7} | {'rate/s':>6} | "
        f"{'kube-proxy restore p50/p99 ms':>29} | {'kp/weir p50':>11} | {'kp/weir p99':>11} | "
        f"{'worker RSS MiB':>14}"
    )
    print(f"network-programming latency, {services} Services loaded")
    print(header)
    print("-" * len(header))
    for r in rows:
        w, k = r["weir"], r["kube_proxy_restore"]
        print(
            f"{r['nodes']:>5} | {w['p50_ms']:>7.1f} / {w['p99_ms']:>7.1f} | "
            f"{int(w['missing']):>7} | {w['rate_achieved']:>6.1f} | "
            f"{k['p50_ms']:>13.1f} / {k['p99_ms']:>13.1f} | "
            f"{r['p50_ratio_kp_to_weir']:>10.1f}x | {r['p99_ratio_kp_to_weir']:>10.1f}x | "
            f"{r['worker_rss_mib_max']:>14.1f}"
        )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    node_counts = sorted(int(n) for n in args.nodes.split(","))
    rows: list[dict[str, Any]] = []
    with Stack() as stack, IptablesAnchor(args.services, args.per_service, stack.run_id) as anchor:
        manifest = o.write_manifest(stack.workdir / "load.json", args.services, args.per_service)
        t = time.monotonic()
        stack.start_nats()
        stack.start_apiserver([manifest])
        stack.start_watcher()
        bus = await connect_bus(stack.nats_url, "bench-programming")
        try:
            seq = await wait_published(bus.js, 2 * args.services, within=args.timeout)
            print(f"[programming] {args.services} Services on the bus after "
                  f"{time.monotonic() - t:.1f}s (seq {seq})", flush=True)  # fmt: skip
            assert stack.kubeconfig is not None
            kcfg = client.Configuration()
            await config.load_kube_config(str(stack.kubeconfig), client_configuration=kcfg)
            async with client.ApiClient(kcfg) as api:
                writer = KubeWriter(client.CoreV1Api(api), client.DiscoveryV1Api(api))
                state = ChurnState(args.services, args.per_service, seed=6)
                anchor_state = ChurnState(args.services, args.per_service, seed=7)
                for n in node_counts:
                    _, seq = await stream_state(bus.js)
                    took = await start_workers(stack, bus.js, n, seq, args.timeout)
                    rss = [w.rss_mib() for w in stack.workers]
                    print(f"[programming] {n} nodes synced (+{took:.1f}s); "
                          f"measuring {args.rounds} rounds ...", flush=True)  # fmt: skip
                    row = await measure_nodes(stack, writer, state, anchor, anchor_state, args)
                    row["worker_rss_mib_max"] = max(rss)
                    row["workers_sync_s"] = took
                    rows.append(row)
                    print_table(rows[-1:], args.services)
        finally:
            await bus.close()
    result = {
        "machine": describe(),
        "services": args.services,
        "endpoints_per_service": args.per_service,
        "rate": args.rate,
        "rows": rows,
    }
    print()
    print_table(rows, args.services)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--per-service", type=int, default=2, help="endpoints per Service")
    p.add_argument("--nodes", default="1,5,10", help="node counts, measured in increasing order")
    p.add_argument("--rate", type=float, default=25.0, help="changes per second during churn")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--changes", type=int, default=50, help="Weir changes per round")
    p.add_argument("--anchor-changes", type=int, default=2, help="iptables restores per round")
    p.add_argument("--poll-interval", type=float, default=0.0005, help="map probe sweep, s")
    p.add_argument("--timeout", type=float, default=600.0, help="start-up / sync timeout, s")
    p.add_argument("--out", default="bench/results/programming.json")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    result = asyncio.run(run(args))
    save(args.out, result)
    return result


if __name__ == "__main__":
    main()
