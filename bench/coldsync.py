"""Cold-sync benchmark: a fresh node programs N Services from the bus, next to kube-proxy.

Why it is shaped this way: the number users care about is "how long after a node (re)starts is
its datapath complete", and "how long after a change does a node's datapath follow". So the
benchmark runs the real thing end to end: a real nats-server holding the objects (published
once, like a watcher would), then ``weir datapath --maps bpf`` as a process with a fresh pin
directory and cgroup, timed from spawn until ``/readyz`` says synced. The worker's own metrics
split that into process start (imports + bcc compile + attach) and the bootstrap phases
(snapshot, decode, apply). Peak RSS is the process's VmHWM. Then single changes: an
EndpointSlice update is published and the bench polls the one pinned map entry it must change
(a point lookup, not a dump), so the latency includes bus delivery, decode, reconcile and the
syscall. The kube-proxy side is iptables-restore of the equivalent ruleset
(bench/kubeproxy_rules.py) into a network namespace created for the run; a change costs
kube-proxy another full restore. Everything the run creates (nats store, namespace, cgroup,
pins) carries a unique id and is removed at the end, also on failure.

Run (as root): ``.venv/bin/python -m bench.coldsync [--services 10000 --endpoints 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.kubeproxy_rules import BenchService, ruleset
from bench.machine import describe, save
from bench.mapprobe import MapProbe
from bench.stats import percentile
from contracts.v1 import K8sEvent, Op, to_event
from services.common.bus import Outgoing, connect_bus, provision, publish, publish_batch
from services.datapath.loader import DEFAULT_VERSION, remove_pins
from tests.conftest import NatsServer, free_port

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
BPFFS = Path("/sys/fs/bpf")
NODE = "bench-node"
PORT, TARGET_PORT = 80, 8080
WEIR = str(Path(sys.executable).parent / "weir")


def vip(i: int) -> str:
    return socket.inet_ntoa((0x0A600001 + i).to_bytes(4, "big"))  # 10.96.0.1 + i


def endpoint_ip(j: int) -> str:
    return socket.inet_ntoa((0x0A800001 + j).to_bytes(4, "big"))  # 10.128.0.1 + j


def service_raw(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"svc-{i}",
            "namespace": "bench",
            "uid": f"s{i}",
            "resourceVersion": "1",
        },
        "spec": {
            "clusterIP": vip(i),
            "ports": [{"name": "http", "port": PORT, "targetPort": TARGET_PORT}],
            "selector": {"app": f"svc-{i}"},
        },
    }


def slice_raw(i: int, part: int, ips: Sequence[str], rv: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i}-{part}",
            "namespace": "bench",
            "uid": f"e{i}-{part}",
            "resourceVersion": rv,
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "nodeName": f"n{k % 10}"}
            for k, ip in enumerate(ips)
        ],
    }


def cluster(services: int, endpoints: int, slice_size: int) -> Iterator[K8sEvent]:
    """Services and their EndpointSlices (at most ``slice_size`` endpoints per slice)."""
    now = datetime.now(UTC)
    for i in range(services):
        yield to_event("service", Op.UPSERT, service_raw(i), "bench", now)
        ips = [endpoint_ip(i * endpoints + k) for k in range(endpoints)]
        for part, start in enumerate(range(0, endpoints, slice_size)):
            raw = slice_raw(i, part, ips[start : start + slice_size])
            yield to_event("endpointslice", Op.UPSERT, raw, "bench", now)


def bench_services(services: int, endpoints: int) -> list[BenchService]:
    return [
        BenchService("bench", f"svc-{i}", vip(i), PORT,
                     [(endpoint_ip(i * endpoints + k), TARGET_PORT) for k in range(endpoints)])
        for i in range(services)
    ]  # fmt: skip


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user+sys of the process itself, user+sys of its children it has waited for): the
    loader and policy-install children are waited for before the worker is ready, so the
    second is their compile CPU. From /proc/<pid>/stat (fields 14-17, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    tick = os.sysconf("SC_CLK_TCK")
    return (utime + stime) / tick, (cutime + cstime) / tick


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def worker_pid(proc: subprocess.Popen[bytes], profiled: str) -> int:
    """The worker's pid: ``proc`` itself, or py-spy's child when profiling."""
    if not profiled:
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return int(children[0])


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (enough for the few metrics read here)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def ready(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
        return bool(resp.status == 200)
    return False


async def publish_cluster(url: str, events: list[K8sEvent]) -> float:
    bus = await connect_bus(url, "bench-coldsync")
    try:
        await provision(bus.js)
        start = time.perf_counter()
        items = [Outgoing(e.subject(), e, e.msg_id()) for e in events]
        for i in range(0, len(items), 5000):
            await publish_batch(bus.js, items[i : i + 5000])
        return time.perf_counter() - start
    finally:
        await bus.close()


async def change_latencies(url: str, probe: MapProbe, endpoints: int, n: int) -> list[float]:
    """Shrink/grow one service's slice ``n`` times; seconds until its master count follows."""
    bus = await connect_bus(url, "bench-changes")
    out: list[float] = []
    try:
        for k in range(n):
            i = (k * 7919) % 1000
            size = endpoints - 1 - (k % 2) if endpoints > 2 else 1
            ips = [endpoint_ip(i * endpoints + e) for e in range(size)]
            raw = slice_raw(i, 0, ips, rv=str(100 + k))
            start = time.perf_counter()
            ev = to_event("endpointslice", Op.UPSERT, raw, "bench", datetime.now(UTC))
            await publish(bus.js, ev.subject(), ev, msg_id=ev.msg_id())
            deadline = start + 10
            while probe.master_count(vip(i), PORT) != size:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"change {k} to svc-{i} not programmed within 10 s")
                await asyncio.sleep(0.0002)
            out.append(time.perf_counter() - start)
            await asyncio.sleep(0.02)
    finally:
        await bus.close()
    return out


def iptables_restore(netns: str, rules: str) -> float:
    start = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", netns, "iptables-restore"], input=rules, text=True,
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = secrets.token_hex(3)
    store = Path(tempfile.mkdtemp(prefix=f"weirbench-{run_id}-"))
    cgroup = CGROUP_ROOT / f"weirbench-{run_id}"
    pin_dir = BPFFS / f"weirbench-{run_id}"
    netns = f"weirbench-{run_id}-kp"
    nats = NatsServer(store)
    proc: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {
        "services": args.services,
        "endpoints": args.services * args.endpoints,
        "policy": args.policy,
    }
    try:
        nats.start()
        cgroup.mkdir()
        t = time.perf_counter()
        events = list(cluster(args.services, args.endpoints, args.slice_size))
        result["generate_s"] = time.perf_counter() - t
        result["messages"] = len(events)
        result["publish_s"] = asyncio.run(publish_cluster(nats.url, events))
        del events
        port = free_port()
        # as shipped, the worker runs the NetworkPolicy loop beside the LB loop (its own bcc
        # compile and maps): ready means both are; --no-policy measures the LB loop alone
        cmd = [WEIR, "datapath", "--maps", "bpf", "--node", NODE, "--nats", nats.url,
               "--cgroup", str(cgroup), "--pin-dir", str(pin_dir),
               "--metrics-listen", f"127.0.0.1:{port}", "--log-level", "WARNING",
               "--policy" if args.policy else "--no-policy"]  # fmt: skip
        if args.profile:
            cmd = [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "-r",
                "200",
                "-o",
                args.profile,
                "-f",
                "raw",
                "--",
                *cmd,
            ]
        log = (store / "datapath.log").open("wb")
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while not ready(f"http://127.0.0.1:{port}/readyz"):
            if proc.poll() is not None or time.perf_counter() - started > 300:
                raise RuntimeError((store / "datapath.log").read_text()[-3000:])
            time.sleep(0.005)
        result["spawn_to_ready_s"] = time.perf_counter() - started
        pid = worker_pid(proc, args.profile)
        result["worker_cpu_at_ready_s"], result["children_cpu_at_ready_s"] = cpu_seconds(pid)
        metrics = scrape(f"http://127.0.0.1:{port}/metrics")
        for phase in ("start", "loader", "snapshot", "model", "maps", "apply", "sync"):
            result[f"worker_{phase}_s"] = metrics.get(
                f'weir_datapath_bootstrap_duration_seconds{{phase="{phase}"}}', float("nan")
            )
        result["map_entries"] = {
            m: int(metrics.get(f'weir_datapath_map_entries{{map="{m}"}}', -1))
            for m in ("services", "backends", "revnat")
        }
        probe = MapProbe(pin_dir / DEFAULT_VERSION)
        try:
            lat = asyncio.run(change_latencies(nats.url, probe, args.endpoints, args.changes))
        finally:
            probe.close()
        result["change_p50_ms"] = percentile(lat, 50) * 1e3
        result["change_p99_ms"] = percentile(lat, 99) * 1e3
        result["change_max_ms"] = max(lat) * 1e3
        metrics = scrape(f"http://127.0.0.1:{port}/metrics")
        prog_sum = metrics.get("weir_network_programming_duration_seconds_sum", 0.0)
        prog_n = metrics.get("weir_network_programming_duration_seconds_count", 0.0)
        result["network_programming_mean_ms"] = prog_sum / prog_n * 1e3 if prog_n else None
        result["peak_rss_mib"] = vm_hwm_kib(worker_pid(proc, args.profile)) / 1024
        if args.profile:  # py-spy writes its profile when the worker exits
            os.kill(worker_pid(proc, args.profile), signal.SIGTERM)
            proc.wait(timeout=30)
        if not args.anchor:
            return result
        # kube-proxy (iptables mode) equivalent: one full restore per sync
        subprocess.run(["ip", "netns", "add", netns], check=True)
        rules = ruleset(bench_services(args.services, args.endpoints))
        result["iptables_rules"] = rules.count("\n-A ")
        result["iptables_restore_s"] = iptables_restore(netns, rules)
        result["iptables_restore_again_s"] = iptables_restore(netns, rules)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        nats.stop()
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        if pin_dir.exists():
            for version in pin_dir.iterdir():
                remove_pins(version)
            shutil.rmtree(pin_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            cgroup.rmdir()
        shutil.rmtree(store, ignore_errors=True)
    return result


def report(r: dict[str, Any]) -> None:
    print(f"cold sync of {r['services']} services / {r['endpoints']} endpoints "
          f"({r['messages']} bus messages, published in {r['publish_s']:.2f} s)")  # fmt: skip
    print(f"  weir: spawn -> ready           {r['spawn_to_ready_s']:.3f} s")
    print(f"        policy loop {'on (as shipped)' if r.get('policy', True) else 'off'}")
    print(f"        CPU at ready: worker {r['worker_cpu_at_ready_s']:.3f} s, its loader children "
          f"{r['children_cpu_at_ready_s']:.3f} s")  # fmt: skip
    print(
        f"        process start (interpreter + imports) {r['worker_start_s']:.3f} s; the loader "
        f"child (bcc compile + attach) took {r['worker_loader_s']:.3f} s beside the snapshot"
    )
    print(f"        bootstrap: snapshot read + decode {r['worker_snapshot_s']:.3f} s, model "
          f"{r['worker_model_s']:.3f} s, wait for the maps {r['worker_maps_s']:.3f} s, apply "
          f"{r['worker_apply_s']:.3f} s, total {r['worker_sync_s']:.3f} s")  # fmt: skip
    print(f"        map entries {r['map_entries']}, peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"        one change -> map: p50 {r['change_p50_ms']:.2f} ms, p99 "
          f"{r['change_p99_ms']:.2f} ms, max {r['change_max_ms']:.2f} ms")  # fmt: skip
    if "iptables_restore_s" not in r:
        return
    print(
        f"  kube-proxy iptables-restore ({r['iptables_rules']} rules): "
        f"{r['iptables_restore_s']:.3f} s, again {r['iptables_restore_again_s']:.3f} s"
    )
    sync = r["worker_sync_s"]
    print(f"  ratios: iptables-restore / weir bootstrap = {r['iptables_restore_s'] / sync:.1f}x; "
          f"iptables-restore / weir spawn->ready = "
          f"{r['iptables_restore_s'] / r['spawn_to_ready_s']:.1f}x; "
          f"kube-proxy change (full restore) / weir change p50 = "
          f"{r['iptables_restore_again_s'] * 1e3 / r['change_p50_ms']:.0f}x")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    parser.add_argument("--slice-size", type=int, default=100, help="max endpoints per slice")
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--out", default="bench/results/coldsync.json")
    parser.add_argument("--profile", default="", help="py-spy the worker into this file")
    parser.add_argument(
        "--policy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the worker's NetworkPolicy loop too (the default, as shipped)",
    )
    parser.add_argument(
        "--anchor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time kube-proxy's iptables-restore too (the default; --no-anchor: Weir alone, "
        "for quick iterations; run_all and the docs always include it)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench.coldsync needs root (bpffs, cgroups, netns)")
    result = run(args)
    report(result)
    save(args.out, {"machine": describe(), "result": result})
    return result


if __name__ == "__main__":
    main()
