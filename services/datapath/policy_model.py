"""Inputs and provenance records of the NetworkPolicy resolver (pure data).

Why this shape: the resolver (``services.datapath.policy``) is a pure function, so everything it
reads is spelled out here as small frozen records the worker builds from bus state — policies
with their namespace and name (the contract payload alone carries neither), the pods of this
node with their interface and endpoint id, every pod of the cluster with its identity, IPs and
named container ports (egress named ports resolve against *peer* pods) — and everything it
reports back besides the map state: :class:`PolicyIssue` for bad input (naming the object and
the field, the resolution goes on without it) and :class:`RuleRef` saying which rule of which
policy produced a map entry, for ``explain``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from contracts.v1.networkpolicy import NetworkPolicy
from contracts.v1.pod import Pod
from services.datapath.policymap import Direction

PROTO_NUMBERS: Final = {"TCP": 6, "UDP": 17, "SCTP": 132}


@dataclass(frozen=True, slots=True, order=True)
class NamedPort:
    """One container port; ``name`` None when the port is unnamed."""

    name: str | None
    port: int
    protocol: str = "TCP"


def container_ports(pod: Pod) -> tuple[NamedPort, ...]:
    """The container ports of a contract Pod, sorted."""
    return tuple(sorted(NamedPort(p.name, p.port, p.protocol) for p in pod.container_ports))


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """A NetworkPolicy with the namespace it lives in (its implicit peer namespace)."""

    namespace: str
    name: str
    spec: NetworkPolicy

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class LocalEndpoint:
    """A pod on this node whose traffic the datapath enforces.

    ``labels`` are the pod's own Kubernetes labels: a policy's ``podSelector`` selects the pods it
    applies to by them (Kubernetes semantics; peers are matched by identity labels)."""

    namespace: str
    name: str
    ifindex: int  # host-side veth in the node's network namespace
    endpoint_id: int
    identity: int
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[NamedPort, ...] = ()
    ips: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ClusterPod:
    """Any pod of the cluster (local ones included): ipcache entries and named ports."""

    namespace: str
    name: str
    identity: int
    ips: tuple[str, ...] = ()
    ports: tuple[NamedPort, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class PolicyIssue:
    """Bad input the resolver skipped: ``obj`` like ``pod default/web``, ``field`` the field."""

    obj: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class RuleRef:
    """Where an allow entry came from: ``peer``/``port`` index into the rule's ``from``/``to``
    and ``ports`` lists, None when the list is empty (all peers / all ports)."""

    policy: str  # namespace/name
    direction: Direction
    rule: int
    peer: int | None
    port: int | None

    def __str__(self) -> str:
        where = "ingress" if self.direction is Direction.INGRESS else "egress"
        peers = "from" if self.direction is Direction.INGRESS else "to"
        peer = f"{peers}[{self.peer}]" if self.peer is not None else f"{peers}[*]"
        port = f"ports[{self.port}]" if self.port is not None else "ports[*]"
        return f"{self.policy} {where}[{self.rule}] {peer} {port}"
