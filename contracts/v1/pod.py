"""Pod payload: only what identity allocation and the datapath use.

The identity allocator needs labels, namespace (envelope) and service account; the datapath
needs the pod IPs, the node, readiness and the container ports (to resolve a Service's named
``targetPort``). Everything else in a Pod (commands, volumes, ...) stays out of the contract so
that unrelated pod churn does not look like a change to consumers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from contracts.v1.errors import FieldIssue
from contracts.v1.meta import (
    DNSLabel,
    DNSSubdomain,
    IPAddress,
    Labels,
    Model,
    Port,
    PortName,
    Protocol,
    StrictBool,
)

PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]


class ContainerPort(Model):
    container: DNSLabel
    name: PortName | None = None
    port: Port
    protocol: Protocol = "TCP"


class Pod(Model):
    """The identity- and datapath-relevant part of a core/v1 Pod."""

    kind: Literal["pod"] = "pod"
    ips: list[IPAddress] = Field(default_factory=list, max_length=2)
    host_ip: IPAddress | None = None
    host_network: StrictBool = False
    node_name: DNSSubdomain | None = None
    service_account: DNSSubdomain = "default"
    phase: PodPhase | None = None
    ready: StrictBool = False
    terminating: StrictBool = Field(default=False, description="deletionTimestamp is set")
    container_ports: list[ContainerPort] = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Pod:
        if len(self.ips) == 2 and (":" in self.ips[0]) == (":" in self.ips[1]):
            raise FieldIssue("two pod IPs must be one IPv4 and one IPv6", "ips")
        return self

    def named_port(self, name: str, protocol: str = "TCP") -> int | None:
        """Resolve a Service ``targetPort`` name to this pod's container port number."""
        for port in self.container_ports:
            if port.name == name and port.protocol == protocol:
                return port.port
        return None
