"""kube-proxy's side of the control-plane benchmarks: a full iptables-restore per change.

kube-proxy in iptables mode turns a Service or EndpointSlice change into a sync that writes its
nat table with ``iptables-restore``; the cost of that write grows with the number of Services and
is the floor of kube-proxy's programming latency on every node (before its min-sync-period and
the API watch delay, which this anchor leaves out in kube-proxy's favour). The anchor keeps the
same Services the Weir stack holds, applies each churn change to them and times the restore of
the whole ruleset (bench/kubeproxy_rules.py) into a network namespace of its own, removed on
exit also on failure.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from types import TracebackType

from bench import objects as o
from bench.churn import Change, ChurnState
from bench.kubeproxy_rules import BenchService, ruleset


def _bench_service(name: str, vip: str, ips: list[str]) -> BenchService:
    return BenchService(
        namespace=o.NAMESPACE,
        name=name,
        vip=vip,
        port=o.SERVICE_PORT,
        endpoints=[(ip, o.TARGET_PORT) for ip in ips],
    )


class IptablesAnchor:
    def __init__(self, services: int, per_service: int, run_id: str | None = None) -> None:
        self.netns = f"weirbench-{run_id or secrets.token_hex(3)}-kp"
        self.services: dict[str, BenchService] = {}
        for i in range(services):
            ips = [o.backend_ip(i, k, per_service) for k in range(per_service)]
            self.services[o.service_name(i)] = _bench_service(o.service_name(i), o.vip(i), ips)

    def __enter__(self) -> IptablesAnchor:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)

    def apply(self, change: Change, state: ChurnState) -> None:
        if change.kind == "delete":
            self.services.pop(change.service, None)
        else:
            ips = state.slice_ips(change)
            self.services[change.service] = _bench_service(change.service, change.vip, ips)

    def restore(self) -> float:
        """Seconds one ``iptables-restore`` of the full ruleset takes (rule text prepared
        before the clock starts: kube-proxy builds it in memory, in Go)."""
        text = ruleset(list(self.services.values()))
        start = time.perf_counter()
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "iptables-restore"],
            input=text,
            text=True,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start
