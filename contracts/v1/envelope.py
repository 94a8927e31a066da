"""The K8sEvent envelope: one Kubernetes object change as published on ``weir.v1.k8s.*``.

The envelope carries identity and ordering (kind, namespace, name, uid, resourceVersion) next to
the normalised payload, so a consumer can key its state by subject and drop stale versions without
looking inside the payload. DELETE events are tombstones on the object's own subject; their
payload is optional (the last known state when the producer had it).

``msg_id()`` is the JetStream ``Nats-Msg-Id``: ``{kind}/{namespace}/{name}/{uid}/{rv}/{op}``
(namespace ``-`` when cluster-scoped). A relist or a restarted watcher republishes the same object
version with the same id, so JetStream's duplicate window drops it. Names, namespaces and kinds
cannot contain ``/``, so the id is unambiguous.

``encoded()`` serialises an event once for a producer that also needs the payload's own bytes
(the watcher hashes them to decide whether content changed): the payload is serialised once and
spliced into the envelope, byte for byte what ``model_dump_json()`` returns.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal, get_args

from pydantic import Field, model_validator
from pydantic_core import SchemaSerializer, core_schema
from pydantic_core.core_schema import TypedDictSchema

from contracts.subjects import CLUSTER_SCOPED_KINDS, k8s_subject
from contracts.v1.endpointslice import EndpointSlice
from contracts.v1.errors import FieldIssue
from contracts.v1.meta import (
    Model,
    NonEmptyStr,
    UtcDatetime,
    check_dns_label,
    check_dns_subdomain,
)
from contracts.v1.namespace import Namespace
from contracts.v1.networkpolicy import NetworkPolicy
from contracts.v1.node import Node
from contracts.v1.pod import Pod
from contracts.v1.service import Service

API_VERSION: Final = "weir.v1"
Kind = Literal["service", "endpointslice", "pod", "namespace", "node", "networkpolicy"]
Payload = Annotated[
    Service | EndpointSlice | Pod | Namespace | Node | NetworkPolicy,
    Field(discriminator="kind"),
]
_KINDS: Final = frozenset(get_args(Kind))
_PAYLOAD_TYPES: Final = (Service, EndpointSlice, Pod, Namespace, Node, NetworkPolicy)
# Kinds whose object names must be DNS-1123 labels; every other kind allows subdomains.
LABEL_NAMED_KINDS = frozenset({"service", "namespace"})


_NO_OBJECT: Final = {"object"}
# the fields checked() is given (every one but api_version, which keeps its default)
_GIVEN_FIELDS: Final = frozenset(
    {"kind", "op", "namespace", "name", "uid", "resource_version", "observed_at"}
    | {"producer", "object"}
)
_object_setattr = object.__setattr__


def _head_schema() -> TypedDictSchema:
    text, field = core_schema.str_schema(), core_schema.typed_dict_field
    return core_schema.typed_dict_schema(
        {
            "api_version": field(text),
            "kind": field(text),
            "op": field(text),  # a StrEnum: its str is its value
            "namespace": field(core_schema.nullable_schema(text)),
            "name": field(text),
            "uid": field(text),
            "resource_version": field(text),
            "observed_at": field(core_schema.datetime_schema()),
            "producer": field(text),
            "object": field(core_schema.any_schema(), serialization_exclude=True),
        }
    )


# An event's fields but the payload, serialised from its __dict__ as the model's serializer
# does; ~0.5 us less per event than the model's (which reads Op.value through Python).
_HEAD: Final = SchemaSerializer(_head_schema())


def _to_json(model: Model) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


class Op(StrEnum):
    UPSERT = "UPSERT"
    DELETE = "DELETE"


def check_object_name(kind: str, name: str) -> str:
    """Kubernetes name rules: DNS-1123 label for services and namespaces, else subdomain."""
    return str(check_dns_label(name) if kind in LABEL_NAMED_KINDS else check_dns_subdomain(name))


def envelope_problem(
    kind: str, op: Op, namespace: str | None, name: str, payload: Payload | None
) -> FieldIssue | None:
    """The envelope's cross-field rules (scope, names, payload presence and kind), or None."""
    if kind in CLUSTER_SCOPED_KINDS and namespace is not None:
        return FieldIssue(f"a {kind} is cluster-scoped and has no namespace", "namespace")
    if kind not in CLUSTER_SCOPED_KINDS:
        if namespace is None:
            return FieldIssue(f"a {kind} needs a namespace", "namespace")
        try:
            check_dns_label(namespace)
        except ValueError as exc:
            return FieldIssue(str(exc), "namespace")
    try:
        check_object_name(kind, name)
    except ValueError as exc:
        return FieldIssue(str(exc), "name")
    if op is Op.UPSERT and payload is None:
        return FieldIssue("an UPSERT event needs the object", "object")
    if payload is not None and payload.kind != kind:
        return FieldIssue(
            f"object kind {payload.kind!r} does not match event kind {kind!r}", "object"
        )
    return None


class K8sEvent(Model):
    """One Kubernetes object change (UPSERT or DELETE tombstone) on weir.v1.k8s.*."""

    api_version: Literal["weir.v1"] = "weir.v1"
    kind: Kind
    op: Op
    namespace: str | None = Field(description="None for cluster-scoped kinds")
    name: NonEmptyStr
    uid: NonEmptyStr
    resource_version: NonEmptyStr
    observed_at: UtcDatetime
    producer: NonEmptyStr
    object: Payload | None = Field(default=None, description="required for UPSERT")

    @model_validator(mode="after")
    def _consistent(self) -> K8sEvent:
        problem = envelope_problem(self.kind, self.op, self.namespace, self.name, self.object)
        if problem is not None:
            raise problem
        return self

    @classmethod
    def checked(
        cls,
        *,
        kind: str,
        op: Op,
        namespace: str | None,
        name: str,
        uid: str,
        resource_version: str,
        observed_at: datetime,
        producer: str,
        object: Payload | None,
    ) -> K8sEvent:
        """The event, validated like ``K8sEvent(...)`` but cheaper for the common case.

        When every field is already of its final type (a converter's output: known kind, Op,
        strings, an aware datetime, a validated payload), the cross-field rules are checked here
        and the model is built as ``model_construct`` would build it, without a second pydantic
        pass; anything else goes through full validation, so the errors (field and message) are
        exactly those of ``K8sEvent(...)``.
        """
        if (
            kind in _KINDS
            and type(op) is Op
            and (namespace is None or type(namespace) is str)
            and type(name) is str
            and type(uid) is str
            and type(resource_version) is str
            and type(producer) is str
            and name
            and uid
            and resource_version
            and producer
            and type(observed_at) is datetime
            and observed_at.utcoffset() is not None
            and (object is None or isinstance(object, _PAYLOAD_TYPES))
            and envelope_problem(kind, op, namespace, name, object) is None
        ):
            return cls.assembled(
                kind=kind,
                op=op,
                namespace=namespace,
                name=name,
                uid=uid,
                resource_version=resource_version,
                observed_at=observed_at.astimezone(UTC),
                producer=producer,
                object=object,
            )
        return cls(  # raises the ValidationError naming the field
            kind=kind,
            op=op,
            namespace=namespace,
            name=name,
            uid=uid,
            resource_version=resource_version,
            observed_at=observed_at,
            producer=producer,
            object=object,
        )

    @classmethod
    def assembled(
        cls,
        *,
        kind: str,
        op: Op,
        namespace: str | None,
        name: str,
        uid: str,
        resource_version: str,
        observed_at: datetime,
        producer: str,
        object: Payload | None,
    ) -> K8sEvent:
        """The event from fields already checked against every rule of the envelope (each of its
        final type, ``observed_at`` in UTC, the payload a validated model, and
        :func:`envelope_problem` None): built as ``model_construct`` would build it (fields in
        declaration order, the default api_version not counted as set), without its per-field
        walk. Only for callers that did those checks (:meth:`checked`, the fast converter)."""
        event = cls.__new__(cls)
        setattr_ = _object_setattr
        setattr_(
            event,
            "__dict__",
            {
                "api_version": API_VERSION,
                "kind": kind,
                "op": op,
                "namespace": namespace,
                "name": name,
                "uid": uid,
                "resource_version": resource_version,
                "observed_at": observed_at,
                "producer": producer,
                "object": object,
            },
        )
        setattr_(event, "__pydantic_fields_set__", set(_GIVEN_FIELDS))
        setattr_(event, "__pydantic_extra__", None)
        setattr_(event, "__pydantic_private__", None)
        return event

    def encoded(self) -> tuple[bytes, bytes]:
        """(payload JSON, event JSON), equal to the two ``model_dump_json()`` results."""
        fields = self.__dict__
        obj = fields["object"]
        body = b"null" if obj is None else _to_json(obj)
        if type(self) is K8sEvent and type(fields["op"]) is Op:
            head = _HEAD.to_json(fields)
        else:
            head = self.__pydantic_serializer__.to_json(self, exclude=_NO_OBJECT)
        return body, b"".join((head[:-1], b',"object":', body, b"}"))

    def subject(self) -> str:
        return k8s_subject(self.kind, self.namespace, self.name)

    def msg_id(self) -> str:
        """Deterministic JetStream dedup id (see the module docstring)."""
        ns = self.namespace or "-"
        return f"{self.kind}/{ns}/{self.name}/{self.uid}/{self.resource_version}/{self.op.value}"
