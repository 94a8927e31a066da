"""Node payload: addresses and pod CIDRs, which the sandbox and datapath route by.

Address types follow core/v1 NodeAddress; the IP-typed ones are validated as IPs so a route is
never built from a hostname.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator

from contracts.v1.errors import FieldIssue
from contracts.v1.meta import CIDR, Labels, Model, NonEmptyStr

NodeAddressType = Literal["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"]


class NodeAddress(Model):
    type: NodeAddressType
    address: NonEmptyStr

    @model_validator(mode="after")
    def _ip_when_ip_typed(self) -> NodeAddress:
        if self.type.endswith("IP"):
            try:
                canonical = str(ipaddress.ip_address(self.address))
            except ValueError:
                raise FieldIssue(f"{self.address!r} is not a valid IP address", "address") from None
            if canonical != self.address:
                object.__setattr__(self, "address", canonical)
        return self


class Node(Model):
    """A core/v1 Node: addresses, pod CIDRs, labels."""

    kind: Literal["node"] = "node"
    addresses: list[NodeAddress] = Field(default_factory=list)
    pod_cidrs: list[CIDR] = Field(default_factory=list, max_length=2)
    labels: Labels = Field(default_factory=dict)

    def internal_ip(self) -> str | None:
        """First InternalIP, the address other nodes route pod traffic to."""
        return next((a.address for a in self.addresses if a.type == "InternalIP"), None)
