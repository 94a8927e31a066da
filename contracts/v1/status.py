"""Operational messages: NodeStatus (WEIR_STATUS) and ValidationReport (WEIR_ERRORS).

NodeStatus is how a datapath node says what it has applied (the last stream sequence per
stream, map fill levels, loaded program versions), so ``weir status`` and the convergence
benchmark can compare nodes without touching their maps. ValidationReport is the bus form of a
:class:`ContractError`: an object the watcher refused, with the field that was wrong, so an
operator can see bad objects without reading logs.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, model_validator

from contracts.subjects import error_subject, status_subject
from contracts.v1.errors import ContractError, FieldIssue
from contracts.v1.meta import Count, DNSSubdomain, Model, NonEmptyStr, UtcDatetime


class MapFill(Model):
    """Fill level of one eBPF map."""

    entries: Count
    capacity: Count

    @model_validator(mode="after")
    def _fits(self) -> MapFill:
        if self.entries > self.capacity:
            raise FieldIssue(f"{self.entries} entries exceed capacity {self.capacity}", "entries")
        return self


class NodeStatus(Model):
    """What one datapath node has applied: stream positions, map fill, programs."""

    node: DNSSubdomain
    applied: dict[str, Count] = Field(
        default_factory=dict, description="stream name -> last applied stream sequence"
    )
    maps: dict[str, MapFill] = Field(default_factory=dict)
    program_versions: dict[str, str] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)
    time: UtcDatetime

    def subject(self) -> str:
        return status_subject(self.node)


class ValidationReport(Model):
    """An object that failed contract validation, naming the Kubernetes field."""

    kind: NonEmptyStr
    namespace: str | None = None
    name: str | None = None
    field: str = Field(description="dotted Kubernetes path, e.g. spec.ports[0].port")
    message: NonEmptyStr
    resource_version: str | None = None
    observed_at: UtcDatetime
    producer: str | None = None

    @classmethod
    def from_error(
        cls,
        error: ContractError,
        observed_at: datetime,
        resource_version: str | None = None,
        producer: str | None = None,
    ) -> ValidationReport:
        return cls(
            kind=error.kind,
            namespace=error.namespace,
            name=error.name,
            field=error.field,
            message=error.message,
            resource_version=resource_version,
            observed_at=observed_at,
            producer=producer,
        )

    def subject(self) -> str:
        return error_subject(self.kind, self.namespace, self.name or "-")

    def msg_id(self) -> str:
        ns = self.namespace or "-"
        rv = self.resource_version or "-"
        return f"error/{self.kind}/{ns}/{self.name or '-'}/{rv}/{self.field}"
