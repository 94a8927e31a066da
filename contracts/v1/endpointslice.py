"""EndpointSlice payload: the backends of a Service, normalised from discovery.k8s.io/v1.

Endpoint conditions are stored resolved, with the Kubernetes defaults applied by the
converter (ready nil means true, serving nil means ready, terminating nil means false), so that
backend selection in the datapath is a pure function of these booleans. The owning Service comes
from the ``kubernetes.io/service-name`` label, which is how Kubernetes links the two.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from contracts.v1.errors import FieldIssue
from contracts.v1.meta import (
    IPV4_CANONICAL,
    DNSLabel,
    DNSSubdomain,
    Labels,
    Model,
    NonEmptyStr,
    Port,
    Protocol,
    StrictBool,
    canonical_ip,
    check_dns_subdomain,
)

AddressType = Literal["IPv4", "IPv6", "FQDN"]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class EndpointConditions(Model):
    ready: StrictBool
    serving: StrictBool
    terminating: StrictBool


class EndpointHints(Model):
    for_zones: list[NonEmptyStr] = Field(default_factory=list)
    for_nodes: list[NonEmptyStr] = Field(default_factory=list)


class ObjectRef(Model):
    kind: NonEmptyStr
    namespace: DNSLabel | None = None
    name: NonEmptyStr
    uid: str | None = None


def _ip_or_name(value: Any) -> str:
    """Canonical IP when the value is an IP, else it must be a DNS subdomain (FQDN slices)."""
    return canonical_ip(value) or str(check_dns_subdomain(value))


EndpointAddress = Annotated[str, BeforeValidator(_ip_or_name)]


class Endpoint(Model):
    addresses: list[EndpointAddress] = Field(min_length=1, max_length=100)
    conditions: EndpointConditions
    node_name: DNSSubdomain | None = None
    zone: NonEmptyStr | None = None
    hints: EndpointHints | None = None
    target_ref: ObjectRef | None = None


class EndpointPort(Model):
    name: str | None = Field(default=None, max_length=63)
    protocol: Protocol = "TCP"
    port: Port | None = Field(default=None, description="None: all ports")
    app_protocol: str | None = None


class EndpointSlice(Model):
    """A discovery.k8s.io/v1 EndpointSlice with resolved endpoint conditions."""

    kind: Literal["endpointslice"] = "endpointslice"
    address_type: AddressType
    service_name: DNSLabel | None = None
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=1000)
    ports: list[EndpointPort] = Field(default_factory=list, max_length=100)
    labels: Labels = Field(default_factory=dict)

    @model_validator(mode="after")
    def _addresses_match_type(self) -> EndpointSlice:
        """Every address must be of ``address_type`` (IPs are already canonical)."""
        for i, endpoint in enumerate(self.endpoints):
            for j, address in enumerate(endpoint.addresses):
                problem = _family_problem(address, self.address_type)
                if problem:
                    raise FieldIssue(problem, "endpoints", i, "addresses", j)
        return self


def _family_problem(address: str, address_type: str) -> str | None:
    """Addresses are already canonical IPs or DNS names; only the family is checked here."""
    if address_type == "IPv4":
        ok = IPV4_CANONICAL.fullmatch(address) is not None
    elif address_type == "IPv6":
        ok = ":" in address  # DNS names never contain ':'; canonical IPv4 never does
    else:
        ok = ":" not in address  # a DNS subdomain (dotted quads are subdomains too)
    return None if ok else f"{address!r} is not a valid {address_type} address"
