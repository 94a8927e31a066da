"""Admission-time validation: names, labels, and (optionally) Weir's deep contract checks.

Name and label rules are the real API's DNS-1123/DNS-1035 rules, so an object the stand-in accepts
would also be accepted by a real cluster. Deep field validation is delegated to
``contracts.v1.from_k8s`` (the same normaliser the watcher uses), looked up at call time so the
stand-in never carries its own copy of the contracts; ``accept_invalid`` turns it off so tests can
inject malformed objects that the watcher must then report.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from services.apiserver.resources import Resource
from services.apiserver.status import Cause

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = re.compile(rf"^{_LABEL}$")
DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

_LABEL_KINDS = frozenset({"Namespace"})
_DNS1035_KINDS = frozenset({"Service"})


def _name_rule(kind: str) -> tuple[re.Pattern[str], int, str]:
    if kind in _LABEL_KINDS:
        return (
            DNS1123_LABEL,
            63,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
            "'-', and must start and end with an alphanumeric character",
        )
    if kind in _DNS1035_KINDS:
        return (
            DNS1035_LABEL,
            63,
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
            "with an alphabetic character, and end with an alphanumeric character",
        )
    return (
        DNS1123_SUBDOMAIN,
        253,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
        "'-' or '.', and must start and end with an alphanumeric character",
    )


def validate_name(kind: str, name: object, field: str = "metadata.name") -> list[Cause]:
    if not name:
        return [
            Cause(field, "Required value: name or generateName is required", "FieldValueRequired")
        ]
    if not isinstance(name, str):
        return [Cause(field, f"Invalid value: {name!r}: must be a string")]
    pattern, limit, text = _name_rule(kind)
    if len(name) > limit:
        return [Cause(field, f'Invalid value: "{name}": must be no more than {limit} characters')]
    if not pattern.match(name):
        return [Cause(field, f'Invalid value: "{name}": {text}')]
    return []


def validate_labels(labels: object) -> list[Cause]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [Cause("metadata.labels", "Invalid value: must be a map of string to string")]
    causes: list[Cause] = []
    for key, value in labels.items():
        field = f"metadata.labels[{key}]" if isinstance(key, str) else "metadata.labels"
        prefix, _, name = str(key).rpartition("/")
        if (
            not isinstance(key, str)
            or not name
            or len(name) > 63
            or not LABEL_NAME.match(name)
            or (prefix and not DNS1123_SUBDOMAIN.match(prefix))
        ):
            causes.append(Cause("metadata.labels", f'Invalid value: "{key}": invalid label key'))
            continue
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            causes.append(Cause(field, f"Invalid value: {value!r}: invalid label value"))
    return causes


def validate_meta(res: Resource, obj: dict[str, Any]) -> list[Cause]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [Cause("metadata", "Required value", "FieldValueRequired")]
    causes = validate_name(res.kind, meta.get("name"))
    causes += validate_labels(meta.get("labels"))
    ann = meta.get("annotations")
    if ann is not None and (
        not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values())
    ):
        causes.append(
            Cause("metadata.annotations", "Invalid value: must be a map of string to string")
        )
    return causes


DeepValidator = Callable[[str, dict[str, Any]], list[Cause]]


def contracts_validator() -> DeepValidator:
    """Deep validation through ``contracts.v1.from_k8s`` if that module exists (else a no-op)."""

    def validate(kind: str, obj: dict[str, Any]) -> list[Cause]:
        try:
            mod = importlib.import_module("contracts.v1")
        except ImportError:
            return []
        from_k8s = getattr(mod, "from_k8s", None)
        error_type = getattr(mod, "ContractError", None)
        if from_k8s is None or error_type is None:
            return []
        try:
            from_k8s(kind, obj)
        except error_type as exc:
            field = str(getattr(exc, "field", "") or "")
            message = str(getattr(exc, "message", "") or exc)
            return [Cause(field, message)]
        return []

    return validate
