"""End to end: `weir sandbox up` with the example manifests, traffic from a pod, changes through the
API, and `down` leaving nothing behind. Real everything: nats-server, the API stand-in, watcher,
identity, a datapath worker per node with eBPF socket LB, pods in namespaces.

One sandbox for the whole module (it takes seconds to build); tests run in file order and the
last one takes it down and checks the kernel's views. The finalizer tears down in any case.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.sandbox.cluster import teardown_all
from services.sandbox.podspec import is_ready
from services.sandbox.runinfo import SandboxStatus, read_status
from services.sandbox.state import FileStateStore
from tests.sandbox.conftest import needs_root
from tests.sandbox.test_lifecycle import leftovers

pytestmark = [needs_root, pytest.mark.e2e, pytest.mark.bpf]

REPO = Path(__file__).resolve().parents[2]
WEIR = [sys.executable, "-m", "services.cli.main", "sandbox"]


@dataclass
class Env:
    sid: str
    root: Path
    status: SandboxStatus

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [*WEIR, *args[:1], "--id", self.sid, "--state-root", str(self.root), *args[1:]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def probe(self, proto: str, target: str, count: int) -> tuple[int, dict[str, Any]]:
        done = self.cli(
            "exec",
            "demo/client",
            "--",
            "weir-probe",
            proto,
            target,
            "--count",
            str(count),
            "--timeout",
            "0.5",
            "-o",
            "json",
        )
        assert done.stdout, f"probe printed nothing; stderr: {done.stderr}"
        result: dict[str, Any] = json.loads(done.stdout)
        return done.returncode, result


class PodProber:
    """``weir-probe repl`` running in demo/client: probes cost only their connections."""

    def __init__(self, env: Env) -> None:
        argv = [*WEIR, "exec", "--id", env.sid, "--state-root", str(env.root), "demo/client"]
        self.proc = subprocess.Popen(
            [*argv, "--", "weir-probe", "repl"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def probe(self, proto: str, target: str, count: int, timeout: float = 0.2) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{proto} {target} {count} {timeout}\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    sid = "e" + secrets.token_hex(3)
    root = tmp_path_factory.mktemp("sandbox-state")
    more = ["--id", sid, "--state-root", str(root), "--timeout", "90"]
    try:
        up = subprocess.run(
            [*WEIR, "up", "--nodes", "2", "-f", str(REPO / "deploy" / "examples"), *more],
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
        status = read_status(root, sid)
        assert status is not None and status.ready
        yield Env(sid, root, status)
    finally:
        subprocess.run(
            [*WEIR, "down", "--id", sid, "--state-root", str(root)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        teardown_all(sid, FileStateStore(root))


async def read(core: Any, kind: str, name: str, namespace: str = "demo") -> dict[str, Any]:
    fn = getattr(core, f"read_namespaced_{kind}")
    resp = await fn(name, namespace, _preload_content=False)
    body: dict[str, Any] = json.loads(await resp.read())
    return body


async def open_core(env: Env) -> tuple[Any, Any]:
    from kubernetes_asyncio import client  # noqa: PLC0415

    from services.watcher.kube import load_api_client  # noqa: PLC0415

    apic = await load_api_client(env.status.kubeconfig)
    return apic, client.CoreV1Api(apic)


async def cluster_ip(env: Env, name: str) -> str:
    apic, core = await open_core(env)
    async with apic:
        return str((await read(core, "service", name))["spec"]["clusterIP"])


def test_status_and_pods_spread_over_both_nodes(sandbox: Env) -> None:
    done = sandbox.cli("status", "-o", "json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["alive"] and status["phase"] == "ready"
    assert [n["ip"] for n in status["nodes"]] == ["172.31.0.1", "172.31.0.3"]
    assert all(n["ready"] for n in status["nodes"])
    echo = {p["name"]: p for p in status["pods"] if p["name"].startswith("echo-")}
    assert len(echo) == 3 and all(p["phase"] == "Running" and p["ready"] for p in echo.values())
    assert {p["node"] for p in echo.values()} == {"node1", "node2"}
    for pod in echo.values():
        prefix = "10.244.1." if pod["node"] == "node1" else "10.244.2."
        assert pod["ip"].startswith(prefix)


@pytest.mark.parametrize(("proto", "port"), [("tcp", 80), ("udp", 53)])
async def test_clusterip_answers_from_every_backend_and_peer_is_the_vip(
    sandbox: Env, proto: str, port: int
) -> None:
    vip = await cluster_ip(sandbox, "echo")
    code, result = await asyncio.to_thread(sandbox.probe, proto, f"{vip}:{port}", 200)
    assert code == 0, result
    assert result["ok"] == 200 and result["failed"] == 0
    assert set(result["answers"]) == {"echo-1", "echo-2", "echo-3"}
    assert min(result["answers"].values()) >= 20  # spread, not one backend with stragglers
    assert result["peers"] == {f"{vip}:{port}": 200}


def test_exec_passes_exit_code_stdin_and_runs_in_the_pod(sandbox: Env) -> None:
    done = sandbox.cli("exec", "demo/client", "--", "sh", "-c", "cat; ip -4 -o addr; exit 7")
    # stdin is empty here (capture_output gives /dev/null-like EOF); the exit code passes through
    assert done.returncode == 7
    assert "10.244." in done.stdout
    bad = sandbox.cli("exec", "demo/nope", "--", "true")
    assert bad.returncode != 0 and "demo/nope" in bad.stderr


async def wait_ready(core: Any, names: list[str], within: float = 20.0) -> float:
    """Poll the API until every pod is Ready; the monotonic time it was first seen so."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pods = [await read(core, "pod", n) for n in names]
        if all(is_ready(p.get("status") or {}) for p in pods):
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"pods {names} not ready within {within}s")


def web_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web"}},
        "spec": {
            "containers": [
                {"name": "web", "image": "weir/echo", "ports": [{"containerPort": 9090}]}
            ]
        },
    }


async def test_new_service_reachable_within_1s_then_pod_and_service_deletes(
    sandbox: Env,
) -> None:
    apic, core = await open_core(sandbox)
    prober = await asyncio.to_thread(PodProber, sandbox)
    try:
        async with apic:
            await run_changes(sandbox, core, prober)
    finally:
        await asyncio.to_thread(prober.close)


async def poll(
    prober: PodProber, target: str, count: int, done: Any, within: float = 5.0
) -> tuple[float, dict[str, Any]]:
    """Probe until ``done(result)``; (seconds it took, last result)."""
    began = time.monotonic()
    result: dict[str, Any] = {}
    while time.monotonic() - began < within:
        result = await asyncio.to_thread(prober.probe, "tcp", target, count)
        if done(result):
            break
    return time.monotonic() - began, result


async def run_changes(sandbox: Env, core: Any, prober: PodProber) -> None:
    echo = await cluster_ip(sandbox, "echo")
    warm = await asyncio.to_thread(prober.probe, "tcp", f"{echo}:80", 3)
    assert warm["ok"] == 3, warm
    svc: Any = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8000, "targetPort": 9090}]},
    }
    await core.create_namespaced_service("demo", svc, _preload_content=False)
    for name in ("web-1", "web-2"):
        await core.create_namespaced_pod("demo", web_pod(name), _preload_content=False)
    await wait_ready(core, ["web-1", "web-2"])
    vip = await cluster_ip(sandbox, "web")
    took, seen = await poll(
        prober, f"{vip}:8000", 20, lambda r: set(r["answers"]) == {"web-1", "web-2"}
    )
    assert set(seen["answers"]) == {"web-1", "web-2"}, seen
    assert took < 1.0, f"reachable only {took:.2f}s after the pods were ready"

    await core.delete_namespaced_pod("web-2", "demo", _preload_content=False)
    took, seen = await poll(
        prober, f"{vip}:8000", 20, lambda r: r["failed"] == 0 and set(r["answers"]) == {"web-1"}
    )
    assert seen["failed"] == 0 and set(seen["answers"]) == {"web-1"}, seen
    assert took < 1.0, f"deleted pod still answering {took:.2f}s later"

    await core.delete_namespaced_service("web", "demo", _preload_content=False)
    took, seen = await poll(prober, f"{vip}:8000", 1, lambda r: r["failed"] > 0)
    assert seen["ok"] == 0 and seen["failed"] == 1, seen
    assert took < 1.0 + 0.2, f"deleted service still answering {took:.2f}s later"
    after = await asyncio.to_thread(prober.probe, "tcp", f"{echo}:80", 10)
    assert after["ok"] == 10, after  # the other service is untouched


async def test_deleted_service_is_refused(sandbox: Env) -> None:
    prober = await asyncio.to_thread(PodProber, sandbox)
    try:
        result = await asyncio.to_thread(prober.probe, "tcp", "10.96.255.254:8000", 1)
    finally:
        await asyncio.to_thread(prober.close)
    assert result["errors"] == {"ECONNREFUSED": 1}, result


async def test_replay_reproduces_every_nodes_live_maps(sandbox: Env) -> None:
    """`weir replay` over the sandbox's whole history (after the changes of the tests above)
    ends in the same service maps as each node's live, pinned eBPF maps. Backend and reverse-NAT
    ids depend on how a node batched its changes, so frontends are compared with their resolved
    backends (``render.resolved``), not by id."""
    import nats  # noqa: PLC0415

    from services.datapath.bpfmaps import BpfLBMap  # noqa: PLC0415
    from services.datapath.render import resolved  # noqa: PLC0415
    from services.ops.replay_cli import replay  # noqa: PLC0415
    from services.ops.replay_source import Window  # noqa: PLC0415

    nodes = tuple(row.name for row in sandbox.status.nodes)
    nc = await nats.connect(sandbox.status.nats_url)
    try:
        result = await replay(nc.jetstream(), window=Window(), nodes=nodes)
    finally:
        await nc.close()
    for row in sandbox.status.nodes:
        with BpfLBMap(Path(row.pin_dir) / "v1") as live:
            live_view = resolved(live.dump())
        replayed = resolved(result.model.nodes[row.name].maps.dump())
        assert replayed == live_view, row.name
        assert live_view, f"{row.name}: no services programmed"


def test_down_leaves_nothing_behind(sandbox: Env) -> None:
    pids = [p.pid for p in sandbox.status.processes]
    done = sandbox.cli("down")
    assert done.returncode == 0, done.stderr
    assert f"sandbox {sandbox.sid} removed" in done.stdout
    assert leftovers(sandbox.sid, sandbox.root) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not os.path.exists(sandbox.root / sandbox.sid)
    again = sandbox.cli("down")
    assert again.returncode == 0 and "nothing to remove" in again.stdout
