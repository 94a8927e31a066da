"""A small in-memory cluster for resolver tests: namespaces, pods, identities, policies, verdicts.

Identities are derived with the identity service's real label logic
(``services.identity.labels.security_labels``), so the resolver is tested against the label sets
it will see on the bus, not against hand-written ones. Policies are parsed from Kubernetes YAML
with the contracts' real converter (``from_k8s``), so the documentation's examples go in as-is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import yaml

from contracts.v1.convert import from_k8s
from contracts.v1.networkpolicy import NetworkPolicy
from services.datapath.fakepolicymaps import Packet
from services.datapath.fakepolicymaps import decide as datapath_decide
from services.datapath.flowevents import Verdict
from services.datapath.policy import resolve
from services.datapath.policy_cidr import CidrAllocator
from services.datapath.policy_model import (
    ClusterPod,
    LocalEndpoint,
    NamedPort,
    PolicyIssue,
    PolicyRef,
)
from services.datapath.policymap import Direction, PolicyState
from services.identity.labels import security_labels

FIRST_IDENTITY = 256
OWN_ADDRESS = "10.244.255.254"  # the endpoint's side of a packet; the verdict does not use it
TCP, UDP, SCTP = 6, 17, 132


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ip: str
    ports: tuple[NamedPort, ...] = ()
    local: bool = True


@dataclass
class Cluster:
    """``namespaces`` maps a name to its labels; Kubernetes' own ``kubernetes.io/metadata.name``
    is added unless ``metadata_name_label`` is False (to test the resolver's fallback)."""

    namespaces: Mapping[str, Mapping[str, str]]
    pods: list[PodSpec]
    metadata_name_label: bool = True
    identities: dict[int, tuple[str, ...]] = field(default_factory=dict)
    identity_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        label_sets: dict[str, tuple[str, ...]] = {}
        for pod in self.pods:
            ns_labels = dict(self.namespaces[pod.namespace])
            if self.metadata_name_label:
                ns_labels["kubernetes.io/metadata.name"] = pod.namespace
            labels = security_labels(
                pod=pod.name,
                namespace=pod.namespace,
                pod_labels=pod.labels,
                namespace_labels=ns_labels,
                service_account="default",
            ).labels
            label_sets[self.ref(pod)] = labels
        ids = {ls: FIRST_IDENTITY + i for i, ls in enumerate(sorted(set(label_sets.values())))}
        self.identities = {i: ls for ls, i in ids.items()}
        self.identity_of = {ref: ids[ls] for ref, ls in label_sets.items()}

    @staticmethod
    def ref(pod: PodSpec) -> str:
        return f"{pod.namespace}/{pod.name}"

    def pod(self, ref: str) -> PodSpec:
        return next(p for p in self.pods if self.ref(p) == ref)

    def ifindex(self, ref: str) -> int:
        return 100 + self.pods.index(self.pod(ref))

    def ip(self, ref: str) -> str:
        return self.pod(ref).ip

    def cluster_pods(self) -> list[ClusterPod]:
        return [
            ClusterPod(p.namespace, p.name, self.identity_of[self.ref(p)], (p.ip,), p.ports)
            for p in self.pods
        ]

    def endpoints(self) -> list[LocalEndpoint]:
        return [
            LocalEndpoint(
                namespace=p.namespace,
                name=p.name,
                ifindex=self.ifindex(self.ref(p)),
                endpoint_id=1 + self.pods.index(p),
                identity=self.identity_of[self.ref(p)],
                labels=dict(p.labels),
                ports=p.ports,
                ips=(p.ip,),
            )
            for p in self.pods
            if p.local
        ]

    def resolve(
        self,
        policies: Iterable[PolicyRef],
        alloc: CidrAllocator | None = None,
        issues: list[PolicyIssue] | None = None,
    ) -> PolicyState:
        return resolve(
            policies,
            self.endpoints(),
            self.identities,
            self.cluster_pods(),
            alloc or CidrAllocator(),
            issues,
        )


def policies_from_yaml(text: str, default_namespace: str = "default") -> list[PolicyRef]:
    """Every NetworkPolicy document in ``text`` (kubectl applies a namespace-less one to the
    current namespace, ``default_namespace`` here)."""
    out: list[PolicyRef] = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        spec = from_k8s("networkpolicy", doc)
        assert isinstance(spec, NetworkPolicy)
        meta = doc["metadata"]
        out.append(PolicyRef(meta.get("namespace", default_namespace), meta["name"], spec))
    return out


def decide(
    state: PolicyState, ifindex: int, direction: Direction, peer: str, proto: int, port: int
) -> bool:
    """Whether the datapath model (``fakepolicymaps.decide``, the same lookups as bpf/policy.c)
    forwards the first packet between the endpoint at ``ifindex`` and the address ``peer``;
    ``port`` is the destination port (the endpoint's for ingress, the peer's for egress)."""
    ingress = direction is Direction.INGRESS
    src, dst = (peer, OWN_ADDRESS) if ingress else (OWN_ADDRESS, peer)
    decision = datapath_decide(state, Packet(ifindex, direction, src, dst, proto, port))
    return decision is None or decision.verdict is Verdict.FORWARDED
