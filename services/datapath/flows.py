"""Datapath events -> Hubble-shaped Flow records (pure).

Why this shape: the kernel reports numbers (addresses, identities, a verdict, a drop reason);
an operator and every subscriber of ``weir.v1.flows.*`` want names. The naming needs only the
policy loop's bus state (which pod has an address, which labels an identity has, which Service a
backend belongs to), so :func:`to_flow` takes that as a small :class:`FlowNames` lookup and is
table-tested without a kernel. Hubble's conventions are kept on purpose: enum names for
``drop_reason_desc`` (``POLICY_DENIED`` for Cilium's 133), ``traffic_direction`` as the
direction of the *connection* from the endpoint's side, ``is_reply`` left unknown on drops (the
datapath drops before it could know), the observation point of the tc hook.

The message id is deterministic (node, monotonic timestamp, tuple, direction), so a batch that
is published again after an ambiguous failure is dropped by the stream's duplicate window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from contracts.v1 import TCP, UDP, Flow, FlowEndpoint, FlowIP, FlowService, Layer4, TCPFlags
from services.datapath.flowevents import ObservationPoint, RawFlowEvent, Verdict
from services.datapath.policymap import CIDR_IDENTITY_BASE, Direction

# Hubble's flow.DropReason names for the codes bpf/policy.c reports.
DROP_REASON_NAMES: Final = {133: "POLICY_DENIED", 134: "INVALID_PACKET_DROPPED"}
RESERVED_IDENTITIES: Final = {
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
}
_POINTS: Final = {
    ObservationPoint.FROM_ENDPOINT: "FROM_ENDPOINT",
    ObservationPoint.TO_ENDPOINT: "TO_ENDPOINT",
}
_TCP_FLAGS: Final = (
    ("fin", 0x01),
    ("syn", 0x02),
    ("rst", 0x04),
    ("psh", 0x08),
    ("ack", 0x10),
    ("urg", 0x20),
    ("ece", 0x40),
    ("cwr", 0x80),
)
PROTO_TCP, PROTO_UDP = 6, 17


class FlowConversionError(ValueError):
    """An event that cannot become a Flow (unknown verdict, values out of range)."""


@dataclass(frozen=True, slots=True)
class FlowNames:
    """Lookups into the policy loop's bus state."""

    pod_of: Callable[[str], tuple[str, str] | None]  # ip -> (namespace, pod name)
    labels_of: Callable[[int], list[str]]  # identity -> labels (see identity_labels)
    service_of: Callable[[str, int, str], tuple[str, str] | None]  # ip, port, "TCP" -> svc


def identity_labels(identity: int, known: tuple[str, ...], cidr: str | None = None) -> list[str]:
    """Labels of an identity as flows show them: the allocator's, or reserved/CIDR ones."""
    if known:
        return list(known)
    if identity in RESERVED_IDENTITIES:
        return [f"reserved:{RESERVED_IDENTITIES[identity]}="]
    if identity >= CIDR_IDENTITY_BASE and cidr:
        return [f"cidr:{cidr}="]
    return []


def tcp_flags(bits: int) -> TCPFlags:
    return TCPFlags(**{name: bool(bits & bit) for name, bit in _TCP_FLAGS})


def _endpoint(ip: str, identity: int, names: FlowNames) -> FlowEndpoint:
    pod = names.pod_of(ip)
    return FlowEndpoint(
        identity=identity,
        namespace=pod[0] if pod else None,
        pod_name=pod[1] if pod else None,
        labels=list(names.labels_of(identity)),
    )


def to_flow(event: RawFlowEvent, node: str, names: FlowNames) -> Flow:
    """One datapath event as a Flow; raises FlowConversionError naming the field."""
    if event.verdict is Verdict.VERDICT_UNKNOWN:
        raise FlowConversionError("flow event: field verdict: VERDICT_UNKNOWN")
    dropped = event.verdict is Verdict.DROPPED
    l4: Layer4 | None = None
    try:
        if event.proto == PROTO_TCP:
            flags = tcp_flags(event.tcp_flags)
            l4 = Layer4(tcp=TCP(source_port=event.sport, destination_port=event.dport, flags=flags))
        elif event.proto == PROTO_UDP:
            l4 = Layer4(udp=UDP(source_port=event.sport, destination_port=event.dport))
        direction = event.direction
        if event.is_reply:  # the connection's direction, as Hubble reports it
            direction = Direction(direction ^ 1)
        service = None
        proto_name = {PROTO_TCP: "TCP", PROTO_UDP: "UDP"}.get(event.proto)
        if proto_name is not None and not event.is_reply:
            found = names.service_of(event.daddr, event.dport, proto_name)
            if found is not None:
                service = FlowService(namespace=found[0], name=found[1])
        return Flow(
            time=datetime.fromtimestamp(event.time_ns / 1e9, UTC),
            verdict=event.verdict.name,
            drop_reason_desc=(
                DROP_REASON_NAMES.get(event.drop_reason, "DROP_REASON_UNKNOWN") if dropped else None
            ),
            ip=FlowIP(source=event.saddr, destination=event.daddr, ip_version="IPv4"),
            l4=l4,
            source=_endpoint(event.saddr, event.src_identity, names),
            destination=_endpoint(event.daddr, event.dst_identity, names),
            destination_service=service,
            traffic_direction="INGRESS" if direction is Direction.INGRESS else "EGRESS",
            node_name=node,
            is_reply=None if dropped else event.is_reply,
            trace_observation_point=_POINTS.get(event.observation_point, "UNKNOWN_POINT"),
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise FlowConversionError(f"flow event {flow_msg_id(node, event)}: {exc}") from None


def flow_msg_id(node: str, event: RawFlowEvent) -> str:
    """``flow/<node>/<ktime>/<proto>/<saddr>:<sport>><daddr>:<dport>/<dir>/<verdict>``."""
    return (
        f"flow/{node}/{event.ktime_ns}/{event.proto}/{event.saddr}:{event.sport}>"
        f"{event.daddr}:{event.dport}/{int(event.direction)}/{event.verdict.name}"
    )
