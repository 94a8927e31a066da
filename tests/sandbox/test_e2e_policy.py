"""End to end: Kubernetes NetworkPolicy enforced by identity on the sandbox's real packet path.

One sandbox for the module (built from the policy examples' namespaces plus the pods below; the
policies are applied by the tests with kubectl, in file order). Every verdict is observed as a
pod sees it — a TCP connect through the pods' veths and the tc programs the datapath workers
attached in each node's netns — and as an operator sees it: DROPPED flows with POLICY_DENIED and
the source's identity, through a plain NATS subscriber and through ``weir observe -o json``.
Traffic stays inside the sandbox's namespaces: pods, the nodes' and the fabric's netns (ipBlock
peers are the nodes' fabric addresses, 172.31.0.0/24).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from contracts.subjects import STREAM_IDENTITY, ipcache_subject
from contracts.v1 import IPCacheEntry
from services.sandbox.cluster import teardown_all
from services.sandbox.runinfo import SandboxStatus, read_status
from services.sandbox.state import FileStateStore
from tests.sandbox.conftest import needs_root

pytestmark = [needs_root, pytest.mark.e2e, pytest.mark.bpf, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "deploy" / "examples" / "policies"
WEIR = [sys.executable, "-m", "services.cli.main"]
KUBECTL = str(Path(sys.executable).parent / "kubectl")
PROBE = [sys.executable, "-m", "services.sandbox.probe"]


def _pod(ns: str, name: str, labels: dict[str, str], ports: list[int], **spec: Any) -> str:
    container: dict[str, Any] = {"name": "c", "image": "weir/echo"}
    if ports:
        container["ports"] = [{"containerPort": p} for p in ports]
    else:
        container["command"] = ["sleep", "infinity"]
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [container], **spec},
    }
    return json.dumps(obj)


PODS = "\n---\n".join(
    [
        _pod("shop", "echo", {"app": "echo"}, [8080], nodeName="node2"),
        _pod("shop", "client", {"app": "client"}, [], nodeName="node1"),
        _pod("shop", "other", {"app": "other"}, [], nodeName="node1"),
        _pod("backend", "client", {"app": "client"}, [], nodeName="node2"),
        _pod("shop", "db", {"role": "db"}, [6379, 7000], nodeName="node1"),
    ]
)

LISTENER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.recv(256); c.sendall(sys.argv[1].encode() + b"\\n"); c.close()
for p in (5978, 5979):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


@dataclass
class Env:
    sid: str
    root: Path
    status: SandboxStatus
    probers: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    ips: dict[str, str] = field(default_factory=dict)

    def netns(self, what: str) -> str:
        return f"weir-{self.sid}-{what}"

    def kubectl(self, *args: str) -> str:
        argv = [KUBECTL, "--kubeconfig", self.status.kubeconfig, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"kubectl {args}: {done.stderr}"
        return done.stdout

    def weir(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WEIR, *args], capture_output=True, text=True, timeout=60, check=False
        )

    def probe(self, pod: str, target: str, timeout: float = 0.3) -> dict[str, Any]:
        """One TCP connect + echo from inside ``pod`` (a `weir-probe repl` kept per pod)."""
        proc = self.probers.get(pod)
        if proc is None:
            argv = [*WEIR, "sandbox", "exec", "--id", self.sid, "--state-root", str(self.root)]
            proc = subprocess.Popen(
                [*argv, pod, "--", "weir-probe", "repl"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            self.probers[pod] = proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"tcp {self._target(target)} 1 {timeout}\n")
        proc.stdin.flush()
        result: dict[str, Any] = json.loads(proc.stdout.readline())
        return result

    def probe_from_netns(self, netns: str, target: str) -> dict[str, Any]:
        argv = ["ip", "netns", "exec", netns, *PROBE, "tcp", self._target(target)]
        argv += ["--count", "1", "--timeout", "0.3", "-o", "json"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def _target(self, target: str) -> str:
        host, _, port = target.rpartition(":")
        return f"{self.ips.get(host, host)}:{port}"


def ok(result: dict[str, Any]) -> bool:
    return bool(result["ok"] == 1)


def dropped(result: dict[str, Any]) -> bool:
    """Denied by policy: the SYN vanished (timeout), not refused (that would be a RST)."""
    return bool(result["failed"] == 1 and result["errors"] == {"timeout": 1})


def settle(check: Callable[[], bool], within: float = 3.0) -> float:
    """Retry ``check`` until it holds; seconds it took. Fails after ``within``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within}s: {check}")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    sid = "p" + secrets.token_hex(3)
    root = tmp_path_factory.mktemp("policy-sandbox")
    pods = root / "pods.yaml"
    pods.write_text(PODS)
    listeners: list[subprocess.Popen[str]] = []
    e: Env | None = None
    try:
        argv = [*WEIR, "sandbox", "up", "--nodes", "2", "--id", sid, "--state-root", str(root)]
        argv += ["--timeout", "90", "-f", str(POLICIES / "00-namespaces.yaml"), "-f", str(pods)]
        up = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
        status = read_status(root, sid)
        assert status is not None and status.ready
        e = Env(sid, root, status)
        listing = json.loads(e.kubectl("get", "pods", "-A", "-o", "json"))
        for item in listing["items"]:
            meta = item["metadata"]
            e.ips[f"{meta['namespace']}/{meta['name']}"] = item["status"]["podIP"]
        for node, ip in (("node1", "172.31.0.1"), ("node2", "172.31.0.3")):
            serve = [sys.executable, "-c", LISTENER, node]
            proc = subprocess.Popen(
                ["ip", "netns", "exec", e.netns(f"node-{node}"), *serve],
                stdout=subprocess.PIPE,
                text=True,
            )
            listeners.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", ip
        yield e
    finally:
        for proc in listeners:
            proc.kill()
            proc.wait(timeout=10)
        if e is not None:
            for prober in e.probers.values():
                if prober.stdin is not None:
                    prober.stdin.close()
                prober.kill()
                prober.wait(timeout=10)
        subprocess.run(
            [*WEIR, "sandbox", "down", "--id", sid, "--state-root", str(root)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        teardown_all(sid, FileStateStore(root))


async def identity_of(env: Env, pod: str) -> int:
    nc = await nats.connect(env.status.nats_url)
    try:
        msg = await nc.jetstream().get_last_msg(STREAM_IDENTITY, ipcache_subject(env.ips[pod]))
        entry = IPCacheEntry.model_validate_json(msg.data or b"")
        assert entry.identity is not None
        return entry.identity
    finally:
        await nc.close()


def observe(env: Env, *args: str) -> list[dict[str, Any]]:
    done = env.weir("observe", "--nats", env.status.nats_url, "-o", "json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_unselected_pods_allow_everything(env: Env) -> None:
    for src in ("shop/client", "shop/other", "backend/client"):
        result = env.probe(src, "shop/echo:8080")
        assert ok(result), (src, result)
        assert result["answers"] == {"echo": 1}  # the reply came back through the veths
    assert ok(env.probe("shop/db", "172.31.0.3:5978"))  # db's egress is not selected yet


async def test_default_deny_ingress_drops_with_policy_denied_flows(env: Env) -> None:
    nc = await nats.connect(env.status.nats_url)
    seen: list[dict[str, Any]] = []

    async def on_flow(msg: Any) -> None:
        seen.append(json.loads(msg.data))

    sub = await nc.subscribe("weir.v1.flows.*.DROPPED", cb=on_flow)  # plain core NATS
    try:
        env.kubectl("apply", "-f", str(POLICIES / "default-deny-ingress.yaml"))
        await asyncio.to_thread(settle, lambda: dropped(env.probe("shop/client", "shop/echo:8080")))
        assert dropped(env.probe("backend/client", "shop/echo:8080"))
        assert dropped(env.probe("shop/echo", "shop/db:6379"))  # db is in shop too
        for _ in range(100):
            if any(f["source"].get("pod_name") == "client" for f in seen):
                break
            await asyncio.sleep(0.02)
    finally:
        await sub.unsubscribe()
        await nc.close()
    client_id = await identity_of(env, "shop/client")
    mine = [f for f in seen if f["source"].get("namespace") == "shop"]
    mine = [f for f in mine if f["source"].get("pod_name") == "client"]
    assert mine, seen
    flow = mine[-1]
    assert flow["drop_reason_desc"] == "POLICY_DENIED"
    assert flow["source"]["identity"] == client_id
    assert flow["destination"]["pod_name"] == "echo"
    assert flow["node_name"] == "node2" and flow["traffic_direction"] == "INGRESS"
    assert flow["trace_observation_point"] == "TO_ENDPOINT"
    assert flow["l4"]["tcp"]["destination_port"] == 8080 and flow["l4"]["tcp"]["flags"]["syn"]
    # the same through `weir observe`, filtered on the server by verdict and on the client
    flows = observe(env, "--since", "1m", "--verdict", "DROPPED", "--to-pod", "shop/echo")
    sources = {(f["source"]["namespace"], f["source"]["pod_name"]) for f in flows}
    assert {("shop", "client"), ("backend", "client")} <= sources
    assert all(f["drop_reason_desc"] == "POLICY_DENIED" for f in flows)
    assert {f["source"]["identity"] for f in flows if f["source"]["namespace"] == "shop"} == {
        client_id
    }
    line = env.weir("observe", "--nats", env.status.nats_url, "--last", "1", "--verdict",
                    "DROPPED", "--from-pod", "backend/client").stdout  # fmt: skip
    assert "backend/client:" in line and "<> shop/echo:8080" in line
    assert "Policy denied DROPPED" in line


def test_allow_by_namespace_and_pod_labels(env: Env) -> None:
    env.kubectl("apply", "-f", str(POLICIES / "allow-client-from-frontend.yaml"))
    settle(lambda: ok(env.probe("shop/client", "shop/echo:8080")))
    assert env.probe("shop/client", "shop/echo:8080")["answers"] == {"echo": 1}  # replies pass
    assert dropped(env.probe("backend/client", "shop/echo:8080"))  # right pod, wrong namespace
    assert dropped(env.probe("shop/other", "shop/echo:8080"))  # right namespace, wrong pod
    forwarded = observe(env, "--last", "3", "--verdict", "FORWARDED", "--from-pod", "shop/client",
                        "--to-pod", "shop/echo")  # fmt: skip
    points = {f["trace_observation_point"] for f in forwarded}
    assert points <= {"FROM_ENDPOINT", "TO_ENDPOINT"} and "TO_ENDPOINT" in points


async def test_label_change_changes_identity_and_access_within_1s(env: Env) -> None:
    before = await identity_of(env, "shop/other")
    env.kubectl("label", "pod", "-n", "shop", "other", "app=client", "--overwrite")
    took = settle(lambda: ok(env.probe("shop/other", "shop/echo:8080", 0.1)), within=3)
    assert took < 1.0
    after = await identity_of(env, "shop/other")
    assert after != before and after == await identity_of(env, "shop/client")
    env.kubectl("label", "pod", "-n", "shop", "other", "app=other", "--overwrite")
    took = settle(lambda: dropped(env.probe("shop/other", "shop/echo:8080", 0.1)), within=3)
    assert took < 1.0
    assert await identity_of(env, "shop/other") == before


def test_kubernetes_docs_test_network_policy(env: Env) -> None:
    env.kubectl("apply", "-f", str(POLICIES / "test-network-policy.yaml"))
    # egress: only TCP 5978 inside 172.31.0.0/24 but not 172.31.0.0/31 (node1's fabric link)
    settle(lambda: dropped(env.probe("shop/db", "172.31.0.3:5979")))
    assert env.probe("shop/db", "172.31.0.3:5978")["answers"] == {"node2": 1}
    assert dropped(env.probe("shop/db", "172.31.0.1:5978"))  # in the except
    assert dropped(env.probe("shop/db", "shop/echo:8080"))  # ipBlock never selects pods
    # ingress on 6379: namespaceSelector team=backend, podSelector role=frontend, the ipBlock
    assert ok(env.probe("backend/client", "shop/db:6379"))
    assert dropped(env.probe("backend/client", "shop/db:7000"))  # port not listed
    assert dropped(env.probe("shop/client", "shop/db:6379"))  # shop, but not role=frontend
    env.kubectl("label", "pod", "-n", "shop", "client", "role=frontend")
    settle(lambda: ok(env.probe("shop/client", "shop/db:6379")))
    assert ok(env.probe_from_netns(env.netns("node-node2"), "shop/db:6379"))  # 172.31.0.3
    assert dropped(env.probe_from_netns(env.netns("fabric"), "shop/db:6379"))  # 172.31.0.0
    # and nothing else changed for the echo pod
    assert ok(env.probe("shop/client", "shop/echo:8080"))
    assert dropped(env.probe("backend/client", "shop/echo:8080"))
