"""Pure wiring plan: the exact links, addresses, routes and sysctls for the fabric, a node, a pod.

The network layer is split in two: this module says WHAT to configure, as a list of small
immutable steps, and ``netns.py`` applies them with pyroute2. The list can be table-tested
without root (e.g. "every namespace with a route out blackholes the service and cluster CIDRs",
"pods route everything, including the service CIDR, to their node") and the executor stays a
dumb loop.

Routing, per namespace (see topology.py for the addresses):

* fabric: one route per node, ``<podCIDR> via <node IP>``; blackholes for the cluster and service
  CIDRs so an unknown pod or service address dies in the fabric. It has no uplink at all.
* node: ``172.31.0.0/24`` and every OTHER node's podCIDR via its fabric peer; a ``/32`` to each
  of its pods via the pod's ``lxc`` link (added with the pod); blackholes for the cluster and
  service CIDRs (a service connect that the socket LB did not rewrite must not go anywhere).
* pod: ``eth0`` holds a ``/32``, the gateway is on-link, ``default via <gateway>``. The default
  route also covers the service CIDR: the socket LB rewrites connect()/sendmsg() in the cgroup
  hook BEFORE the route lookup, but a UDP connect() to an address with no route at all would
  fail with ENETUNREACH before the rewritten address is used, so a route must exist; a pod needs
  no blackholes because its only route out leads to its node, which has them.

IPv4 forwarding is switched on only inside the fabric and node namespaces (never on the host).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.sandbox.topology import (
    LINK_PREFIXLEN,
    NODE_UPLINK_IFNAME,
    POD_IFNAME,
    NodePlan,
    PodPlan,
    SandboxPlan,
)


@dataclass(frozen=True)
class Veth:
    netns: str
    ifname: str
    peer_netns: str
    peer_ifname: str


@dataclass(frozen=True)
class Addr:
    netns: str
    ifname: str
    address: str
    prefixlen: int


@dataclass(frozen=True)
class LinkUp:
    netns: str
    ifname: str


@dataclass(frozen=True)
class Route:
    netns: str
    dst: str  # CIDR, or "default"
    gateway: str | None = None
    ifname: str | None = None
    blackhole: bool = False


@dataclass(frozen=True)
class Sysctl:
    netns: str
    key: str  # dotted, e.g. net.ipv4.ip_forward
    value: str


Step = Veth | Addr | LinkUp | Route | Sysctl


def _blackholes(netns: str, plan: SandboxPlan) -> list[Step]:
    return [
        Route(netns, str(plan.cluster_cidr), blackhole=True),
        Route(netns, str(plan.service_cidr), blackhole=True),
    ]


def fabric_steps(plan: SandboxPlan) -> list[Step]:
    ns = plan.fabric_netns
    return [
        LinkUp(ns, "lo"),
        Sysctl(ns, "net.ipv4.ip_forward", "1"),
        *_blackholes(ns, plan),
    ]


def node_steps(plan: SandboxPlan, node: NodePlan) -> list[Step]:
    """The node's namespace, its /31 to the fabric and the routes on both ends."""
    fab, ns = plan.fabric_netns, node.netns
    steps: list[Step] = [
        LinkUp(ns, "lo"),
        Sysctl(ns, "net.ipv4.ip_forward", "1"),
        Veth(fab, node.fabric_ifname, ns, NODE_UPLINK_IFNAME),
        Addr(fab, node.fabric_ifname, str(node.fabric_ip), LINK_PREFIXLEN),
        LinkUp(fab, node.fabric_ifname),
        Addr(ns, NODE_UPLINK_IFNAME, str(node.node_ip), LINK_PREFIXLEN),
        LinkUp(ns, NODE_UPLINK_IFNAME),
        Route(fab, str(node.pod_cidr), gateway=str(node.node_ip), ifname=node.fabric_ifname),
        Route(ns, str(plan.fabric_cidr), gateway=str(node.fabric_ip), ifname=NODE_UPLINK_IFNAME),
    ]
    for other in plan.nodes:
        if other.name != node.name:
            steps.append(
                Route(
                    ns, str(other.pod_cidr), gateway=str(node.fabric_ip), ifname=NODE_UPLINK_IFNAME
                )
            )
    steps.extend(_blackholes(ns, plan))
    return steps


def pod_steps(plan: SandboxPlan, pod: PodPlan) -> list[Step]:
    """The pod's veth (host side in the node namespace), its /32 and the routes both ways."""
    node = plan.node(pod.node)
    gw = str(node.gateway)
    return [
        LinkUp(pod.netns, "lo"),
        Veth(node.netns, pod.host_ifname, pod.netns, POD_IFNAME),
        Addr(node.netns, pod.host_ifname, gw, 32),
        LinkUp(node.netns, pod.host_ifname),
        Route(node.netns, f"{pod.ip}/32", ifname=pod.host_ifname),
        Addr(pod.netns, POD_IFNAME, str(pod.ip), 32),
        LinkUp(pod.netns, POD_IFNAME),
        Route(pod.netns, f"{gw}/32", ifname=POD_IFNAME),
        Route(pod.netns, "default", gateway=gw, ifname=POD_IFNAME),
    ]
