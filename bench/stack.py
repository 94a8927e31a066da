"""A Weir control plane for benchmarks: nats-server, the API stand-in, the watcher, N workers.

The programming-latency and throughput benchmarks measure the product path, so every component
runs as its own process, started exactly as an operator would (``weir apiserver``, ``weir
watcher``, ``weir datapath --maps bpf``): a benchmark in one process would share one GIL and
measure the wrong thing. Workers can be added while the stack runs, so one loaded API server and
stream serve the 1-, 5- and 10-node measurements in turn.

Everything carries the run id (``weirbench-<id>``): the store directory, each worker's pin
directory under /sys/fs/bpf and cgroup under /sys/fs/cgroup/unified. ``close()`` kills the
processes (each in its own session), detaches and unpins the workers' programs and maps and
removes the cgroups; ``with Stack(...)`` runs it also on failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench.netlab import CGROUP_ROOT, remove_cgroup
from services.common.localhost import free_port, nats_server_binary
from services.datapath.loader import DEFAULT_VERSION, remove_pins

BPFFS = Path("/sys/fs/bpf")
WEIR = [sys.executable, "-m", "bench.weircmd"]


def wait_tcp(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class Worker:
    node: str
    proc: subprocess.Popen[bytes]
    pin_dir: Path  # the worker's --pin-dir; maps live in pin_dir/<version>
    cgroup: Path

    @property
    def maps_dir(self) -> Path:
        return self.pin_dir / DEFAULT_VERSION

    def rss_mib(self) -> float:
        """Resident memory of the worker process (VmRSS), MiB."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return float("nan")


@dataclass
class Stack:
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    log_level: str = "WARNING"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    named: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    nats_url: str = ""
    kubeconfig: Path | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"weirbench-{self.run_id}-"))
        self.cgroup_base = CGROUP_ROOT / f"weirbench-{self.run_id}"
        self.pin_base = BPFFS / f"weirbench-{self.run_id}"

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        env = {**os.environ, "WEIR_LOG_LEVEL": self.log_level}
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        log.close()
        self.procs.append(proc)
        self.named[name] = proc
        return proc

    def stop(self, name: str) -> None:
        """Stop one process started under ``name`` (SIGTERM, then SIGKILL after 5 s)."""
        proc = self.named.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _wait_listening(
        self, name: str, port: int, proc: subprocess.Popen[bytes], t: float
    ) -> None:
        try:
            wait_tcp(port, proc, name, timeout=t)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log:\n{self.log_tail(name)}") from None

    def start_nats(self) -> str:
        port = free_port()
        store = self.workdir / "jetstream"
        argv = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
        proc = self._spawn("nats", argv)
        self._wait_listening("nats", port, proc, 30.0)
        self.nats_url = f"nats://127.0.0.1:{port}"
        return self.nats_url

    def start_apiserver(self, manifests: list[Path], retain_events: int = 100_000) -> Path:
        port = free_port()
        self.kubeconfig = self.workdir / "kubeconfig"
        argv = [
            *WEIR,
            "apiserver",
            "--listen",
            f"127.0.0.1:{port}",
            "--kubeconfig-out",
            str(self.kubeconfig),
            "--retain-events",
            str(retain_events),
            "--service-cidr",
            "10.96.0.0/12",
        ]
        for m in manifests:
            argv += ["--manifests", str(m)]
        proc = self._spawn("apiserver", argv)
        self._wait_listening("apiserver", port, proc, 300.0)
        return self.kubeconfig

    def start_watcher(self) -> None:
        assert self.kubeconfig is not None, "start_apiserver first"
        argv = [*WEIR, "watcher", "--nats", self.nats_url, "--kubeconfig", str(self.kubeconfig)]
        # One replica: a long lease, so a list of 10k objects that holds the event loop for
        # seconds on a loaded machine cannot cost the watcher its leadership mid-publish.
        argv += ["--lease-ttl", "30", "--lease-renew", "2"]
        self._spawn("watcher", [*argv, "--id", f"bench-{self.run_id}"])

    def add_worker(self) -> Worker:
        node = f"bench-{self.run_id}-n{len(self.workers)}"
        cgroup = self.cgroup_base / node
        cgroup.mkdir(parents=True, exist_ok=True)
        pin_dir = self.pin_base / node
        argv = [
            *WEIR,
            "datapath",
            "--node",
            node,
            "--nats",
            self.nats_url,
            "--maps",
            "bpf",
            "--cgroup",
            str(cgroup),
            "--pin-dir",
            str(pin_dir),
        ]
        worker = Worker(node, self._spawn(node, argv), pin_dir, cgroup)
        self.workers.append(worker)
        return worker

    def check_alive(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is not None:
                raise RuntimeError(
                    f"datapath worker {worker.node} exited ({worker.proc.returncode}):\n"
                    + self.log_tail(worker.node)
                )

    def close(self) -> None:
        """Stop everything and remove pins, cgroups and the store; never raises."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        for worker in self.workers:
            try:
                remove_pins(worker.maps_dir)
            except OSError as exc:
                print(f"[stack] cannot remove pins of {worker.node}: {exc}", file=sys.stderr)
        shutil.rmtree(self.pin_base, ignore_errors=True)
        for cgroup in [*(w.cgroup for w in self.workers), self.cgroup_base]:
            remove_cgroup(cgroup)
        self.workers.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
