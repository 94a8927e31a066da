"""Kubernetes ``Status`` bodies and the one exception type that carries them.

The store, validation and HTTP layers all fail by raising :class:`ApiError`; the HTTP layer turns it
into the exact body the real kube-apiserver sends (``kind: Status``, ``code``, ``reason``,
``details``), so clients such as kubernetes-asyncio and kubectl react to it as they would in a real
cluster (``ApiException.status``/``.reason``, kubectl's ``Error from server (NotFound)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Cause:
    field: str
    message: str
    reason: str = "FieldValueInvalid"


@dataclass
class ApiError(Exception):
    code: int
    reason: str
    message: str
    name: str = ""
    group: str = ""
    kind: str = ""
    causes: list[Cause] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def body(self) -> dict[str, Any]:
        return status_body(self)


def status_body(err: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": err.message,
        "reason": err.reason,
        "code": err.code,
    }
    details: dict[str, Any] = {}
    if err.name:
        details["name"] = err.name
    if err.group:
        details["group"] = err.group
    if err.kind:
        details["kind"] = err.kind
    if err.causes:
        details["causes"] = [
            {"reason": c.reason, "message": c.message, "field": c.field} for c in err.causes
        ]
    if details:
        body["details"] = details
    return body


def success_status(name: str, group: str, kind: str, uid: str = "") -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "group": group, "kind": kind}
    if uid:
        details["uid"] = uid
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    q = qualified(plural, group)
    return ApiError(404, "NotFound", f'{q} "{name}" not found', name, group, plural)


def already_exists(plural: str, group: str, name: str) -> ApiError:
    q = qualified(plural, group)
    return ApiError(409, "AlreadyExists", f'{q} "{name}" already exists', name, group, plural)


def conflict(plural: str, group: str, name: str) -> ApiError:
    q = qualified(plural, group)
    msg = (
        f'Operation cannot be fulfilled on {q} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return ApiError(409, "Conflict", msg, name, group, plural)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Gone", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    parts = "; ".join(f"{c.field}: {c.message}" for c in causes)
    q = f"{kind}.{group}" if group else kind
    msg = f'{q} "{name}" is invalid: {parts}'
    return ApiError(422, "Invalid", msg, name, group, kind, list(causes))
