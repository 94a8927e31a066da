"""Service payload: what the datapath needs to program a virtual IP, normalised from core/v1.

Kubernetes spreads one fact over several fields (``clusterIP`` and ``clusterIPs``, the
``trafficDistribution`` field and two older topology annotations, ``clusterIP: None`` meaning
headless); the converter folds each into one field here so consumers never re-derive them.
Defaults are applied as the API server would (type ClusterIP, protocol TCP, target port = port,
affinity timeout 10800 s), so a consumer never sees "unset" where Kubernetes means a default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from contracts.v1.errors import FieldIssue
from contracts.v1.meta import (
    DNSLabel,
    DNSSubdomain,
    IPAddress,
    Labels,
    Model,
    Port,
    PortOrName,
    Protocol,
    StrictBool,
)

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
TrafficPolicy = Literal["Cluster", "Local"]
TrafficDistribution = Literal["PreferClose", "PreferSameZone", "PreferSameNode"]
DEFAULT_AFFINITY_TIMEOUT = 10800


class ServicePort(Model):
    name: DNSLabel | None = None
    protocol: Protocol = "TCP"
    port: Port
    target_port: PortOrName = Field(description="number, or the name of a container port")
    node_port: Port | None = Field(default=None, description="None when not allocated")
    app_protocol: str | None = None


class Service(Model):
    """A core/v1 Service, normalised (defaults applied, clusterIP fields folded)."""

    kind: Literal["service"] = "service"
    type: ServiceType = "ClusterIP"
    headless: StrictBool = Field(default=False, description="spec.clusterIP was 'None'")
    cluster_ips: list[IPAddress] = Field(default_factory=list, max_length=2)
    external_ips: list[IPAddress] = Field(default_factory=list)
    load_balancer_ips: list[IPAddress] = Field(default_factory=list)
    external_name: DNSSubdomain | None = None
    ports: list[ServicePort] = Field(default_factory=list)
    selector: Labels = Field(default_factory=dict)
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_timeout_seconds: Annotated[int, Field(ge=1, le=86400, strict=True)] = (
        DEFAULT_AFFINITY_TIMEOUT
    )
    external_traffic_policy: TrafficPolicy = "Cluster"
    internal_traffic_policy: TrafficPolicy = "Cluster"
    publish_not_ready_addresses: StrictBool = False
    traffic_distribution: TrafficDistribution | None = None
    labels: Labels = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Service:
        if self.headless and self.cluster_ips:
            raise FieldIssue(
                "a headless service (clusterIP None) has no cluster IPs", "cluster_ips"
            )
        if self.type == "ExternalName" and self.external_name is None:
            raise FieldIssue("an ExternalName service needs externalName", "external_name")
        ips = self.cluster_ips
        if len(ips) == 2 and (":" in ips[0]) == (":" in ips[1]):
            raise FieldIssue("two cluster IPs must be one IPv4 and one IPv6", "cluster_ips")
        seen: set[tuple[int, str]] = set()
        for i, port in enumerate(self.ports):
            if (port.port, port.protocol) in seen:
                raise FieldIssue(f"duplicate port {port.port}/{port.protocol}", "ports", i)
            seen.add((port.port, port.protocol))
        if len(self.ports) > 1 and any(p.name is None for p in self.ports):
            raise FieldIssue("every port needs a name when a service has several", "ports")
        return self
