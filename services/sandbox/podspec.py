"""The kubelet's pure half: what a Pod object asks for, where it goes, and what status to report.

The sandbox kubelet (``kubelet.py``) is a loop of "read a Pod, decide, act, report". Every
decision lives here, on raw Kubernetes dicts, so it can be table-tested without an API server,
a namespace or a process:

* :func:`pod_workload` reads the container ports (``containerPort`` + ``protocol``) and the
  command (``command`` + ``args``, like a container runtime joins ENTRYPOINT and CMD) of the
  pod's first container; anything malformed is a :class:`PodSpecError` naming the pod and the
  field path, which the kubelet reports as phase ``Failed`` instead of crashing;
* :func:`choose_node` schedules by fewest pods (ties: node order), like a minimal scheduler;
* :func:`running_status` / :func:`exited_status` / :func:`failed_status` build the status body
  the kubelet PUTs to ``pods/{name}/status``; :func:`status_summary` is the part that matters for
  deciding whether the API is already up to date (timestamps do not);
* :func:`node_object` is the Node a virtual node registers (InternalIP, podCIDR, hostname label).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = Mapping[str, Any]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_PROTOCOLS = ("TCP", "UDP")


class PodSpecError(ValueError):
    """A pod spec the sandbox cannot run; the message names the pod and the field."""


@dataclass(frozen=True)
class Workload:
    ports: tuple[tuple[int, str], ...]
    command: tuple[str, ...]  # empty: the built-in echo server on every port


def pod_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def pod_uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def pod_node(obj: Obj) -> str:
    return str((obj.get("spec") or {}).get("nodeName") or "")


def pod_phase(obj: Obj) -> str:
    return str((obj.get("status") or {}).get("phase") or "")


def _strings(value: Any, pod: str, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PodSpecError(f"pod {pod}: {path}: must be a list of strings")
    return list(value)


def pod_workload(obj: Obj) -> Workload:
    """Ports of every container, and the first container's command + args."""
    pod = pod_key(obj)
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise PodSpecError(f"pod {pod}: spec: missing or not an object")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise PodSpecError(f"pod {pod}: spec.containers: at least one container is required")
    ports: list[tuple[int, str]] = []
    command: list[str] = []
    for i, container in enumerate(containers):
        if not isinstance(container, Mapping):
            raise PodSpecError(f"pod {pod}: spec.containers[{i}]: not an object")
        raw_ports = container.get("ports") or []
        if not isinstance(raw_ports, list):
            raise PodSpecError(f"pod {pod}: spec.containers[{i}].ports: not a list")
        for j, port in enumerate(raw_ports):
            path = f"spec.containers[{i}].ports[{j}]"
            if not isinstance(port, Mapping):
                raise PodSpecError(f"pod {pod}: {path}: not an object")
            number = port.get("containerPort")
            if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
                raise PodSpecError(f"pod {pod}: {path}.containerPort: {number!r} is not 1-65535")
            protocol = port.get("protocol") or "TCP"
            if protocol not in _PROTOCOLS:
                raise PodSpecError(f"pod {pod}: {path}.protocol: {protocol!r} is not TCP or UDP")
            if (number, protocol) not in ports:
                ports.append((number, protocol))
        if i == 0:
            cmd = _strings(container.get("command"), pod, f"spec.containers[{i}].command")
            args = _strings(container.get("args"), pod, f"spec.containers[{i}].args")
            if args and not cmd:
                raise PodSpecError(
                    f"pod {pod}: spec.containers[{i}].command: args without a command "
                    "(the sandbox has no image ENTRYPOINT to prepend them to)"
                )
            command = cmd + args
    return Workload(tuple(ports), tuple(command))


def choose_node(nodes: Sequence[str], pods: Iterable[Obj]) -> str:
    """The node with the fewest non-terminal pods; ties go to the earlier node."""
    if not nodes:
        raise PodSpecError("no nodes to schedule on")
    load = dict.fromkeys(nodes, 0)
    for pod in pods:
        node = pod_node(pod)
        if node in load and pod_phase(pod) not in TERMINAL_PHASES:
            load[node] += 1
    return min(nodes, key=lambda n: (load[n], nodes.index(n)))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(ready: bool, at: str) -> list[dict[str, str]]:
    value = "True" if ready else "False"
    out = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": at},
        {"type": "Initialized", "status": "True", "lastTransitionTime": at},
        {"type": "ContainersReady", "status": value, "lastTransitionTime": at},
        {"type": "Ready", "status": value, "lastTransitionTime": at},
    ]
    return out


def _container(obj: Obj) -> tuple[str, str]:
    """(name, image) of the first container (typed clients require both in a status)."""
    containers = (obj.get("spec") or {}).get("containers") or [{}]
    first = containers[0] if isinstance(containers[0], Mapping) else {}
    return str(first.get("name") or "main"), str(first.get("image") or "weir/sandbox")


def running_status(obj: Obj, pod_ip: str, host_ip: str, started: str) -> dict[str, Any]:
    container, image = _container(obj)
    return {
        "phase": "Running",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": started,
        "conditions": _conditions(True, started),
        "containerStatuses": [
            {
                "name": container,
                "image": image,
                "imageID": f"weir-sandbox://{image}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            }
        ],
    }


def exited_status(
    obj: Obj, pod_ip: str, host_ip: str, started: str, exit_code: int
) -> dict[str, Any]:
    """Phase Succeeded (exit 0) or Failed; a negative code is the killing signal."""
    at = now()
    terminated: dict[str, Any] = {"exitCode": exit_code, "startedAt": started, "finishedAt": at}
    if exit_code < 0:
        terminated["exitCode"] = 128 - exit_code
        terminated["signal"] = -exit_code
    terminated["reason"] = "Completed" if exit_code == 0 else "Error"
    status = running_status(obj, pod_ip, host_ip, started)
    status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
    status["conditions"] = _conditions(False, at)
    status["containerStatuses"][0].update(
        ready=False, started=False, state={"terminated": terminated}
    )
    return status


def failed_status(reason: str, message: str, host_ip: str | None = None) -> dict[str, Any]:
    """A pod that could not be started at all (bad spec, no address left, ...)."""
    status: dict[str, Any] = {
        "phase": "Failed",
        "reason": reason,
        "message": message,
        "conditions": _conditions(False, now()),
    }
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    return status


def is_ready(status: Obj) -> bool:
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def status_summary(status: Obj | None) -> tuple[str, str, str, bool]:
    """(phase, podIP, hostIP, ready): equal summaries need no status write."""
    status = status or {}
    return (
        str(status.get("phase") or ""),
        str(status.get("podIP") or ""),
        str(status.get("hostIP") or ""),
        is_ready(status),
    )


def node_object(name: str, ip: str, pod_cidr: str) -> dict[str, Any]:
    """The Node a virtual node registers: InternalIP, podCIDR(s), hostname label, Ready."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "weir.dev/sandbox-node": "true",
            },
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}
            ],
        },
    }
