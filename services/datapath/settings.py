"""The datapath worker's settings, apart from the worker so reading them imports no bus code.

Why a module of its own: ``weir datapath`` validates its options first and then starts the
loader child (bcc compile, about a CPU-second on its own core) *before* it imports the worker
(nats-py, the contracts, the model: a few hundred milliseconds of CPU), so the compile and the
imports overlap (issue 6: the cold sync is timed from spawn). Building the settings must
therefore not import the worker.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from services.common.settings import WeirSettings


class DatapathSettings(WeirSettings):
    node_name: str
    cgroup: str = ""
    pin_dir: str = ""  # empty: the loader's default (/sys/fs/bpf/weir/<node>)
    maps: Literal["bpf", "fake"] = "bpf"
    netns: str = ""  # the node's netns (pods' host-side veths) for the policy loop; "": ours
    policy: bool = True  # run the NetworkPolicy loop and publish flows (policyworker)
    batch: int = 512  # the batch of a worker that keeps up (the latency of single changes)
    backlog_batch: int = 2048  # the batch while the feed holds more than ``batch`` (a backlog)
    status_interval: float = 0.05  # at most one NodeStatus per interval (the last one wins)
    fetch_timeout: float = 0.5
    retry_interval: float = 1.0
    service_cidrs: tuple[str, ...] = ("10.96.0.0/12",)  # hook (datapath correctness): loader

    @field_validator("node_name")
    @classmethod
    def _node(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("node_name: required (the Kubernetes node this worker serves)")
        return v.strip()
