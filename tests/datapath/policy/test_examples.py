"""The Kubernetes documentation's NetworkPolicy examples, resolved and evaluated like the datapath.

Each example (https://kubernetes.io/docs/concepts/services-networking/network-policies/, YAML from
kubernetes/website content/en/examples/service/networking/) is resolved for the cluster below and
every row asks the datapath model (``fakepolicymaps.decide``: LPM ipcache, then the four policy
lookups) whether the first packet of one flow passes; rows list allowed AND denied flows, as
the documentation describes them.
"""

from __future__ import annotations

import pytest

from services.datapath.policy_model import NamedPort
from services.datapath.policymap import Direction, EndpointFlags, EndpointKey

from .cluster import SCTP, TCP, UDP, Cluster, PodSpec, decide, policies_from_yaml

IN, OUT = Direction.INGRESS, Direction.EGRESS

NAMESPACES = {
    "default": {},
    "myproject": {"project": "myproject"},
    "other": {},
    "alice": {"user": "alice"},
}
PODS = [
    PodSpec("default", "db", {"role": "db"}, "10.244.0.10", (NamedPort("redis", 6379),)),
    PodSpec("default", "frontend", {"role": "frontend"}, "10.244.0.11"),
    PodSpec("default", "client", {"role": "client"}, "10.244.0.12"),
    PodSpec("other", "db", {"role": "db"}, "10.244.0.20"),
    PodSpec("myproject", "web", {"app": "web"}, "10.244.1.10", local=False),
    PodSpec("other", "frontend", {"role": "frontend"}, "10.244.1.11", local=False),
    PodSpec("alice", "client", {"role": "client"}, "10.244.1.12", local=False),
    PodSpec("alice", "server", {"role": "server"}, "10.244.1.13", local=False),
]
CLUSTER = Cluster(NAMESPACES, PODS)

TEST_NETWORK_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
"""
DEFAULT_DENY_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  podSelector: {}
  policyTypes:
  - Ingress
"""
ALLOW_ALL_INGRESS = """
{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: allow-all-ingress},
 spec: {podSelector: {}, ingress: [{}], policyTypes: [Ingress]}}
"""
DEFAULT_DENY_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
spec:
  podSelector: {}
  policyTypes:
  - Egress
"""
ALLOW_ALL_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-egress
spec:
  podSelector: {}
  egress:
  - {}
  policyTypes:
  - Egress
"""
DEFAULT_DENY_ALL = """
{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: default-deny-all},
 spec: {podSelector: {}, policyTypes: [Ingress, Egress]}}
"""
ALLOW_EGRESS_DENY_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-egress-deny-ingress
spec:
  podSelector: {}
  policyTypes:
    - Egress
    - Ingress
  egress:
    - {}
  ingress: []
"""
MULTI_PORT_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Egress
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 32000
      endPort: 32768
"""
# "Targeting a Namespace by its name": the kubernetes.io/metadata.name label.
NAMESPACE_BY_NAME = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: from-myproject-by-name
  namespace: default
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: In, values: [myproject]}
"""
# "Behavior of to and from selectors": one element ANDs, two elements OR.
ALICE_AND = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: alice-and, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {user: alice}}
      podSelector: {matchLabels: {role: client}}
"""
ALICE_OR = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: alice-or, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {user: alice}}
    - podSelector: {matchLabels: {role: client}}
"""

# peers: pod refs or external addresses
DB, FRONT, CLIENT, OTHER_DB = "default/db", "default/frontend", "default/client", "other/db"
WEB, OTHER_FRONT = "myproject/web", "other/frontend"
A_CLIENT, A_SERVER = "alice/client", "alice/server"

Row = tuple[str, Direction, str, int, int, bool]
CASES: dict[str, tuple[str, list[Row]]] = {
    "test-network-policy": (
        TEST_NETWORK_POLICY,
        [
            (DB, IN, FRONT, TCP, 6379, True),  # podSelector: same namespace
            (DB, IN, OTHER_FRONT, TCP, 6379, False),  # role=frontend, but another namespace
            (DB, IN, WEB, TCP, 6379, True),  # namespace project=myproject
            (DB, IN, CLIENT, TCP, 6379, False),
            (DB, IN, A_CLIENT, TCP, 6379, False),
            (DB, IN, "172.17.0.5", TCP, 6379, True),
            (DB, IN, "172.17.0.255", TCP, 6379, True),
            (DB, IN, "172.17.1.0", TCP, 6379, False),  # except 172.17.1.0/24
            (DB, IN, "172.17.1.255", TCP, 6379, False),
            (DB, IN, "172.17.2.0", TCP, 6379, True),
            (DB, IN, "172.17.255.255", TCP, 6379, True),
            (DB, IN, "172.16.255.255", TCP, 6379, False),
            (DB, IN, "172.18.0.0", TCP, 6379, False),
            (DB, IN, "10.0.0.5", TCP, 6379, False),  # egress CIDR is not an ingress peer
            (DB, IN, FRONT, TCP, 6380, False),  # only port 6379
            (DB, IN, FRONT, UDP, 6379, False),  # only TCP
            (DB, IN, "172.17.0.5", SCTP, 6379, False),
            (DB, OUT, "10.0.0.5", TCP, 5978, True),
            (DB, OUT, "10.0.0.0", TCP, 5978, True),
            (DB, OUT, "10.0.0.255", TCP, 5978, True),
            (DB, OUT, "10.0.1.0", TCP, 5978, False),
            (DB, OUT, "10.0.0.5", TCP, 5979, False),
            (DB, OUT, "10.0.0.5", UDP, 5978, False),
            (DB, OUT, FRONT, TCP, 5978, False),  # pods are not in 10.0.0.0/24
            (DB, OUT, "8.8.8.8", TCP, 5978, False),
            # not selected: role=frontend pods and a role=db pod of another namespace
            (FRONT, IN, "8.8.8.8", UDP, 53, True),
            (FRONT, OUT, "8.8.8.8", TCP, 443, True),
            (OTHER_DB, IN, "8.8.8.8", TCP, 1, True),
            (OTHER_DB, OUT, A_SERVER, TCP, 80, True),
        ],
    ),
    "default-deny-ingress": (
        DEFAULT_DENY_INGRESS,
        [
            (DB, IN, FRONT, TCP, 6379, False),
            (FRONT, IN, "8.8.8.8", UDP, 53, False),
            (CLIENT, IN, WEB, TCP, 80, False),
            (DB, OUT, "8.8.8.8", TCP, 443, True),  # egress isolation unchanged
            (OTHER_DB, IN, FRONT, TCP, 6379, True),  # other namespaces unaffected
        ],
    ),
    "allow-all-ingress": (
        DEFAULT_DENY_INGRESS + "---" + ALLOW_ALL_INGRESS,
        [
            (DB, IN, FRONT, TCP, 6379, True),
            (FRONT, IN, "8.8.8.8", UDP, 53, True),
            (CLIENT, IN, A_SERVER, SCTP, 9, True),
            (CLIENT, IN, "0.0.0.1", 1, 0, True),  # any protocol (ICMP)
        ],
    ),
    "default-deny-egress": (
        DEFAULT_DENY_EGRESS,
        [
            (DB, OUT, FRONT, TCP, 80, False),
            (FRONT, OUT, "8.8.8.8", UDP, 53, False),
            (FRONT, IN, "8.8.8.8", UDP, 53, True),  # ingress unchanged
            (OTHER_DB, OUT, "8.8.8.8", UDP, 53, True),
        ],
    ),
    "allow-all-egress": (
        DEFAULT_DENY_EGRESS + "---" + ALLOW_ALL_EGRESS,
        [
            (DB, OUT, FRONT, TCP, 80, True),
            (FRONT, OUT, "8.8.8.8", UDP, 53, True),
            (CLIENT, OUT, A_SERVER, 1, 0, True),
        ],
    ),
    "default-deny-all": (
        DEFAULT_DENY_ALL,
        [
            (DB, IN, FRONT, TCP, 6379, False),
            (DB, OUT, FRONT, TCP, 80, False),
            (CLIENT, IN, "8.8.8.8", UDP, 53, False),
            (CLIENT, OUT, "8.8.8.8", UDP, 53, False),
            (OTHER_DB, IN, FRONT, TCP, 6379, True),
            (OTHER_DB, OUT, FRONT, TCP, 6379, True),
        ],
    ),
    "allow-egress-deny-ingress": (
        ALLOW_EGRESS_DENY_INGRESS,
        [
            (DB, IN, FRONT, TCP, 6379, False),
            (CLIENT, IN, "8.8.8.8", TCP, 80, False),
            (DB, OUT, FRONT, TCP, 80, True),
            (CLIENT, OUT, "8.8.8.8", UDP, 53, True),
        ],
    ),
    "multi-port-egress": (
        MULTI_PORT_EGRESS,
        [
            (DB, OUT, "10.0.0.7", TCP, 32000, True),
            (DB, OUT, "10.0.0.7", TCP, 32500, True),
            (DB, OUT, "10.0.0.7", TCP, 32767, True),
            (DB, OUT, "10.0.0.7", TCP, 32768, True),
            (DB, OUT, "10.0.0.7", TCP, 31999, False),
            (DB, OUT, "10.0.0.7", TCP, 32769, False),
            (DB, OUT, "10.0.0.7", TCP, 65535, False),
            (DB, OUT, "10.0.0.7", UDP, 32000, False),
            (DB, OUT, "10.0.1.7", TCP, 32000, False),
            (DB, OUT, FRONT, TCP, 32000, False),
            (DB, IN, FRONT, TCP, 32000, True),  # policyTypes: Egress only
            (FRONT, OUT, "8.8.8.8", TCP, 1, True),
        ],
    ),
    "namespace-by-name": (
        NAMESPACE_BY_NAME,
        [
            (DB, IN, WEB, TCP, 6379, True),
            (DB, IN, WEB, UDP, 1, True),  # no ports: every protocol and port
            (DB, IN, FRONT, TCP, 6379, False),
            (DB, IN, A_CLIENT, TCP, 6379, False),
            (DB, IN, "8.8.8.8", TCP, 6379, False),
            (DB, OUT, "8.8.8.8", TCP, 6379, True),  # policyTypes defaulted to Ingress
        ],
    ),
    "namespace-and-pod-selector": (
        ALICE_AND,
        [
            (DB, IN, A_CLIENT, TCP, 80, True),
            (DB, IN, A_SERVER, TCP, 80, False),
            (DB, IN, CLIENT, TCP, 80, False),
        ],
    ),
    "namespace-or-pod-selector": (
        ALICE_OR,
        [
            (DB, IN, A_CLIENT, TCP, 80, True),
            (DB, IN, A_SERVER, TCP, 80, True),
            (DB, IN, CLIENT, TCP, 80, True),
            (DB, IN, FRONT, TCP, 80, False),
            (DB, IN, WEB, TCP, 80, False),
        ],
    ),
}


def _peer(text: str) -> str:
    return CLUSTER.ip(text) if "/" in text else text


@pytest.mark.parametrize(
    ("example", "row"),
    [(name, row) for name, (_, rows) in CASES.items() for row in rows],
    ids=[
        f"{name}:{r[0]}-{r[1].name}-{r[2]}-{r[3]}/{r[4]}"
        for name, (_, rows) in CASES.items()
        for r in rows
    ],
)
def test_documented_example(example: str, row: Row) -> None:
    text, _ = CASES[example]
    state = CLUSTER.resolve(policies_from_yaml(text))
    endpoint, direction, peer, proto, port, expected = row
    got = decide(state, CLUSTER.ifindex(endpoint), direction, _peer(peer), proto, port)
    assert got is expected


def test_isolation_flags_of_the_main_example() -> None:
    state = CLUSTER.resolve(policies_from_yaml(TEST_NETWORK_POLICY))
    both = EndpointFlags.ENFORCE_INGRESS | EndpointFlags.ENFORCE_EGRESS
    flags = {
        ref: state.endpoints[EndpointKey(CLUSTER.ifindex(ref))].flags
        for ref in (DB, FRONT, CLIENT, OTHER_DB)
    }
    assert flags == {
        DB: both,
        FRONT: EndpointFlags.NONE,
        CLIENT: EndpointFlags.NONE,
        OTHER_DB: EndpointFlags.NONE,
    }


def test_namespace_by_name_without_the_label_in_the_identity() -> None:
    """Identities minted before namespace labels carried kubernetes.io/metadata.name still
    match it: the resolver falls back to the pod's namespace."""
    bare = Cluster(NAMESPACES, PODS, metadata_name_label=False)
    assert not any(
        "metadata.name" in label for labels in bare.identities.values() for label in labels
    )
    state = bare.resolve(policies_from_yaml(NAMESPACE_BY_NAME))
    db = bare.ifindex(DB)
    assert decide(state, db, IN, bare.ip(WEB), TCP, 6379)
    assert not decide(state, db, IN, bare.ip(FRONT), TCP, 6379)
