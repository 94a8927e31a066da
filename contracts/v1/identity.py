"""Identity and IPCache messages, published by the identity allocator on WEIR_IDENTITY.

An identity is a number standing for a security-relevant label set; policy is written against
identities, and the ipcache maps each pod IP to its identity. Labels travel as sorted
``source:key=value`` strings (Cilium's notation, e.g. ``k8s:app=web``,
``k8s:io.kubernetes.pod.namespace=default``) so the same set always serialises, hashes and compares
the same way; the validator insists on sorted, unique entries instead of silently reordering,
because a producer that emits an unsorted set is hashing it wrong too.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from contracts.subjects import identity_subject, ipcache_subject
from contracts.v1.envelope import Op
from contracts.v1.errors import FieldIssue
from contracts.v1.meta import (
    DNSLabel,
    DNSSubdomain,
    IPAddress,
    Model,
    UtcDatetime,
    check_label_key,
    check_label_value,
)

MAX_IDENTITY: Final = 65535
_SOURCE = re.compile(r"[a-z][a-z0-9-]{0,31}")


def _check_identity_label(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    source, colon, rest = value.partition(":")
    key, eq, val = rest.partition("=")
    if not colon or not eq or not _SOURCE.fullmatch(source):
        raise ValueError(f"{value!r} is not 'source:key=value'")
    check_label_key(key)
    check_label_value(val)
    return value


IdentityLabel = Annotated[
    str,
    BeforeValidator(_check_identity_label),
    WithJsonSchema({"type": "string", "pattern": "^[a-z][a-z0-9-]{0,31}:[^=]+=.*$"}),
]
IdentityId = Annotated[int, Field(ge=1, le=MAX_IDENTITY, strict=True)]


def identity_label(source: str, key: str, value: str) -> str:
    """Format one label the way identities carry it: ``source:key=value``."""
    return _check_identity_label(f"{source}:{key}={value}")


class Identity(Model):
    """A numeric security identity and its sorted ``source:key=value`` label set."""

    id: IdentityId
    labels: list[IdentityLabel] = Field(
        max_length=256, description="sorted, unique source:key=value strings"
    )
    op: Op = Op.UPSERT
    observed_at: UtcDatetime

    @model_validator(mode="after")
    def _sorted_unique(self) -> Identity:
        for i in range(1, len(self.labels)):
            if self.labels[i - 1] >= self.labels[i]:
                raise FieldIssue("labels must be sorted and unique", "labels", i)
        return self

    def subject(self) -> str:
        return identity_subject(self.id)

    def msg_id(self) -> str:
        """``identity/<id>/<op>/<sha256 of the labels, 16 hex>``: a re-used id is a new message."""
        digest = hashlib.sha256("\n".join(self.labels).encode()).hexdigest()[:16]
        return f"identity/{self.id}/{self.op.value}/{digest}"


class IPCacheEntry(Model):
    """IP address -> identity mapping; ``identity`` may be None only on DELETE."""

    ip: IPAddress
    identity: IdentityId | None = None
    op: Op = Op.UPSERT
    namespace: DNSLabel | None = None
    pod_name: DNSSubdomain | None = None
    node_name: DNSSubdomain | None = None
    host_ip: IPAddress | None = None
    resource_version: str | None = Field(default=None, description="of the pod it came from")
    observed_at: UtcDatetime

    @model_validator(mode="after")
    def _identity_for_upsert(self) -> IPCacheEntry:
        if self.op is Op.UPSERT and self.identity is None:
            raise FieldIssue("an UPSERT ipcache entry needs an identity", "identity")
        return self

    def subject(self) -> str:
        return ipcache_subject(self.ip)

    def msg_id(self) -> str:
        who = f"{self.namespace}/{self.pod_name}" if self.pod_name else "-"
        rv = self.resource_version or "-"
        return f"ipcache/{self.ip}/{self.identity or 0}/{who}/{rv}/{self.op.value}"
