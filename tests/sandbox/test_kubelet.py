"""The sandbox kubelet against the real API stand-in (over HTTP, kubernetes-asyncio), with the fake
pod runtime: scheduling, Node registration, status reporting, exits, deletes and bad specs."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from services.apiserver.server import ApiServerConfig, start_apiserver
from services.sandbox.kubelet import Kubelet
from services.sandbox.podruntime import FakeRuntime, NodeInfo, wait_pid_exit
from tests.conftest import eventually

NODES = [
    NodeInfo("node1", "172.31.0.1", "10.244.1.0/24"),
    NodeInfo("node2", "172.31.0.3", "10.244.2.0/24"),
]


def pod(name: str, *, node: str | None = None, command: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "c",
        "image": "x",
        "ports": [
            {"containerPort": 8080, "protocol": "TCP"},
            {"containerPort": 53, "protocol": "UDP"},
        ],
    }
    if command:
        container["command"] = command
    spec: dict[str, Any] = {"containers": [container]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": spec,
    }


class Env:
    def __init__(self, core: Any, runtime: FakeRuntime, kubelet: Kubelet) -> None:
        self.core, self.runtime, self.kubelet = core, runtime, kubelet

    async def status(self, name: str) -> dict[str, Any]:
        resp = await self.core.read_namespaced_pod(name, "demo", _preload_content=False)
        body: dict[str, Any] = await resp.json()
        return body


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    server = await start_apiserver(
        ApiServerConfig(port=0, kubeconfig_out=tmp_path / "kubeconfig", bookmark_interval=0.2)
    )
    conf = client.Configuration()
    await config.load_kube_config(
        config_file=str(tmp_path / "kubeconfig"), client_configuration=conf
    )
    api = client.ApiClient(configuration=conf)
    core: Any = client.CoreV1Api(api)
    await core.create_namespace({"metadata": {"name": "demo"}})
    runtime = FakeRuntime(NODES)
    kubelet = Kubelet(api, runtime)
    task = asyncio.create_task(kubelet.run())
    try:
        await asyncio.wait_for(kubelet.pods.synced.wait(), 5)
        yield Env(core, runtime, kubelet)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()
        await server.stop()


async def test_registers_nodes_with_ip_cidr_and_hostname_label(env: Env) -> None:
    resp = await env.core.list_node(_preload_content=False)
    nodes = {n["metadata"]["name"]: n for n in (await resp.json())["items"]}
    assert sorted(nodes) == ["node1", "node2"]
    n2 = nodes["node2"]
    assert n2["spec"]["podCIDR"] == "10.244.2.0/24"
    assert n2["spec"]["podCIDRs"] == ["10.244.2.0/24"]
    assert {"type": "InternalIP", "address": "172.31.0.3"} in n2["status"]["addresses"]
    assert n2["metadata"]["labels"]["kubernetes.io/hostname"] == "node2"


async def test_schedules_spreads_starts_and_reports_running(env: Env) -> None:
    for i in range(4):
        await env.core.create_namespaced_pod("demo", pod(f"p{i}"))
    await eventually(lambda: len(env.runtime.pods) == 4, within=5)
    nodes = sorted(node for node, _, _ in env.runtime.pods.values())
    assert nodes == ["node1", "node1", "node2", "node2"]
    node, workload, ip = env.runtime.pods["demo/p0"]
    assert workload.ports == ((8080, "TCP"), (53, "UDP"))
    assert workload.command == ()

    async def running() -> dict[str, Any]:
        body = await env.status("p0")
        return body

    for _ in range(100):
        body = await running()
        if body["status"].get("phase") == "Running":
            break
        await asyncio.sleep(0.05)
    status = body["status"]
    assert body["spec"]["nodeName"] == node
    assert status["phase"] == "Running"
    assert status["podIP"] == ip and status["podIPs"] == [{"ip": ip}]
    assert status["hostIP"] == {"node1": "172.31.0.1", "node2": "172.31.0.3"}[node]
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    assert env.kubelet.not_ready_pods() == [] or "demo/p0" not in env.kubelet.not_ready_pods()


async def test_pinned_node_and_command_with_args(env: Env) -> None:
    body = pod("job", node="node2", command=["sh", "-c"])
    body["spec"]["containers"][0]["args"] = ["exit 3"]
    await env.core.create_namespaced_pod("demo", body)
    await eventually(lambda: "demo/job" in env.runtime.pods, within=5)
    node, workload, _ = env.runtime.pods["demo/job"]
    assert node == "node2"
    assert workload.command == ("sh", "-c", "exit 3")


async def test_exit_codes_become_succeeded_and_failed(env: Env) -> None:
    await env.core.create_namespaced_pod("demo", pod("ok", node="node1"))
    await env.core.create_namespaced_pod("demo", pod("bad", node="node1"))
    await eventually(lambda: {"demo/ok", "demo/bad"} <= set(env.runtime.pods), within=5)
    env.runtime.exit("demo/ok", 0)
    env.runtime.exit("demo/bad", 2)
    phases: dict[str, str] = {}
    for _ in range(100):
        phases = {n: (await env.status(n))["status"].get("phase", "") for n in ("ok", "bad")}
        if phases == {"ok": "Succeeded", "bad": "Failed"}:
            break
        await asyncio.sleep(0.05)
    assert phases == {"ok": "Succeeded", "bad": "Failed"}
    bad = (await env.status("bad"))["status"]
    assert bad["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2


async def test_delete_stops_the_pod(env: Env) -> None:
    await env.core.create_namespaced_pod("demo", pod("gone", node="node1"))
    await eventually(lambda: "demo/gone" in env.runtime.pods, within=5)
    await env.core.delete_namespaced_pod("gone", "demo")
    await eventually(lambda: "demo/gone" in env.runtime.stopped, within=5)
    assert "demo/gone" not in env.runtime.pods


async def test_bad_spec_is_failed_with_field_path_and_loop_goes_on(env: Env) -> None:
    body = pod("argsonly", node="node1")
    body["spec"]["containers"][0]["args"] = ["x"]
    await env.core.create_namespaced_pod("demo", body)
    env.runtime.fail_with["boom"] = RuntimeError("podCIDR exhausted")
    await env.core.create_namespaced_pod("demo", pod("boom", node="node2"))
    await env.core.create_namespaced_pod("demo", pod("fine", node="node2"))
    status: dict[str, Any] = {}
    for _ in range(100):
        status = (await env.status("argsonly"))["status"]
        if status.get("phase") == "Failed":
            break
        await asyncio.sleep(0.05)
    assert status["phase"] == "Failed"
    assert "spec.containers[0].command" in status["message"]
    assert "demo/argsonly" in status["message"]
    boom: dict[str, Any] = {}
    for _ in range(100):
        boom = (await env.status("boom"))["status"]
        if boom.get("phase") == "Failed":
            break
        await asyncio.sleep(0.05)
    assert boom["reason"] == "StartError" and "podCIDR exhausted" in boom["message"]
    await eventually(lambda: "demo/fine" in env.runtime.pods, within=5)
    assert "demo/argsonly" in env.kubelet.not_ready_pods()


async def test_wait_pid_exit_reads_code_and_signal() -> None:
    # Popen like procs.spawn (asyncio's own child watcher would reap the child itself)
    proc = subprocess.Popen(["sh", "-c", "exit 7"])  # noqa: ASYNC220
    assert await asyncio.wait_for(wait_pid_exit(proc.pid), 5) == 7
    assert proc.wait(timeout=5) == 7  # not reaped by the waiter (WNOWAIT): the owner still can
    proc = subprocess.Popen(["sleep", "30"])  # noqa: ASYNC220
    waiter = asyncio.create_task(wait_pid_exit(proc.pid))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    proc.kill()
    assert await asyncio.wait_for(waiter, 5) == -9
    proc.wait(timeout=5)
    assert await wait_pid_exit(proc.pid) == -1  # reaped: unknown, not a hang
