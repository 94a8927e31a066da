"""Flow record: one datapath verdict, shaped after Hubble's ``flow.Flow`` (snake_case).

Keeping Hubble's field names and enum values lets operators reuse their Hubble vocabulary and
lets ``weir observe`` print familiar output; only the subset the Weir datapath can fill is here.
Published on ``weir.v1.flows.<node>.<verdict>`` so subscribers can filter by node and verdict in
the subject without decoding the payload.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from contracts.subjects import flow_subject
from contracts.v1.errors import FieldIssue
from contracts.v1.identity import IdentityLabel
from contracts.v1.meta import (
    DNSLabel,
    DNSSubdomain,
    IPAddress,
    Model,
    Port,
    StrictBool,
    UtcDatetime,
)

Verdict = Literal["FORWARDED", "DROPPED", "ERROR", "AUDIT", "REDIRECTED", "TRACED", "TRANSLATED"]
VERDICTS: tuple[Verdict, ...] = (
    "FORWARDED",
    "DROPPED",
    "ERROR",
    "AUDIT",
    "REDIRECTED",
    "TRACED",
    "TRANSLATED",
)
TrafficDirection = Literal["INGRESS", "EGRESS", "TRAFFIC_DIRECTION_UNKNOWN"]
ObservationPoint = Literal[
    "UNKNOWN_POINT",
    "TO_PROXY",
    "TO_HOST",
    "TO_STACK",
    "TO_OVERLAY",
    "TO_ENDPOINT",
    "FROM_ENDPOINT",
    "FROM_PROXY",
    "FROM_HOST",
    "FROM_STACK",
    "FROM_OVERLAY",
    "FROM_NETWORK",
    "TO_NETWORK",
]


class FlowIP(Model):
    source: IPAddress
    destination: IPAddress
    ip_version: Literal["IPv4", "IPv6"]

    @model_validator(mode="after")
    def _family(self) -> FlowIP:
        want = self.ip_version == "IPv6"
        for field in ("source", "destination"):
            if (":" in getattr(self, field)) != want:
                raise FieldIssue(f"address is not {self.ip_version}", field)
        return self


class TCPFlags(Model):
    syn: StrictBool = False
    ack: StrictBool = False
    fin: StrictBool = False
    rst: StrictBool = False
    psh: StrictBool = False
    urg: StrictBool = False
    ece: StrictBool = False
    cwr: StrictBool = False


class TCP(Model):
    source_port: Port
    destination_port: Port
    flags: TCPFlags | None = None


class UDP(Model):
    source_port: Port
    destination_port: Port


class Layer4(Model):
    """Exactly one of ``tcp`` / ``udp`` is set."""

    tcp: TCP | None = None
    udp: UDP | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Layer4:
        if (self.tcp is None) == (self.udp is None):
            raise FieldIssue("exactly one of tcp or udp must be set", "tcp")
        return self


class FlowEndpoint(Model):
    # up to 2**32-1: node-local CIDR identities (ipBlock peers) live above the cluster range
    identity: int = Field(ge=0, le=0xFFFFFFFF, strict=True)
    namespace: DNSLabel | None = None
    pod_name: DNSSubdomain | None = None
    labels: list[IdentityLabel] = Field(default_factory=list)


class FlowService(Model):
    namespace: DNSLabel
    name: DNSLabel


class Flow(Model):
    """One datapath verdict, Hubble-shaped (snake_case field names)."""

    time: UtcDatetime
    verdict: Verdict
    drop_reason_desc: str | None = Field(default=None, description="e.g. POLICY_DENIED")
    ip: FlowIP
    l4: Layer4 | None = None
    source: FlowEndpoint
    destination: FlowEndpoint
    destination_service: FlowService | None = None
    traffic_direction: TrafficDirection = "TRAFFIC_DIRECTION_UNKNOWN"
    node_name: DNSSubdomain
    is_reply: StrictBool | None = None
    trace_observation_point: ObservationPoint = "UNKNOWN_POINT"

    @model_validator(mode="after")
    def _drop_reason(self) -> Flow:
        if self.drop_reason_desc is not None and self.verdict != "DROPPED":
            raise FieldIssue("drop_reason_desc is only set on DROPPED flows", "drop_reason_desc")
        return self

    def subject(self) -> str:
        return flow_subject(self.node_name, self.verdict)
