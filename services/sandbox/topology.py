"""The sandbox's address and name plan: pure functions from (sandbox id, node names, pods) to names.

Everything the network layer creates is named and numbered here, before any I/O, so the plan can
be table-tested without root and so ``down`` can recompute every name from the sandbox id alone
(teardown must work after a crash, even if the state file is lost).

Address plan (these addresses exist ONLY inside the sandbox's own network namespaces):

* fabric links ``172.31.0.0/24``: node ``i`` (0-based) is wired to the fabric namespace by a
  point-to-point ``/31``: the fabric end is ``172.31.0.{2i}``, the node IP is ``172.31.0.{2i+1}``.
  A ``/31`` per link makes the fabric a real L3 router (no shared L2 segment, no bridge); the
  /24 limits a sandbox to 128 nodes (the design target is 10).
* pods: the cluster CIDR ``10.244.0.0/16``; node ``i`` owns ``10.244.{i+1}.0/24``, its pods'
  gateway is ``10.244.{i+1}.1`` and pods get ``.2`` .. ``.254`` as ``/32`` addresses (L3 only,
  like Cilium: every pod packet is routed by the node, never bridged).
* services: ``10.96.0.0/16`` (not assigned here; only routed/blackholed).

Names: netns ``weir-<id>-fabric``, ``weir-<id>-node-<node>``, ``weir-<id>-pod-<hash>``; links
``wn<i>`` (fabric side), ``fabric0`` (node side), ``lxc<hash>`` (pod's host side, in the node's
namespace) and ``eth0`` (in the pod); cgroups ``weir-<id>/<node>/pods/<namespace>_<pod>``
(pods BELOW the node, so the node's cgroup socket-LB programs apply to them); pins
``weir-<id>/<node>`` under bpffs. ``_`` cannot occur in a namespace name, so the pod cgroup name
is unambiguous.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FABRIC_CIDR = ipaddress.IPv4Network("172.31.0.0/24")
CLUSTER_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/16")
MAX_NODES = FABRIC_CIDR.num_addresses // 2
LINK_PREFIXLEN = 31
NODE_UPLINK_IFNAME = "fabric0"
POD_IFNAME = "eth0"
IFNAME_MAX = 15

_SANDBOX_ID = re.compile(r"^[a-z0-9]{1,8}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_PROTOCOLS = frozenset({"TCP", "UDP"})


class TopologyError(ValueError):
    """A plan input that cannot be turned into a sandbox; the message names object and field."""


@dataclass(frozen=True)
class NodePlan:
    name: str
    index: int
    netns: str
    node_ip: ipaddress.IPv4Address
    fabric_ip: ipaddress.IPv4Address  # the fabric's end of this node's /31
    fabric_ifname: str  # link in the fabric namespace
    pod_cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    cgroup: str  # relative to the cgroup2 root
    pods_cgroup: str
    pin_dir: str  # relative to the bpffs root


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class PodPlan:
    namespace: str
    name: str
    node: str
    netns: str
    ip: ipaddress.IPv4Address
    host_ifname: str  # in the node's namespace
    cgroup: str  # relative to the cgroup2 root
    ports: tuple[Port, ...] = ()
    command: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SandboxPlan:
    sandbox_id: str
    fabric_netns: str
    root_cgroup: str
    root_pin_dir: str
    nodes: tuple[NodePlan, ...]
    cluster_cidr: ipaddress.IPv4Network = CLUSTER_CIDR
    service_cidr: ipaddress.IPv4Network = SERVICE_CIDR
    fabric_cidr: ipaddress.IPv4Network = FABRIC_CIDR
    netns_prefix: str = field(default="")

    def node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise TopologyError(f"sandbox {self.sandbox_id}: no node named {name!r}")


def validate_sandbox_id(sandbox_id: str) -> str:
    if not _SANDBOX_ID.fullmatch(sandbox_id):
        raise TopologyError(
            f"sandbox id {sandbox_id!r}: must be 1-8 characters of lower-case letters and digits"
        )
    return sandbox_id


def netns_prefix(sandbox_id: str) -> str:
    """Every netns of a sandbox starts with this; teardown finds leftovers by it."""
    return f"weir-{validate_sandbox_id(sandbox_id)}-"


def short_hash(text: str, length: int = 11) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def plan_sandbox(sandbox_id: str, node_names: Sequence[str]) -> SandboxPlan:
    """Plan the fabric and ``len(node_names)`` nodes; node order fixes the addresses."""
    prefix = netns_prefix(sandbox_id)
    if not node_names:
        raise TopologyError(f"sandbox {sandbox_id}: nodes: at least one node is required")
    if len(node_names) > MAX_NODES:
        raise TopologyError(
            f"sandbox {sandbox_id}: nodes: at most {MAX_NODES}, got {len(node_names)}"
        )
    seen: set[str] = set()
    nodes: list[NodePlan] = []
    root_cgroup = f"weir-{sandbox_id}"
    for index, name in enumerate(node_names):
        if not isinstance(name, str) or not _DNS_SUBDOMAIN.fullmatch(name):
            raise TopologyError(f"node[{index}].name: {name!r} is not a DNS subdomain name")
        if name in seen:
            raise TopologyError(f"node[{index}].name: duplicate node name {name!r}")
        seen.add(name)
        pod_cidr = ipaddress.IPv4Network(f"10.244.{index + 1}.0/24")
        nodes.append(
            NodePlan(
                name=name,
                index=index,
                netns=f"{prefix}node-{name}",
                node_ip=FABRIC_CIDR.network_address + 2 * index + 1,
                fabric_ip=FABRIC_CIDR.network_address + 2 * index,
                fabric_ifname=f"wn{index}",
                pod_cidr=pod_cidr,
                gateway=pod_cidr.network_address + 1,
                cgroup=f"{root_cgroup}/{name}",
                pods_cgroup=f"{root_cgroup}/{name}/pods",
                pin_dir=f"weir-{sandbox_id}/{name}",
            )
        )
    return SandboxPlan(
        sandbox_id=sandbox_id,
        fabric_netns=f"{prefix}fabric",
        root_cgroup=root_cgroup,
        root_pin_dir=f"weir-{sandbox_id}",
        nodes=tuple(nodes),
        netns_prefix=prefix,
    )


def allocate_pod_ip(node: NodePlan, used: Iterable[ipaddress.IPv4Address]) -> ipaddress.IPv4Address:
    """Lowest free address of the node's pod CIDR, skipping network, gateway and broadcast."""
    taken = set(used) | {node.gateway}
    for host in node.pod_cidr.hosts():
        if host not in taken:
            return host
    raise TopologyError(f"node {node.name}: podCIDR {node.pod_cidr} is exhausted")


def parse_ports(obj: str, ports: Iterable[tuple[int, str]]) -> tuple[Port, ...]:
    out: list[Port] = []
    for i, (number, protocol) in enumerate(ports):
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            raise TopologyError(f"pod {obj}: ports[{i}].containerPort: {number!r} is not 1-65535")
        if protocol not in _PROTOCOLS:
            raise TopologyError(
                f"pod {obj}: ports[{i}].protocol: {protocol!r} is not one of TCP, UDP"
            )
        port = Port(number, protocol)
        if port not in out:
            out.append(port)
    return tuple(out)


def plan_pod(
    plan: SandboxPlan,
    node_name: str,
    namespace: str,
    name: str,
    *,
    used_ips: Iterable[ipaddress.IPv4Address] = (),
    ports: Iterable[tuple[int, str]] = (),
    command: Sequence[str] = (),
) -> PodPlan:
    """Plan one pod on ``node_name``: names from a hash of ``namespace/name``, the next free IP."""
    if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace):
        raise TopologyError(f"pod {namespace}/{name}: metadata.namespace: not a DNS label")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.fullmatch(name):
        raise TopologyError(f"pod {namespace}/{name}: metadata.name: not a DNS subdomain name")
    node = plan.node(node_name)
    obj = f"{namespace}/{name}"
    if any(not isinstance(arg, str) for arg in command):
        raise TopologyError(f"pod {obj}: command: every element must be a string")
    digest = short_hash(f"{plan.sandbox_id}/{obj}")
    host_ifname = f"lxc{digest}"
    assert len(host_ifname) <= IFNAME_MAX
    return PodPlan(
        namespace=namespace,
        name=name,
        node=node.name,
        netns=f"{plan.netns_prefix}pod-{digest}",
        ip=allocate_pod_ip(node, used_ips),
        host_ifname=host_ifname,
        cgroup=f"{node.pods_cgroup}/{namespace}_{name}",
        ports=parse_ports(obj, ports),
        command=tuple(command),
    )
