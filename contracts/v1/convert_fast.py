"""Raw Service / EndpointSlice JSON -> UPSERT :class:`K8sEvent`, fast for the common shapes.

Why: the watcher converts every listed and watched object, and on the 2-core benchmark machine
its per-object CPU is the end-to-end critical path. The contract path reshapes through
:class:`~contracts.v1.raw.QuickSrc` nodes and then runs a Python validator for every port, IP,
name and label map and a model validator per object (~27 us per Service, ~37 us per
EndpointSlice). This module reshapes plain dicts directly and validates them with one strict
pydantic-core schema that has no Python callbacks (types, literals, lengths, ranges, the
canonical-IPv4 / DNS / label patterns are all Rust-side) and that builds the contract's own model
classes (``Service``, ``ServicePort``, ``EndpointSlice``, ... and the ``K8sEvent`` around them,
whose metadata fields get the envelope's rules), with the fields the contract sets and the
defaults it applies. The few cross-field rules left (``Service._consistent``, named target ports)
are checked in plain Python on the result. An endpoint's conditions (three strict bools, always
all set) are one of eight shared frozen instances instead of a model built per endpoint.

Strictness is the contract's, never looser: the fast schema accepts a *subset* of what the
contract accepts (exact ``dict``/``list``/``str``/``int``/``bool``, canonical IPv4 only, no FQDN
or IPv6 slices, label keys of at most ``_LABEL_KEY_MAX`` characters so the byte limit holds
without counting). :func:`upsert_event` returns None for anything else, valid or not, and the
caller takes the contract path (:func:`contracts.v1.to_event`), which names the field of any
error. For input both accept, the event is equal to the contract's, field for field, with the
same fields set (tests in ``tests/contracts/test_convert_fast.py`` prove it on the watcher's
shapes and on Hypothesis' near misses).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError
from pydantic_core import CoreSchema, SchemaValidator
from pydantic_core import core_schema as cs

from contracts.v1.convert_core import TOPOLOGY_HINTS_ANNOTATION, TOPOLOGY_MODE_ANNOTATION
from contracts.v1.endpointslice import (
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointHints,
    EndpointPort,
    EndpointSlice,
    ObjectRef,
)
from contracts.v1.envelope import API_VERSION, K8sEvent, Op
from contracts.v1.meta import IPV4_CANONICAL, MAX_LABELS, MAX_LABELS_BYTES, Model
from contracts.v1.service import DEFAULT_AFFINITY_TIMEOUT, Service, ServicePort

# --- scalar schemas: each accepts a subset of the contract type and returns the same value ----

_DNS = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
# label keys: optional DNS-1123 subdomain prefix and "/", then a name (meta.check_label_key),
# at most _LABEL_KEY_MAX characters, so MAX_LABELS labels stay within MAX_LABELS_BYTES
_LABEL_VALUE_MAX = 63
_LABEL_KEY_MAX = MAX_LABELS_BYTES // MAX_LABELS - _LABEL_VALUE_MAX
assert _LABEL_KEY_MAX > 0 and MAX_LABELS * (_LABEL_KEY_MAX + _LABEL_VALUE_MAX) <= MAX_LABELS_BYTES

_STR = cs.str_schema(strict=True)
_NONEMPTY = cs.str_schema(min_length=1, strict=True)
_BOOL = cs.bool_schema(strict=True)
_IPV4 = cs.str_schema(pattern=f"^{IPV4_CANONICAL.pattern}$", strict=True)
_DNS_LABEL = cs.str_schema(max_length=63, pattern=f"^{_DNS}$", strict=True)
_DNS_SUBDOMAIN = cs.str_schema(max_length=253, pattern=rf"^{_DNS}(?:\.{_DNS})*$", strict=True)
_PORT = cs.int_schema(ge=1, le=65535, strict=True)
# a named target port: the IANA pattern and length; "--" and "needs a letter" checked in Python
_PORT_NAME = cs.str_schema(max_length=15, pattern=r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$", strict=True)
_PROTOCOL = cs.literal_schema(["TCP", "UDP", "SCTP"])
_POLICY = cs.literal_schema(["Cluster", "Local"])
_LABELS = cs.dict_schema(
    keys_schema=cs.str_schema(
        max_length=_LABEL_KEY_MAX, pattern=rf"^(?:{_DNS}(?:\.{_DNS})*/)?{_NAME}$", strict=True
    ),
    values_schema=cs.str_schema(
        max_length=_LABEL_VALUE_MAX, pattern=rf"^(?:{_NAME})?$", strict=True
    ),
    max_length=MAX_LABELS,
    strict=True,
)


def _list(items: CoreSchema, **limits: int) -> CoreSchema:
    return cs.list_schema(items, strict=True, **limits)  # type: ignore[arg-type]


def _field(schema: CoreSchema, default: Any = ..., factory: Callable[[], Any] | None = None) -> Any:
    """A model field: required, or with the contract's default (a value or a factory)."""
    if factory is not None:
        schema = cs.with_default_schema(schema, default_factory=factory)
    elif default is not ...:
        schema = cs.with_default_schema(schema, default=default)
    return cs.model_field(schema)


def _optional(schema: CoreSchema) -> Any:
    return _field(cs.nullable_schema(schema), default=None)


def _model(cls: type[Model], fields: dict[str, Any]) -> CoreSchema:
    """A schema building ``cls`` itself, as its own validator does (no model validators)."""
    assert list(fields) == list(cls.model_fields), cls  # declaration order: the same __dict__
    name = cls.__name__
    return cs.model_schema(
        cls,
        cs.model_fields_schema(fields, model_name=name, extra_behavior="forbid"),
        custom_init=False,
        root_model=False,
        config={"extra_fields_behavior": "forbid", "title": name},
    )


_SERVICE_PORT = _model(
    ServicePort,
    {
        "name": _optional(_DNS_LABEL),
        "protocol": _field(_PROTOCOL, default="TCP"),
        "port": _field(_PORT),
        "target_port": _field(cs.union_schema([_PORT, _PORT_NAME])),
        "node_port": _optional(_PORT),
        "app_protocol": _optional(_STR),
    },
)
_SERVICE = _model(
    Service,
    {
        "kind": _field(cs.literal_schema(["service"]), default="service"),
        "type": _field(
            cs.literal_schema(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]),
            default="ClusterIP",
        ),
        "headless": _field(_BOOL, default=False),
        # two cluster IPs must be of two families: never both canonical IPv4
        "cluster_ips": _field(_list(_IPV4, max_length=1), factory=list),
        "external_ips": _field(_list(_IPV4), factory=list),
        "load_balancer_ips": _field(_list(_IPV4), factory=list),
        "external_name": _optional(_DNS_SUBDOMAIN),
        "ports": _field(_list(_SERVICE_PORT), factory=list),
        "selector": _field(_LABELS, factory=dict),
        "session_affinity": _field(cs.literal_schema(["None", "ClientIP"]), default="None"),
        "session_affinity_timeout_seconds": _field(
            cs.int_schema(ge=1, le=86400, strict=True), default=DEFAULT_AFFINITY_TIMEOUT
        ),
        "external_traffic_policy": _field(_POLICY, default="Cluster"),
        "internal_traffic_policy": _field(_POLICY, default="Cluster"),
        "publish_not_ready_addresses": _field(_BOOL, default=False),
        "traffic_distribution": _optional(
            cs.literal_schema(["PreferClose", "PreferSameZone", "PreferSameNode"])
        ),
        "labels": _field(_LABELS, factory=dict),
    },
)
_ENDPOINT = _model(
    Endpoint,
    {
        "addresses": _field(_list(_IPV4, min_length=1, max_length=100)),
        "conditions": _field(
            _model(
                EndpointConditions,
                {"ready": _field(_BOOL), "serving": _field(_BOOL), "terminating": _field(_BOOL)},
            )
        ),
        "node_name": _optional(_DNS_SUBDOMAIN),
        "zone": _optional(_NONEMPTY),
        "hints": _optional(
            _model(
                EndpointHints,
                {
                    "for_zones": _field(_list(_NONEMPTY), factory=list),
                    "for_nodes": _field(_list(_NONEMPTY), factory=list),
                },
            )
        ),
        "target_ref": _optional(
            _model(
                ObjectRef,
                {
                    "kind": _field(_NONEMPTY),
                    "namespace": _optional(_DNS_LABEL),
                    "name": _field(_NONEMPTY),
                    "uid": _optional(_STR),
                },
            )
        ),
    },
)
_SLICE = _model(
    EndpointSlice,
    {
        "kind": _field(cs.literal_schema(["endpointslice"]), default="endpointslice"),
        "address_type": _field(cs.literal_schema(["IPv4"])),  # addresses are IPv4: same family
        "service_name": _optional(_DNS_LABEL),
        "endpoints": _field(_list(_ENDPOINT, max_length=1000), factory=list),
        "ports": _field(
            _list(
                _model(
                    EndpointPort,
                    {
                        "name": _optional(cs.str_schema(max_length=63, strict=True)),
                        "protocol": _field(_PROTOCOL, default="TCP"),
                        "port": _optional(_PORT),
                        "app_protocol": _optional(_STR),
                    },
                ),
                max_length=100,
            ),
            factory=list,
        ),
        "labels": _field(_LABELS, factory=dict),
    },
)


_MODELS: Final = (
    Service,
    ServicePort,
    EndpointSlice,
    Endpoint,
    EndpointConditions,
    EndpointHints,
    ObjectRef,
    EndpointPort,
    K8sEvent,
)


@contextmanager
def _own_validators() -> Iterator[None]:
    """pydantic-core builds a schema that names a *complete* model class with that class's own
    validator (its "prebuilt" validator: the contract's, Python callbacks and all) instead of
    the schema given; the classes read as incomplete while the fast schemas are built."""
    complete = [(cls, cls.__dict__["__pydantic_complete__"]) for cls in _MODELS]
    try:
        for cls, _ in complete:
            type.__setattr__(cls, "__pydantic_complete__", False)
        yield
    finally:
        for cls, flag in complete:
            type.__setattr__(cls, "__pydantic_complete__", flag)


def _event(kind: str, payload: CoreSchema, name: CoreSchema) -> SchemaValidator:
    """The UPSERT :class:`K8sEvent` of ``kind``: the envelope's rules for the fields read from
    metadata, the payload's schema, and the fields :func:`upsert_event` sets itself (kind, op,
    a UTC ``observed_at``) taken as given."""
    given = cs.any_schema()
    with _own_validators():
        return SchemaValidator(
            _model(
                K8sEvent,
                {
                    "api_version": _field(cs.literal_schema([API_VERSION]), default=API_VERSION),
                    "kind": _field(cs.literal_schema([kind])),
                    "op": _field(given),
                    "namespace": _field(_DNS_LABEL),
                    "name": _field(name),
                    "uid": _field(_NONEMPTY),
                    "resource_version": _field(_NONEMPTY),
                    "observed_at": _field(given),
                    "producer": _field(_NONEMPTY),
                    "object": _field(payload),
                },
            )
        )


_SERVICE_EVENT: Final = _event("service", _SERVICE, _DNS_LABEL)  # the name: a DNS-1123 label
_SLICE_EVENT: Final = _event("endpointslice", _SLICE, _DNS_SUBDOMAIN)
_HAS_LETTER = re.compile("[a-z]")
_UPSERT: Final = Op.UPSERT  # an enum member read through its class costs ~0.1 us per read


# --- reshaping plain dicts: convert_core.service / endpointslice over QuickSrc, same output ----


class _Unusual(Exception):
    """Input the fast reshape does not handle (a non-dict object, a non-list list...)."""


_EMPTY: Final[dict[str, Any]] = {}


def _obj(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return _EMPTY
    if type(value) is not dict:
        raise _Unusual
    return value


def _objs(parent: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = parent.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise _Unusual
    for item in value:
        if type(item) is not dict:
            raise _Unusual
    return value


def _labels(value: Any) -> Any:
    """The label map sorted as the contract stores it (``_check_labels``); anything else as is
    (the schema rejects it)."""
    if type(value) is dict and len(value) > 1:
        try:
            return dict(sorted(value.items()))
        except TypeError:  # keys of mixed types: not a label map
            raise _Unusual from None
    return value


def _take(out: dict[str, Any], key: str, src: dict[str, Any], raw_key: str) -> None:
    value = src.get(raw_key)
    if value is not None:
        out[key] = value


# spec fields taken as they are (when not null), by their model field
_SERVICE_SPEC: Final = {
    "type": "type",
    "externalIPs": "external_ips",
    "externalName": "external_name",
    "sessionAffinity": "session_affinity",
    "externalTrafficPolicy": "external_traffic_policy",
    "internalTrafficPolicy": "internal_traffic_policy",
    "publishNotReadyAddresses": "publish_not_ready_addresses",
    "trafficDistribution": "traffic_distribution",
}


def _service_input(obj: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    # one pass over the keys the spec has (a handful) instead of a lookup per key it may have
    out: dict[str, Any] = {}
    cluster_ip = ips = None
    ports: list[dict[str, Any]] = []
    spec = obj.get("spec")
    if spec is not None:
        if type(spec) is not dict:
            raise _Unusual
        rename = _SERVICE_SPEC.get
        for key, value in spec.items():
            if value is None:
                continue
            field = rename(key)
            if field is not None:
                out[field] = value
            elif key == "ports":
                ports = _service_ports(value)
            elif key == "selector":
                out["selector"] = _labels(value)
            elif key == "clusterIP":
                if type(value) is not str:
                    raise _Unusual
                cluster_ip = value
            elif key == "clusterIPs":
                if type(value) is not list:
                    raise _Unusual
                ips = value
            elif key == "sessionAffinityConfig":
                if type(value) is not dict:
                    raise _Unusual
                timeout = _obj(value, "clientIP").get("timeoutSeconds")
                if timeout is not None:
                    out["session_affinity_timeout_seconds"] = timeout
    if cluster_ip == "None" or (ips and ips[0] == "None"):
        out["headless"] = True
    elif ips:
        out["cluster_ips"] = ips
    elif cluster_ip:
        out["cluster_ips"] = [cluster_ip]
    status = obj.get("status")
    if status is not None:
        if type(status) is not dict:
            raise _Unusual
        lb = _obj(status, "loadBalancer")
        lb_ips = [item["ip"] for item in _objs(lb, "ingress") if item.get("ip") is not None]
        if lb_ips:
            out["load_balancer_ips"] = lb_ips
    out["ports"] = ports
    if "traffic_distribution" not in out:
        annotations = meta.get("annotations")
        if annotations:
            if type(annotations) is not dict:
                raise _Unusual
            for key in (TOPOLOGY_MODE_ANNOTATION, TOPOLOGY_HINTS_ANNOTATION):
                value = annotations.get(key)
                if isinstance(value, str) and value.lower() == "auto":
                    out["traffic_distribution"] = "PreferClose"
                    break
        elif annotations is not None and type(annotations) is not dict:
            raise _Unusual
    labels = meta.get("labels")
    if labels:
        if type(labels) is not dict:
            raise _Unusual
        out["labels"] = _labels(labels)
    elif labels is not None and type(labels) is not dict:
        raise _Unusual
    return out


def _service_ports(value: Any) -> list[dict[str, Any]]:
    if type(value) is not list:
        raise _Unusual
    ports = []
    for port in value:
        if type(port) is not dict:
            raise _Unusual
        item: dict[str, Any] = {}
        get = port.get
        if (name := get("name")) is not None:
            item["name"] = name
        if (protocol := get("protocol")) is not None:
            item["protocol"] = protocol
        number = get("port")
        if number is not None:
            item["port"] = number
        target = get("targetPort")
        if target is not None:
            item["target_port"] = target
        elif number is not None:
            item["target_port"] = number
        if (node_port := get("nodePort")) is not None and node_port != 0:
            item["node_port"] = node_port
        if (app_protocol := get("appProtocol")) is not None:
            item["app_protocol"] = app_protocol
        ports.append(item)
    return ports


def _slice_input(obj: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (value := obj.get("addressType")) is not None:
        out["address_type"] = value
    labels = _obj(meta, "labels")
    if (value := labels.get(SERVICE_NAME_LABEL)) is not None:
        out["service_name"] = value
    endpoints = []
    for endpoint in _objs(obj, "endpoints"):
        # one pass over the keys the endpoint has instead of a lookup per key it may have
        item: dict[str, Any] = {}
        conditions = _EMPTY
        for key, value in endpoint.items():
            if value is None:
                continue
            if key == "addresses":
                item["addresses"] = value
            elif key == "conditions":
                if type(value) is not dict:
                    raise _Unusual
                conditions = value
            elif key == "nodeName":
                item["node_name"] = value
            elif key == "zone":
                item["zone"] = value
            elif key == "hints":
                item["hints"] = _hints(value)
            elif key == "targetRef":
                if type(value) is not dict:
                    raise _Unusual
                item["target_ref"] = {k: value[k] for k in _REF_KEYS if value.get(k) is not None}
        ready = conditions.get("ready")
        ready = True if ready is None else ready
        serving = conditions.get("serving")
        serving = ready if serving is None else serving
        terminating = conditions.get("terminating")
        terminating = False if terminating is None else terminating
        if type(ready) is bool and type(serving) is bool and type(terminating) is bool:
            item["conditions"] = _CONDITIONS[ready, serving, terminating]
        else:  # the schema rejects it (StrictBool)
            item["conditions"] = {"ready": ready, "serving": serving, "terminating": terminating}
        endpoints.append(item)
    out["endpoints"] = endpoints
    ports = []
    for port in _objs(obj, "ports"):
        entry: dict[str, Any] = {}
        pget = port.get
        if (value := pget("name")) is not None and value != "":
            entry["name"] = value
        if (value := pget("protocol")) is not None:
            entry["protocol"] = value
        if (value := pget("port")) is not None:
            entry["port"] = value
        if (value := pget("appProtocol")) is not None:
            entry["app_protocol"] = value
        ports.append(entry)
    out["ports"] = ports
    if labels:
        out["labels"] = _labels(labels)
    return out


_REF_KEYS: Final = ("kind", "namespace", "name", "uid")
# Every endpoint's conditions are one of these eight: the converter sets all three fields, so
# each is exactly what the contract builds for that input (fields set included). The models
# are frozen, so one instance each is shared by every endpoint (the schema takes an instance of
# the model as it is), instead of a dict and a model built per endpoint.
_CONDITIONS: Final = {
    (ready, serving, terminating): EndpointConditions(
        ready=ready, serving=serving, terminating=terminating
    )
    for ready in (False, True)
    for serving in (False, True)
    for terminating in (False, True)
}


def _hints(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise _Unusual
    hint: dict[str, Any] = {}
    zones = [z.get("name") for z in _objs(value, "forZones")]
    if zones:
        hint["for_zones"] = zones
    nodes = [n.get("name") for n in _objs(value, "forNodes")]
    if nodes:
        hint["for_nodes"] = nodes
    return hint


def _service_consistent(svc: Service) -> bool:
    """``Service._consistent`` and the named-target-port rules left out of the schema."""
    if svc.headless and svc.cluster_ips:
        return False
    if svc.type == "ExternalName" and svc.external_name is None:
        return False
    ports = svc.ports
    if len(ports) > 1 and (
        len({(p.port, p.protocol) for p in ports}) != len(ports)
        or any(p.name is None for p in ports)
    ):
        return False
    for port in ports:
        target = port.target_port
        if type(target) is str and ("--" in target or _HAS_LETTER.search(target) is None):
            return False
    return True


def upsert_event(kind: str, obj: Any, producer: str, observed_at: datetime) -> K8sEvent | None:
    """``to_event(kind, Op.UPSERT, obj, producer, observed_at)`` when ``obj`` is a Service or
    EndpointSlice of a shape the fast schema verifies, else None (the caller then takes the
    contract path; None never means "invalid")."""
    if (
        type(obj) is not dict
        or type(observed_at) is not datetime
        or observed_at.utcoffset() is None
    ):
        return None
    meta = obj.get("metadata")
    if type(meta) is not dict:
        return None
    try:
        if kind == "service":
            validator, payload = _SERVICE_EVENT, _service_input(obj, meta)
        elif kind == "endpointslice":
            validator, payload = _SLICE_EVENT, _slice_input(obj, meta)
        else:
            return None
    except _Unusual:
        return None
    try:
        event: K8sEvent = validator.validate_python(
            {
                "kind": kind,
                "op": _UPSERT,
                "namespace": meta.get("namespace"),
                "name": meta.get("name"),
                "uid": meta.get("uid"),
                "resource_version": meta.get("resourceVersion"),
                "observed_at": observed_at.astimezone(UTC),
                "producer": producer,
                "object": payload,
            }
        )
    except ValidationError:
        return None
    if kind == "service" and not _service_consistent(event.object):  # type: ignore[arg-type]
        return None
    return event
