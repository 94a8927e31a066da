"""``make bench``: every benchmark in sequence, one summary table, summary.json and the plots.

Each benchmark runs as its own process (``python -m bench.<name>``), so one that fails or leaks
memory cannot distort the next, and its own table still prints as it goes; this module reads the
JSON each one wrote. Default sizes are the issue's (10k Services for programming latency and
throughput, up to 100k for the datapath) with fewer rounds, so the whole run stays well under 15
minutes on the 2-core machine (6.5 min measured); ``--quick`` shrinks everything for a smoke
test of the harness. A benchmark that fails is reported in the table as failed; the others
still run.

Run: ``.venv/bin/python -m bench.run_all [--quick] [--only programming,throughput]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine import describe
from bench.plots import make_all
from bench.stats import e2e_text

RESULTS = Path("bench/results")

# name -> (arguments for the full run, arguments for --quick)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "datapath": (
        ["--sizes", "100,1000,10000,100000", "--rounds", "100", "--per-round", "100"],
        ["--sizes", "100,1000", "--rounds", "4", "--per-round", "50"],
    ),
    "coldsync": (
        ["--services", "10000", "--endpoints", "10", "--changes", "30"],
        ["--services", "500", "--endpoints", "4", "--changes", "10"],
    ),
    "programming": (
        ["--services", "10000", "--nodes", "1,5,10", "--rounds", "3", "--changes", "40"],
        [
            "--services",
            "300",
            "--nodes",
            "1,2",
            "--rounds",
            "2",
            "--changes",
            "10",
            "--anchor-changes",
            "1",
        ],
    ),
    "throughput": (
        ["--services", "10000"],
        [
            "--services",
            "300",
            "--rates",
            "500,1000",
            "--step-seconds",
            "2",
            "--drive-seconds",
            "2",
            "--labels",
            "100",
            "--e2e-rounds",
            "1",
        ],
    ),
}


def available(name: str) -> bool:
    return (Path(__file__).parent / f"{name}.py").exists()


def run_one(name: str, args: list[str]) -> dict[str, Any]:
    out = RESULTS / f"{name}.json"
    out.unlink(missing_ok=True)  # never summarise a stale result
    print(f"\n=== bench.{name} {' '.join(args)}", flush=True)
    start = time.monotonic()
    argv = [sys.executable, "-m", f"bench.{name}", *args, "--out", str(out)]
    proc = subprocess.run(argv, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0 or not out.exists():
        return {"ok": False, "seconds": took, "error": f"exit code {proc.returncode}"}
    data: dict[str, Any] = json.loads(out.read_text())
    return {"ok": True, "seconds": took, "data": data}


def fmt(value: float, unit: str = "", digits: int = 1) -> str:
    return f"{value:.{digits}f}{unit}"


def datapath_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """One line per size: p50/p99, the paired ratio to the floor (median over rounds, with its
    IQR), the pooled ratio and connect4's own cost (median over chunks, and the mean); results
    written before the paired design show their pooled ratio alone."""
    out: list[tuple[str, str, str, str]] = []
    for r in rows:
        w, i, d = r["weir"], r["iptables"], r["direct"]
        weir = f"{w['p50_us']:.1f}/{w['p99_us']:.1f} us"
        ipt = f"{i['p50_us']:.1f}/{i['p99_us']:.1f} us"
        if "paired_p50_ratio" in r:  # results written before the paired design have none
            pw, pi = r["paired_p50_ratio"]["weir"], r["paired_p50_ratio"]["iptables"]
            c4 = r["connect4"]
            weir += (
                f" (paired {pw['median']:.2f}x floor, IQR {pw['p25']:.2f}-{pw['p75']:.2f}; "
                f"pooled {w['p50_ratio_to_direct']:.2f}x; connect4 program "
                f"{c4['chunk_ns_per_run']['median'] / 1000:.2f} us/connect, "
                f"mean {c4['ns_per_run'] / 1000:.2f})"
            )
            ipt += (
                f" (paired {pi['median']:.2f}x floor; pooled {i['p50_ratio_to_direct']:.2f}x; "
                f"floor {d['p50_us']:.1f} us)"
            )
        else:
            weir += f" ({w['p50_ratio_to_direct']:.2f}x floor)"
            ipt += f" ({i['p50_ratio_to_direct']:.2f}x floor; floor {d['p50_us']:.1f} us)"
        out.append(("datapath", f"connect p50/p99, {r['services']} Services", weir, ipt))
    return out


def summary_rows(runs: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(benchmark, what, Weir, kube-proxy / ratio) lines of the summary table (pure)."""
    rows: list[tuple[str, str, str, str]] = []
    for name, run in runs.items():
        if not run["ok"]:
            rows.append((name, "FAILED", run.get("error", ""), ""))
            continue
        data = run["data"]
        if name == "datapath":
            rows.extend(datapath_rows(data["rows"]))
        elif name == "coldsync":
            r = data.get("result", data)
            rows.append((
                name, f"cold sync, {r.get('services')} Services / {r.get('endpoints')} endpoints",
                f"{r['spawn_to_ready_s']:.2f} s spawn->ready ({r['worker_sync_s']:.2f} s "
                f"bootstrap), peak RSS {r['peak_rss_mib']:.0f} MiB",
                f"iptables-restore {r['iptables_restore_s']:.2f} s",
            ))  # fmt: skip
        elif name == "programming":
            for r in data["rows"]:
                w, k = r["weir"], r["kube_proxy_restore"]
                rows.append((
                    name, f"API -> all {r['nodes']} node(s) maps, {data['services']} Services",
                    f"p50 {w['p50_ms']:.1f} / p99 {w['p99_ms']:.1f} ms"
                    + (f" ({int(w['missing'])} missing)" if w["missing"] else ""),
                    f"restore p50 {k['p50_ms']:.0f} / p99 {k['p99_ms']:.0f} ms "
                    f"({r['p50_ratio_kp_to_weir']:.0f}x / {r['p99_ratio_kp_to_weir']:.0f}x)",
                ))  # fmt: skip
            rss = max(r["worker_rss_mib_max"] for r in data["rows"]) if data["rows"] else 0.0
            rows.append((name, "worker RSS (max over nodes)", f"{rss:.0f} MiB", ""))
        elif name == "throughput":
            w, b = data["watcher"], data["bus_to_maps"]
            if "end_to_end" in data:
                e = data["end_to_end"]
                rows.append((name, "watcher list -> bus -> maps (end to end)",
                             e2e_text(e).replace(" (", " events/s (", 1), ""))  # fmt: skip
            rows.append((name, "watcher list -> bus", f"{w['list_events_per_s']:.0f} events/s", ""))
            rows.append((
                name, f"API writes ({w['watch']['writers']} writers) -> bus -> maps",
                f"{w['watch']['api_writes_per_s']:.0f} writes/s, worker +"
                f"{w['watch']['worker_catchup_s']:.2f} s behind", "",
            ))  # fmt: skip
            rows.append((name, "bus -> maps, max sustained",
                         f"{b['max_sustained_per_s']:.0f} events/s", ""))  # fmt: skip
            for i in data["identity"]:
                rows.append((
                    name, f"identity, {i['allocators']} allocator(s)",
                    f"{i['identities_per_s']:.0f} new ids/s (agree: {i['all_allocators_agree']})",
                    "",
                ))  # fmt: skip
    return rows


def print_summary(rows: list[tuple[str, str, str, str]]) -> None:
    headers = ("benchmark", "measure", "Weir", "kube-proxy (x floor, or kube-proxy/Weir p50 / p99)")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the harness")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(BENCHMARKS))
    p.add_argument("--no-docs", action="store_true", help="do not copy the plots to docs/img/")
    args = p.parse_args(argv)
    chosen = [n for n in (args.only.split(",") if args.only else BENCHMARKS) if n]
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    runs: dict[str, dict[str, Any]] = {}
    for name in chosen:
        if name not in BENCHMARKS:
            raise SystemExit(f"bench.run_all: unknown benchmark {name!r}")
        if not available(name):
            print(f"\n=== bench.{name}: not present, skipped", flush=True)
            continue
        full, quick = BENCHMARKS[name]
        runs[name] = run_one(name, quick if args.quick else full)
    make_all(RESULTS, docs=not args.no_docs and not args.quick)
    rows = summary_rows(runs)
    machine = describe()
    total = time.monotonic() - started
    print(f"\nWeir benchmarks ({'quick' if args.quick else 'full'} run, {total / 60:.1f} min)")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print_summary(rows)
    summary = {
        "machine": machine,
        "quick": args.quick,
        "minutes": total / 60,
        "seconds_per_benchmark": {n: r["seconds"] for n, r in runs.items()},
        "table": [
            dict(zip(("benchmark", "measure", "weir", "kube_proxy"), r, strict=True)) for r in rows
        ],
    }
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsummary: {RESULTS / 'summary.json'}")
    if any(not r["ok"] for r in runs.values()):
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
