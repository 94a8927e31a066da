"""A benchmark lab: one server namespace and identical client namespaces, one per contender.

Every contender gets the same topology (a veth to the server namespace, the same routes, the same
backend addresses), so the only difference between them is the datapath under test: nothing, a
kube-proxy-shaped iptables ruleset, or Weir's cgroup programs. All addresses live only inside the
lab's namespaces; nothing is routed through the host. Namespaces and cgroups carry a unique run id
and are removed on exit, also on failure (``with NetLab(...)``).

The lab uses plain ``ip`` commands: a benchmark fixture, not a product path (the sandbox uses
pyroute2).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
BACKENDS = ("10.244.1.2", "10.244.1.3")
BACKEND_PORT = 8080  # bench/accept_server.py


def sh(*args: str, stdin: str | None = None) -> None:
    subprocess.run(args, input=stdin, text=True, check=True, capture_output=True)


@dataclass
class NetLab:
    contenders: tuple[str, ...]
    # (server CPU, client CPU) or None: pinned, every connect() of every contender runs on the
    # same CPU and the backend server on another, instead of wherever the scheduler put them
    # (unpinned, the p50 of a contender moved between ~24 and ~38 us from run to run)
    cpus: tuple[int, int] | None = None
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def server_ns(self) -> str:
        return f"weirbench-{self.run_id}-srv"

    def client_ns(self, contender: str) -> str:
        return f"weirbench-{self.run_id}-{contender}"

    def cgroup(self, contender: str) -> Path:
        return CGROUP_ROOT / f"weirbench-{self.run_id}" / contender

    def __enter__(self) -> NetLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _build(self) -> None:
        srv = self.server_ns
        sh("ip", "netns", "add", srv)
        sh("ip", "-n", srv, "link", "set", "lo", "up")
        for ip in BACKENDS:
            sh("ip", "-n", srv, "addr", "add", f"{ip}/32", "dev", "lo")
        for i, contender in enumerate(self.contenders):
            ns = self.client_ns(contender)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            host_if, peer_if = f"wb{i}c", f"wb{i}s"
            sh(
                "ip",
                "-n",
                ns,
                "link",
                "add",
                host_if,
                "type",
                "veth",
                "peer",
                peer_if,
                "netns",
                srv,
            )
            sh("ip", "-n", ns, "addr", "add", f"10.250.{i}.1/30", "dev", host_if)
            sh("ip", "-n", srv, "addr", "add", f"10.250.{i}.2/30", "dev", peer_if)
            sh("ip", "-n", ns, "link", "set", host_if, "up")
            sh("ip", "-n", srv, "link", "set", peer_if, "up")
            for cidr in ("10.244.0.0/16", "10.96.0.0/12"):
                sh("ip", "-n", ns, "route", "add", cidr, "via", f"10.250.{i}.2")
            self.cgroup(contender).mkdir(parents=True, exist_ok=True)
        server = self._popen(
            [
                *self._pin(0),
                *("ip", "netns", "exec", srv, sys.executable, "-m", "bench.accept_server"),
                *BACKENDS,
            ]
        )
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("benchmark backend server did not start")

    def spawn(self, contender: str, argv: list[str]) -> subprocess.Popen[str]:
        """Run argv in a contender's cgroup and namespace (cgroup first: ``ip netns exec``
        remounts /sys, hiding cgroup2), through the sandbox's launcher."""
        launch = [sys.executable, "-m", "services.sandbox.launch"]
        where = ["--netns", self.client_ns(contender), "--cgroup", str(self.cgroup(contender))]
        return self._popen([*self._pin(1), *launch, *where, "--", *argv])

    def _pin(self, which: int) -> list[str]:
        return [] if self.cpus is None else ["taskset", "-c", str(self.cpus[which])]

    def _popen(self, argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill what the lab started, then remove namespaces and cgroups; never raises."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        for netns in [*map(self.client_ns, self.contenders), self.server_ns]:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        base = CGROUP_ROOT / f"weirbench-{self.run_id}"
        for cgroup in [*map(self.cgroup, self.contenders), base]:
            remove_cgroup(cgroup)


def remove_cgroup(cgroup: Path) -> None:
    """rmdir a cgroup that is gone or about to be empty; a killed process leaves it a moment
    later, so busy is retried for up to 2 s, then left (teardown never raises)."""
    for _ in range(100):
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
