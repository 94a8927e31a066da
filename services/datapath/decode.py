"""Bus JSON -> :class:`~services.datapath.model.Change`, fast for the shapes the watcher publishes.

Why: validating a K8sEvent with the contract models runs a Python validator for every IP, port,
name and label (~100 us per EndpointSlice of 10 endpoints); at cold sync that is 2 s of 20,000
messages, and under load it was the worker's largest cost. The datapath only keeps slim views of
what it reads, so this module checks the watcher's shapes with one strict pydantic-core schema
that has no Python callbacks (the Rust validator does types, literals, lengths, ranges and the
canonical-IPv4 and DNS patterns) plus the few cross-field rules of the contract in plain Python,
and builds the views directly.

Strictness is the contract's, never looser: the fast schema accepts a *subset* of what the
contract accepts (strict types, every field present, IPv4 only, no ExternalName, numeric target
ports only). Anything it does not accept, valid or not, goes through ``K8sEvent`` validation:
valid input yields the same :class:`Change` either way (tests prove it on the watcher's shapes),
invalid input raises the contract's ``ValidationError`` naming the field.

Every check that can be a schema constraint is one, so the Python left per message is building
the views: each kind has its own envelope (the discriminator picks it, so a Service's name is a
DNS label and its object a Service by construction), timestamps must carry a zone
(``AwareDatetime``), and label maps are checked by patterns on keys and values. The label
patterns accept a subset of the contract's rule: keys of at most ``_LABEL_KEY_MAX`` characters,
which with at most ``MAX_LABELS`` labels also keeps every map within ``MAX_LABELS_BYTES``, so no
byte count is needed; a longer (valid or not) key takes the contract path.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from contracts.v1 import K8sEvent, Op
from contracts.v1.meta import IPV4_CANONICAL, MAX_LABELS, MAX_LABELS_BYTES
from services.datapath.model import Change, EndpointView, PortView, ServiceView, SliceView

_STRICT = ConfigDict(strict=True, extra="forbid")
_IPV4 = Annotated[str, Field(pattern=f"^{IPV4_CANONICAL.pattern}$")]
_LABEL = Annotated[str, Field(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
_SUBDOMAIN = Annotated[
    str,
    Field(
        max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ),
]
_PORT = Annotated[int, Field(ge=1, le=65535)]
# Label keys: an optional DNS-1123 subdomain prefix and "/", then a name of at most 63 name
# characters (contracts.v1.meta.check_label_key), within _LABEL_KEY_MAX characters in all
_LABEL_VALUE_MAX = 63
_LABEL_KEY_MAX = MAX_LABELS_BYTES // MAX_LABELS - _LABEL_VALUE_MAX
assert _LABEL_KEY_MAX > 0 and MAX_LABELS * (_LABEL_KEY_MAX + _LABEL_VALUE_MAX) <= MAX_LABELS_BYTES
_DNS = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = Annotated[
    str, Field(max_length=_LABEL_KEY_MAX, pattern=rf"^(?:{_DNS}(?:\.{_DNS})*/)?{_NAME}$")
]
_LABEL_VALUE = Annotated[str, Field(max_length=_LABEL_VALUE_MAX, pattern=rf"^(?:{_NAME})?$")]
_LABELS = Annotated[dict[_LABEL_KEY, _LABEL_VALUE], Field(max_length=MAX_LABELS)]
_NONEMPTY = Annotated[str, Field(min_length=1)]
_PROTOCOL = Literal["TCP", "UDP", "SCTP"]
_POLICY = Literal["Cluster", "Local"]


class _ServicePort(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    name: _LABEL | None
    protocol: _PROTOCOL
    port: _PORT
    target_port: _PORT  # named target ports take the contract path
    node_port: _PORT | None
    app_protocol: str | None


class _Service(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["service"]
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"]
    headless: bool
    cluster_ips: Annotated[list[_IPV4], Field(max_length=1)]
    external_ips: list[_IPV4]
    load_balancer_ips: list[_IPV4]
    external_name: None
    ports: list[_ServicePort]
    selector: _LABELS
    session_affinity: Literal["None", "ClientIP"]
    session_affinity_timeout_seconds: Annotated[int, Field(ge=1, le=86400)]
    external_traffic_policy: _POLICY
    internal_traffic_policy: _POLICY
    publish_not_ready_addresses: bool
    traffic_distribution: Literal["PreferClose", "PreferSameZone", "PreferSameNode"] | None
    labels: _LABELS


class _Conditions(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    ready: bool
    serving: bool
    terminating: bool


class _Hints(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    for_zones: list[_NONEMPTY]
    for_nodes: list[_NONEMPTY]


class _ObjectRef(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: _NONEMPTY
    namespace: _LABEL | None
    name: _NONEMPTY
    uid: str | None


class _Endpoint(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    addresses: Annotated[list[_IPV4], Field(min_length=1, max_length=100)]
    conditions: _Conditions
    node_name: _SUBDOMAIN | None
    zone: _NONEMPTY | None
    hints: _Hints | None
    target_ref: _ObjectRef | None


class _EndpointPort(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    name: Annotated[str, Field(max_length=63)] | None
    protocol: _PROTOCOL
    port: _PORT | None
    app_protocol: str | None


class _Slice(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["endpointslice"]
    address_type: Literal["IPv4"]
    service_name: _LABEL | None
    endpoints: Annotated[list[_Endpoint], Field(max_length=1000)]
    ports: Annotated[list[_EndpointPort], Field(max_length=100)]
    labels: _LABELS


class _ServiceEvent(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    api_version: Literal["weir.v1"]
    kind: Literal["service"]
    op: Literal["UPSERT", "DELETE"]
    namespace: _LABEL
    name: _LABEL  # a Service's name is a DNS-1123 label
    uid: _NONEMPTY
    resource_version: _NONEMPTY
    observed_at: AwareDatetime
    producer: _NONEMPTY
    object: _Service | None


class _SliceEvent(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    api_version: Literal["weir.v1"]
    kind: Literal["endpointslice"]
    op: Literal["UPSERT", "DELETE"]
    namespace: _LABEL
    name: _SUBDOMAIN
    uid: _NONEMPTY
    resource_version: _NONEMPTY
    observed_at: AwareDatetime
    producer: _NONEMPTY
    object: _Slice | None


_Event = Annotated[_ServiceEvent | _SliceEvent, Field(discriminator="kind")]
_FAST = TypeAdapter(_Event)
# the adapter's validator itself: TypeAdapter.validate_json is a Python-level wrapper that only
# forwards its defaults (~0.4 us a message)
_VALIDATE_JSON = _FAST.validator.validate_json
_OPS = {"UPSERT": Op.UPSERT, "DELETE": Op.DELETE}


def decode(data: bytes) -> Change:
    """The Change in one bus message. Raises the contract's ValidationError for bad input."""
    change = decode_fast(data)
    if change is None:
        change = Change.of(K8sEvent.model_validate_json(data))
    return change


def decode_fast(data: bytes) -> Change | None:
    """The Change when ``data`` is one of the shapes the fast schema verifies, else None (the
    caller then validates with the contract; None never means "invalid")."""
    try:
        ev: _ServiceEvent | _SliceEvent = _VALIDATE_JSON(data)
    except ValidationError:
        return None
    op, at = _OPS[ev["op"]], ev["observed_at"].timestamp()
    key = (ev["kind"], op, ev["namespace"], ev["name"], at)
    if ev["kind"] == "service":
        svc = ev["object"]
        if svc is None:
            return None if op is Op.UPSERT else tuple.__new__(Change, (*key, None, None))
        view = _service(svc)
        return None if view is None else tuple.__new__(Change, (*key, view, None))
    es = ev["object"]
    if es is None:
        return None if op is Op.UPSERT else tuple.__new__(Change, (*key, None, None))
    return tuple.__new__(Change, (*key, _slice(es), es["service_name"]))


def _service(svc: _Service) -> ServiceView | None:
    """The contract's cross-field rules (Service._consistent) for the fast shapes."""
    if svc["headless"] and svc["cluster_ips"]:
        return None
    ports = svc["ports"]
    if len(ports) > 1 and (
        len({(p["port"], p["protocol"]) for p in ports}) != len(ports)
        or any(p["name"] is None for p in ports)
    ):
        return None
    new = tuple.__new__
    return new(
        ServiceView,
        (
            svc["type"],
            svc["headless"],
            tuple(svc["cluster_ips"]),
            tuple(svc["external_ips"]),
            tuple(svc["load_balancer_ips"]),
            tuple(
                [
                    new(PortView, (p["name"], p["protocol"], p["port"], p["target_port"]))
                    for p in ports
                ]
            ),
            svc["session_affinity"],
            svc["session_affinity_timeout_seconds"],
            svc["external_traffic_policy"],
            svc["internal_traffic_policy"],
            svc["publish_not_ready_addresses"],
        ),
    )


def _slice(es: _Slice) -> SliceView:
    # once per endpoint (100,000 at a cold sync): the named tuple's own __new__ is a Python-level
    # call, tuple.__new__ is not; node names repeat on every slice, so one interned copy each
    new, intern_ = tuple.__new__, sys.intern
    endpoints = []
    for ep in es["endpoints"]:
        c = ep["conditions"]
        node = ep["node_name"]
        view = new(
            EndpointView,
            (
                ep["addresses"][0],
                c["ready"],
                c["serving"],
                c["terminating"],
                None if node is None else intern_(node),
            ),
        )
        endpoints.append(view)
    ports = tuple([(p["name"] or "", p["protocol"], p["port"]) for p in es["ports"]])
    return new(SliceView, ("IPv4", ports, tuple(endpoints)))
