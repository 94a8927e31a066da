"""Label and field selectors: parsed once per request into a pure predicate over an object dict.

Label selectors support the full set-based grammar the real server accepts (``=``, ``==``, ``!=``,
``in``, ``notin``, ``key``, ``!key``); field selectors support equality on the fields the real
server indexes for each kind and reject others with 400, as kube-apiserver does ("field label not
supported"), so a client that works here does not rely on a filter a real cluster would refuse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from services.apiserver.status import ApiError, bad_request

Obj = dict[str, Any]
Predicate = Callable[[Obj], bool]

_COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
FIELDS_BY_PLURAL: dict[str, frozenset[str]] = {
    "pods": frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "services": frozenset({"spec.clusterIP", "spec.type"}),
    "namespaces": frozenset({"status.phase"}),
    "nodes": frozenset({"spec.unschedulable"}),
    "endpointslices": frozenset({"addressType"}),
}

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(in|notin)\s*\(([^)]*)\)\s*)?$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")


def _split_top(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (s.strip() for s in parts) if p]


def _labels(obj: Obj) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return labels if isinstance(labels, dict) else {}


def _label_eq(key: str, value: str, negate: bool) -> Predicate:
    return lambda o: (_labels(o).get(key) == value) != negate


def _label_in(key: str, values: frozenset[str], negate: bool) -> Predicate:
    return lambda o: (_labels(o).get(key) in values) != negate


def _label_exists(key: str, negate: bool) -> Predicate:
    return lambda o: (key in _labels(o)) != negate


def _field_eq(path: str, value: str, negate: bool) -> Predicate:
    return lambda o: (field_value(o, path) == value) != negate


def parse_label_selector(selector: str | None) -> Predicate:
    if not selector:
        return lambda _o: True
    checks: list[Predicate] = []
    for term in _split_top(selector):
        m = _EQ_RE.match(term)
        if m:
            key, op, value = m.groups()
            checks.append(_label_eq(key, value, op == "!="))
            continue
        m = _SET_RE.match(term)
        if not m:
            raise bad_request(f"unable to parse requirement: invalid label selector {term!r}")
        neg, key, op, values = m.groups()
        if op:
            if neg:
                raise bad_request(f"unable to parse requirement: invalid label selector {term!r}")
            vals = frozenset(v.strip() for v in values.split(",") if v.strip())
            checks.append(_label_in(key, vals, op == "notin"))
        else:
            checks.append(_label_exists(key, bool(neg)))
    return lambda o: all(c(o) for c in checks)


def field_value(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(selector: str | None, plural: str) -> Predicate:
    if not selector:
        return lambda _o: True
    allowed = _COMMON_FIELDS | FIELDS_BY_PLURAL.get(plural, frozenset())
    checks: list[Predicate] = []
    for term in _split_top(selector):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not m:
            raise bad_request(f"invalid field selector: {term!r}")
        path, op, value = m.groups()
        if path not in allowed:
            raise ApiError(400, "BadRequest", f'field label not supported: "{path}"')
        checks.append(_field_eq(path, value, op == "!="))
    return lambda o: all(c(o) for c in checks)
