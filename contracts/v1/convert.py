"""Pure conversion from raw Kubernetes JSON to v1 payloads and K8sEvents.

``from_k8s`` is the single entry point that turns untrusted API data into contract models: it
raises only :class:`ContractError` (naming the object and the Kubernetes field path), whatever
the input, so a producer can report the object and carry on. Reshaping lives in the
``convert_*`` modules and validation in the models; this module maps pydantic errors back to
Kubernetes paths (see :mod:`contracts.v1.raw`). The watcher converts the common Service and
EndpointSlice shapes through :mod:`contracts.v1.convert_fast` first, which builds the same event
as :func:`to_event` or declines (and then this module decides).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from contracts.subjects import CLUSTER_SCOPED_KINDS, K8S_KINDS
from contracts.v1 import convert_core, convert_policy
from contracts.v1.endpointslice import EndpointSlice
from contracts.v1.envelope import K8sEvent, Op, Payload, check_object_name
from contracts.v1.errors import ContractError, FieldIssue
from contracts.v1.meta import Model
from contracts.v1.namespace import Namespace
from contracts.v1.networkpolicy import NetworkPolicy
from contracts.v1.node import Node
from contracts.v1.pod import Pod
from contracts.v1.raw import Out, QuickSrc, RawError, Src, is_object, locate
from contracts.v1.service import Service

_KINDS: Final[dict[str, tuple[Callable[[Src], Out], type[Model]]]] = {
    "service": (convert_core.service, Service),
    "endpointslice": (convert_core.endpointslice, EndpointSlice),
    "pod": (convert_core.pod, Pod),
    "namespace": (convert_core.namespace, Namespace),
    "node": (convert_core.node, Node),
    "networkpolicy": (convert_policy.networkpolicy, NetworkPolicy),
}


def _ref(obj: object) -> tuple[str | None, str | None]:
    """Best-effort (namespace, name) for error messages, never raising."""
    meta = obj.get("metadata") if is_object(obj) else None
    if not is_object(meta):
        return None, None
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns if isinstance(ns, str) else None), (name if isinstance(name, str) else None)


def _describe(err: ErrorDetails) -> tuple[tuple[str | int, ...], str]:
    loc = tuple(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldIssue):
        return loc + cause.loc, cause.message
    if err["type"] in ("value_error", "assertion_error"):
        return loc, str(cause) if cause is not None else err["msg"]
    if err["type"] == "missing":
        return loc, "is required"
    text = repr(err.get("input"))
    text = text if len(text) <= 80 else text[:77] + "..."
    msg = err["msg"]
    return loc, f"{text}: {msg[0].lower()}{msg[1:]}"


def contract_error(
    kind: str, namespace: str | None, name: str | None, exc: ValidationError, out: Out | None
) -> ContractError:
    """The first pydantic error of ``exc`` as a ContractError (with a Kubernetes path if known)."""
    errors = exc.errors()
    loc, message = _describe(errors[0])
    if len(errors) > 1:
        more = len(errors) - 1
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    field = locate(out, loc) if out is not None else ".".join(str(p) for p in loc)
    return ContractError(kind, namespace, name, field, message)


def from_k8s(kind: str, obj: Mapping[str, Any]) -> Payload:
    """Convert one raw Kubernetes object (camelCase JSON) to its v1 payload."""
    namespace, name = _ref(obj)
    if kind not in _KINDS:
        raise ContractError(kind, namespace, name, "", f"unknown kind; expected one of {K8S_KINDS}")
    if not is_object(obj):
        raise ContractError(
            kind, None, None, "", f"expected a JSON object, got {type(obj).__name__}"
        )
    return _payload(kind, obj, namespace, name)


def _payload(kind: str, obj: Mapping[str, Any], namespace: str | None, name: str | None) -> Payload:
    """:func:`from_k8s` for a known kind and a JSON object; ``namespace``/``name`` for errors."""
    reshape, model = _KINDS[kind]
    try:  # the quick pass: no paths recorded (see contracts.v1.raw); valid objects end here
        # (the validator itself: model_validate() is it plus six keyword defaults to pass on)
        quick: Payload = model.__pydantic_validator__.validate_python(reshape(QuickSrc(obj)).data)
        return quick
    except (RawError, ValidationError):
        pass
    try:  # again, recording paths, to name the field
        out = reshape(Src(obj))
    except RawError as exc:
        raise ContractError(kind, namespace, name, exc.path, exc.message) from None
    try:
        payload: Payload = model.model_validate(out.data)  # type: ignore[assignment]
    except ValidationError as exc:
        raise contract_error(kind, namespace, name, exc, out) from None
    return payload


def _metadata(
    kind: str, obj: Mapping[str, Any], namespace: str | None, name: str | None
) -> tuple[str | None, str, str, str]:
    """(namespace, name, uid, resourceVersion) of the object; ``namespace``/``name`` for errors."""
    meta = obj.get("metadata")
    if type(meta) is dict:  # the common case, read directly: every field a non-empty string
        real_name, ns = meta.get("name"), meta.get("namespace")
        uid, rv = meta.get("uid"), meta.get("resourceVersion")
        cluster_scoped = kind in CLUSTER_SCOPED_KINDS
        if (
            type(real_name) is str
            and type(uid) is str
            and type(rv) is str
            and real_name
            and uid
            and rv
            and ((ns is None or type(ns) is str) if cluster_scoped else (type(ns) is str and ns))
        ):
            try:
                check_object_name(kind, real_name)
            except ValueError:
                pass  # reported below, with the field
            else:
                return (None if cluster_scoped else ns), real_name, uid, rv
    return _metadata_checked(kind, obj, namespace, name)


def _metadata_checked(
    kind: str, obj: Mapping[str, Any], namespace: str | None, name: str | None
) -> tuple[str | None, str, str, str]:
    """:func:`_metadata` for any input, raising the ContractError that names the field."""
    try:
        meta = Src(obj).obj("metadata")
        for key in ("name", "namespace", "uid", "resourceVersion"):
            meta.string(key)
    except RawError as exc:
        raise ContractError(kind, namespace, name, exc.path, exc.message) from None

    def need(key: str) -> str:
        value = meta.get(key)
        if not value:
            raise ContractError(kind, namespace, name, f"metadata.{key}", "is required")
        return str(value)

    real_name = need("name")
    try:
        check_object_name(kind, real_name)
    except ValueError as exc:
        raise ContractError(kind, namespace, name, "metadata.name", str(exc)) from None
    namespace = None if kind in CLUSTER_SCOPED_KINDS else need("namespace")
    return namespace, real_name, need("uid"), need("resourceVersion")


def to_event(
    kind: str,
    op: Op | str,
    obj: Mapping[str, Any],
    producer: str,
    observed_at: datetime,
) -> K8sEvent:
    """Build the K8sEvent for one raw object.

    A DELETE whose object no longer converts (it may never have been valid) is still a valid
    tombstone: its payload is left out instead of failing, so consumers can drop their state.
    """
    if not is_object(obj):
        raise ContractError(
            kind, None, None, "", f"expected a JSON object, got {type(obj).__name__}"
        )
    if kind not in _KINDS:
        raise ContractError(kind, *_ref(obj), "", f"unknown kind; expected one of {K8S_KINDS}")
    try:
        op = op if type(op) is Op else Op(op)
    except ValueError:
        raise ContractError(kind, *_ref(obj), "", f"unknown op {op!r}") from None
    ref_ns, ref_name = _ref(obj)
    namespace, name, uid, resource_version = _metadata(kind, obj, ref_ns, ref_name)
    payload: Payload | None
    try:
        payload = _payload(kind, obj, ref_ns, ref_name)
    except ContractError:
        if op is Op.UPSERT:
            raise
        payload = None
    try:
        return K8sEvent.checked(
            kind=kind,
            op=op,
            namespace=namespace,
            name=name,
            uid=uid,
            resource_version=resource_version,
            observed_at=observed_at,
            producer=producer,
            object=payload,
        )
    except ValidationError as exc:
        raise contract_error(kind, namespace, name, exc, None) from None
