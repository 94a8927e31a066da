"""Table tests for the orchestration's pure parts: pod specs, scheduling, convergence, backoff,
status.json round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.sandbox.children import BACKOFF_MAX, next_backoff
from services.sandbox.convergence import lagging
from services.sandbox.podspec import PodSpecError, choose_node, pod_workload, status_summary
from services.sandbox.runinfo import NodeRow, ProcessInfo, SandboxStatus, read_status, write_status


def pod(containers: Any, node: str = "", phase: str = "") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "demo", "name": "p"},
        "spec": {"containers": containers, "nodeName": node},
        "status": {"phase": phase},
    }


def test_workload_ports_dedup_and_command_plus_args() -> None:
    w = pod_workload(
        pod(
            [
                {
                    "ports": [{"containerPort": 80}, {"containerPort": 80, "protocol": "TCP"}],
                    "command": ["sh"],
                    "args": ["-c", "x"],
                },
                {"ports": [{"containerPort": 53, "protocol": "UDP"}], "command": ["ignored"]},
            ]
        )
    )
    assert w.ports == ((80, "TCP"), (53, "UDP"))
    assert w.command == ("sh", "-c", "x")


@pytest.mark.parametrize(
    ("containers", "field"),
    [
        ([], "spec.containers"),
        ([{"ports": [{"containerPort": 0}]}], "spec.containers[0].ports[0].containerPort"),
        ([{"ports": [{"containerPort": 80, "protocol": "SCTP"}]}], "ports[0].protocol"),
        ([{"command": "sleep 1"}], "spec.containers[0].command"),
        ([{"args": ["x"]}], "spec.containers[0].command"),
        ([{}, {"ports": "80"}], "spec.containers[1].ports"),
    ],
)
def test_workload_errors_name_pod_and_field(containers: Any, field: str) -> None:
    with pytest.raises(PodSpecError, match="pod demo/p") as err:
        pod_workload(pod(containers))
    assert field in str(err.value)


def test_choose_node_fewest_non_terminal_pods_ties_to_first() -> None:
    nodes = ["a", "b", "c"]
    assert choose_node(nodes, []) == "a"
    pods = [pod([], "a"), pod([], "b"), pod([], "a"), pod([], "c", "Succeeded")]
    assert choose_node(nodes, pods) == "c"
    assert choose_node(nodes, [*pods, pod([], "c")]) == "b"
    with pytest.raises(PodSpecError):
        choose_node([], [])


def test_status_summary_ignores_timestamps() -> None:
    a = {
        "phase": "Running",
        "podIP": "10.0.0.2",
        "hostIP": "1.1.1.1",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "x"}],
    }
    b = {**a, "startTime": "y", "conditions": [{"type": "Ready", "status": "True"}]}
    assert status_summary(a) == status_summary(b) == ("Running", "10.0.0.2", "1.1.1.1", True)
    assert status_summary(None) == ("", "", "", False)


@pytest.mark.parametrize(
    ("published", "applied", "expected"),
    [
        ({"s1": ("5", 10), "s2": ("7", 12)}, {"n1": 12, "n2": 12}, []),
        (
            {"s1": ("5", 10), "s2": ("7", 12)},
            {"n1": 11, "n2": 12},
            ["datapath n1: applied 11 < 12"],
        ),
        ({"s1": ("4", 10), "s2": ("7", 12)}, {"n1": 99}, ["bus: s1 at 5"]),
        ({"s1": ("5", 10)}, {"n1": 99}, ["bus: s2 at 7"]),
        ({"s1": ("5", 10), "s2": ("7", 12)}, {"n1": None}, ["datapath n1: no status yet"]),
    ],
)
def test_lagging(published: Any, applied: Any, expected: list[str]) -> None:
    assert lagging({"s1": "5", "s2": "7"}, published, applied) == expected


def test_backoff_doubles_caps_and_resets_after_a_stable_run() -> None:
    delays = [0.5]
    for _ in range(8):
        delays.append(next_backoff(delays[-1], ran_for=1))
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and delays[-1] == BACKOFF_MAX
    assert next_backoff(BACKOFF_MAX, ran_for=60) == 0.5


def test_status_json_round_trip(tmp_path: Path) -> None:
    st = SandboxStatus(id="abc", supervisor_pid=42, phase="ready", nats_url="nats://x")
    st.nodes.append(NodeRow("node1", "172.31.0.1", "10.244.1.0/24", "datapath-node1", True))
    st.processes.append(ProcessInfo("datapath-node1", 7, "http://127.0.0.1:1", "/l", 2, True, True))
    st.pods.append({"namespace": "demo", "name": "p", "ready": True})
    write_status(tmp_path, st)
    back = read_status(tmp_path, "abc")
    assert back == st and back.ready
    assert back.process("datapath-node1") == st.processes[0]
    (tmp_path / "abc" / "status.json").write_text('{"id": "abc", "supervisor_pid": 1, "x": 2}')
    with pytest.raises(ValueError, match=r"status\.json"):
        read_status(tmp_path, "abc")
