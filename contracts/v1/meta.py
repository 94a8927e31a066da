"""Validated scalar types shared by every v1 model: addresses, ports, protocols, names, labels.

The contract is stricter than "whatever the API server stored" on purpose: the datapath writes
these values into eBPF maps and the identity allocator hashes labels, so every value is checked
once, here, and stored in canonical form (``ipaddress`` string form, sorted label maps). The
rules follow Kubernetes' own validation (apimachinery ``validation.go``), so a valid cluster
object always passes. Validators raise ``ValueError`` with a message that quotes the bad value;
the converter prefixes it with the object and the Kubernetes field path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
)

from contracts.v1.errors import FieldIssue

MAX_LABELS: Final = 64
MAX_LABELS_BYTES: Final = 8192

_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


class Model(BaseModel):
    """Base of every contract model: immutable, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Canonical dotted-quad (no leading zeros): the common case, checked without ipaddress.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_CANONICAL = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


@lru_cache(maxsize=65536)
def _parse_ip(value: str) -> str | None:
    """Canonical form of an IP string, or None (cached: IPs recur across messages)."""
    if IPV4_CANONICAL.fullmatch(value):
        return value
    if "%" in value:  # IPv6 zone ids are host-local: never valid in cluster objects
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def canonical_ip(value: Any) -> str | None:
    """Canonical string of an IP address, or None when ``value`` is not one."""
    return _parse_ip(value) if isinstance(value, str) else None


def _canonical_ip(value: Any) -> str:
    ip = _parse_ip(value) if type(value) is str else canonical_ip(value)
    if ip is None:
        raise ValueError(f"{_short(value)} is not a valid IP address")
    return ip


def _canonical_ipv4(value: Any) -> str:
    ip = canonical_ip(value)
    if ip is None or ":" in ip:
        raise ValueError(f"{_short(value)} is not a valid IPv4 address")
    return ip


def _canonical_ipv6(value: Any) -> str:
    ip = canonical_ip(value)
    if ip is None or ":" not in ip:
        raise ValueError(f"{_short(value)} is not a valid IPv6 address")
    return ip


def _canonical_cidr(value: Any) -> str:
    if isinstance(value, str) and "/" in value:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            pass
    raise ValueError(f"{_short(value)} is not a valid CIDR (address/prefix-length)")


def _matcher(pattern: re.Pattern[str], max_len: int, what: str) -> Any:
    @lru_cache(maxsize=65536)
    def valid(value: str) -> bool:
        return len(value) <= max_len and pattern.fullmatch(value) is not None

    def check(value: Any) -> str:
        if isinstance(value, str) and valid(value):
            return value
        if not isinstance(value, str):
            raise ValueError(f"{_short(value)} is not a string ({what})")
        if len(value) > max_len:
            raise ValueError(f"{_short(value)} is longer than {max_len} characters ({what})")
        if not pattern.fullmatch(value):
            raise ValueError(f"{_short(value)} is not a valid {what}")
        return value

    return check


check_dns_label = _matcher(_DNS_LABEL, 63, "DNS-1123 label")
check_dns_subdomain = _matcher(_DNS_SUBDOMAIN, 253, "DNS-1123 subdomain")


@lru_cache(maxsize=65536)
def _label_key_problem(key: str) -> str | None:
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or "/" in prefix):
        return "must be 'prefix/name' or 'name'"
    if sep and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "prefix must be a DNS-1123 subdomain of at most 253 characters"
    if len(name) > 63:
        return "name is longer than 63 characters"
    if not _LABEL_NAME.fullmatch(name):
        return (
            "name must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        )
    return None


@lru_cache(maxsize=65536)
def _label_value_problem(value: str) -> str | None:
    if len(value) > 63:
        return "is longer than 63 characters"
    if value and not _LABEL_NAME.fullmatch(value):
        return (
            "must be empty or alphanumerics, '-', '_' or '.', starting and ending with an"
            " alphanumeric"
        )
    return None


def check_label_key(key: Any) -> str:
    """Kubernetes qualified name: optional DNS-subdomain prefix ``/`` name (<= 63)."""
    if not isinstance(key, str):
        raise ValueError(f"label key {_short(key)} is not a string")
    problem = _label_key_problem(key)
    if problem:
        raise ValueError(f"label key {_short(key)}: {problem}")
    return key


def check_label_value(value: Any) -> str:
    """Kubernetes label value: empty, or <= 63 name characters."""
    if not isinstance(value, str):
        raise ValueError(f"label value {_short(value)} is not a string")
    problem = _label_value_problem(value)
    if problem:
        raise ValueError(f"label value {_short(value)} {problem}")
    return value


def _check_labels(value: Any) -> dict[str, str]:
    if type(value) is not dict and not isinstance(value, Mapping):
        raise ValueError(f"{_short(value)} is not a map of labels")
    if len(value) > MAX_LABELS:
        raise ValueError(f"{len(value)} labels exceed the limit of {MAX_LABELS} labels per object")
    size = 0
    for key, val in value.items():
        if not (  # the common case inline: two strings, both known good (cached)
            type(key) is str
            and type(val) is str
            and _label_key_problem(key) is None
            and _label_value_problem(val) is None
        ):
            try:
                check_label_key(key)
                check_label_value(val)
            except ValueError as exc:
                raise FieldIssue(str(exc), str(key)) from None
        size += len(key) + len(val)
    if size > MAX_LABELS_BYTES:
        raise ValueError(
            f"labels total {size} bytes, more than the limit of {MAX_LABELS_BYTES} bytes"
        )
    return dict(sorted(value.items()))


def _check_port_name(value: Any) -> str:
    """IANA service name, as used for named container and target ports (<= 15 chars)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{_short(value)} is not a valid port name")
    if len(value) > 15 or not _IANA_SVC_NAME.fullmatch(value) or "--" in value:
        raise ValueError(f"{_short(value)} is not a valid port name (IANA service name)")
    if not any(c.isalpha() for c in value):
        raise ValueError(f"{_short(value)} is not a valid port name (needs a letter)")
    return value


def _check_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{_short(value)} is not a valid port (1..65535)")
    return value


def _check_port_or_name(value: Any) -> int | str:
    """A numeric port (1..65535) or a named port; digit strings are rejected as ambiguous."""
    if isinstance(value, str):
        return _check_port_name(value)
    return _check_port(value)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{value.isoformat()} has no time zone (must be UTC)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc), Field(description="UTC timestamp")]
_IP_SCHEMA: dict[str, Any] = {
    "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
    "type": "string",
    "description": "IP address in canonical (ipaddress) form",
}
_LABEL_VALUE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "maxLength": 63,
    "pattern": f"^({_LABEL_NAME.pattern})?$",
}
_PORT_NAME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "maxLength": 15,
    "pattern": f"^{_IANA_SVC_NAME.pattern}$",
}
_PORT_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 65535}

IPAddress = Annotated[str, BeforeValidator(_canonical_ip), WithJsonSchema(_IP_SCHEMA)]
IPv4Address = Annotated[
    str, BeforeValidator(_canonical_ipv4), WithJsonSchema({"type": "string", "format": "ipv4"})
]
IPv6Address = Annotated[
    str, BeforeValidator(_canonical_ipv6), WithJsonSchema({"type": "string", "format": "ipv6"})
]
CIDR = Annotated[
    str,
    BeforeValidator(_canonical_cidr),
    WithJsonSchema(
        {"type": "string", "pattern": "^[0-9A-Fa-f.:]+/[0-9]{1,3}$", "description": "IP prefix"}
    ),
]
Port = Annotated[int, BeforeValidator(_check_port), WithJsonSchema(_PORT_SCHEMA)]
PortName = Annotated[str, BeforeValidator(_check_port_name), WithJsonSchema(_PORT_NAME_SCHEMA)]
PortOrName = Annotated[
    int | str,
    BeforeValidator(_check_port_or_name),
    WithJsonSchema({"anyOf": [_PORT_SCHEMA, _PORT_NAME_SCHEMA]}),
]
DNSLabel = Annotated[
    str,
    BeforeValidator(check_dns_label),
    WithJsonSchema({"type": "string", "maxLength": 63, "pattern": f"^{_DNS_LABEL.pattern}$"}),
]
DNSSubdomain = Annotated[
    str,
    BeforeValidator(check_dns_subdomain),
    WithJsonSchema({"type": "string", "maxLength": 253, "pattern": f"^{_DNS_SUBDOMAIN.pattern}$"}),
]
Labels = Annotated[
    dict[str, str],
    BeforeValidator(_check_labels),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_LABELS,
            "propertyNames": {"maxLength": 317},
            "additionalProperties": _LABEL_VALUE_SCHEMA,
            "description": f"Kubernetes labels, sorted by key; at most {MAX_LABELS} labels"
            f" and {MAX_LABELS_BYTES} bytes",
        }
    ),
]
StrictBool = Annotated[bool, Strict()]
Count = Annotated[int, Field(ge=0), Strict()]
Protocol = Literal["TCP", "UDP", "SCTP"]
NonEmptyStr = Annotated[str, Field(min_length=1), Strict()]


__all__ = [
    "CIDR",
    "MAX_LABELS",
    "MAX_LABELS_BYTES",
    "Count",
    "DNSLabel",
    "DNSSubdomain",
    "IPAddress",
    "IPv4Address",
    "IPv6Address",
    "Labels",
    "Model",
    "NonEmptyStr",
    "Port",
    "PortName",
    "PortOrName",
    "Protocol",
    "StrictBool",
    "UtcDatetime",
]
