"""NetworkPolicy payload: the whole networking.k8s.io/v1 spec, validated and defaulted.

Policy resolution (in the identity/datapath services) must be a pure function of this model, so
everything Kubernetes leaves implicit is made explicit here: ``policy_types`` is defaulted the way
the API server does (Ingress always, Egress when egress rules exist), protocols default to TCP,
and the API server's own checks (endPort needs a numeric port and must be >= port, ipBlock
``except`` entries must be strictly inside ``cidr``, a peer is either selectors or an ipBlock)
are enforced so the resolver never sees a policy Kubernetes would have refused.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator

from contracts.v1.errors import FieldIssue
from contracts.v1.meta import CIDR, Labels, Model, Port, PortOrName, Protocol, check_label_key

PolicyType = Literal["Ingress", "Egress"]
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


class LabelSelectorRequirement(Model):
    key: str
    operator: Operator
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        try:
            check_label_key(self.key)
        except ValueError as exc:
            raise FieldIssue(str(exc), "key") from None
        if self.operator in ("In", "NotIn") and not self.values:
            raise FieldIssue(f"operator {self.operator} needs at least one value", "values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise FieldIssue(f"operator {self.operator} takes no values", "values")
        return self


class LabelSelector(Model):
    """Empty selector (no labels, no expressions) selects everything."""

    match_labels: Labels = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            ok = {
                "In": present and labels.get(req.key) in req.values,
                "NotIn": not present or labels.get(req.key) not in req.values,
                "Exists": present,
                "DoesNotExist": not present,
            }[req.operator]
            if not ok:
                return False
        return True


class IPBlock(Model):
    cidr: CIDR
    except_cidrs: list[CIDR] = Field(default_factory=list)

    @model_validator(mode="after")
    def _except_inside(self) -> IPBlock:
        outer = ipaddress.ip_network(self.cidr)
        for i, text in enumerate(self.except_cidrs):
            inner = ipaddress.ip_network(text)
            if (
                inner.version != outer.version
                or not inner.subnet_of(outer)  # type: ignore[arg-type]
                or inner.prefixlen <= outer.prefixlen
            ):
                raise FieldIssue(
                    f"{text!r} is not strictly inside cidr {self.cidr!r}", "except_cidrs", i
                )
        return self


class PolicyPeer(Model):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> PolicyPeer:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            raise FieldIssue("ipBlock cannot be combined with selectors", "ip_block")
        if self.ip_block is None and not selectors:
            raise FieldIssue(
                "a peer needs podSelector, namespaceSelector or ipBlock", "pod_selector"
            )
        return self


class PolicyPort(Model):
    protocol: Protocol = "TCP"
    port: PortOrName | None = Field(default=None, description="None: all ports")
    end_port: Port | None = None

    @model_validator(mode="after")
    def _range(self) -> PolicyPort:
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise FieldIssue("endPort needs a numeric port", "end_port")
            if self.end_port < self.port:
                raise FieldIssue(f"endPort {self.end_port} is below port {self.port}", "end_port")
        return self


class IngressRule(Model):
    """Empty ``ports`` means all ports; empty ``from_peers`` means all sources."""

    ports: list[PolicyPort] = Field(default_factory=list)
    from_peers: list[PolicyPeer] = Field(default_factory=list)


class EgressRule(Model):
    """Empty ``ports`` means all ports; empty ``to_peers`` means all destinations."""

    ports: list[PolicyPort] = Field(default_factory=list)
    to_peers: list[PolicyPeer] = Field(default_factory=list)


class NetworkPolicy(Model):
    """A networking.k8s.io/v1 NetworkPolicy spec with policyTypes defaulted."""

    kind: Literal["networkpolicy"] = "networkpolicy"
    pod_selector: LabelSelector = Field(default_factory=LabelSelector)
    policy_types: list[PolicyType] = Field(min_length=1, max_length=2)
    ingress: list[IngressRule] = Field(default_factory=list)
    egress: list[EgressRule] = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_types(self) -> NetworkPolicy:
        if len(set(self.policy_types)) != len(self.policy_types):
            raise FieldIssue("policyTypes has duplicates", "policy_types")
        return self
