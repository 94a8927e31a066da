"""PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902), pure functions.

Strategic merge patch (what ``kubectl apply/label/annotate`` send) is applied as a merge patch:
for the metadata maps and scalar spec fields kubectl touches that gives the same result; list
merging by key is the one thing it does not do, and the stand-in documents that rather than
carrying the strategic-merge schema of every kind. ``$patch``/``$retainKeys`` directives are
dropped.
"""

from __future__ import annotations

import copy
from typing import Any

from services.apiserver.status import ApiError, bad_request

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON patch path {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise ApiError(422, "Invalid", f"JSON patch: path {path!r} does not exist")
    return cur


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid JSON patch operation: {op!r}")
        path = str(op["path"])
        parts = _pointer(path)
        if not parts:
            if op["op"] in ("add", "replace"):
                doc = copy.deepcopy(op.get("value"))
                continue
            raise bad_request(f"JSON patch: cannot {op['op']} the whole document")
        parent, last = _parent(doc, parts, path), parts[-1]
        kind = op["op"]
        if kind == "test":
            cur = parent.get(last) if isinstance(parent, dict) else None
            if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
                cur = parent[int(last)]
            if cur != op.get("value"):
                raise ApiError(422, "Invalid", f"JSON patch test failed at {path!r}")
        elif kind in ("add", "replace"):
            value = copy.deepcopy(op.get("value"))
            if isinstance(parent, dict):
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"JSON patch: path {path!r} does not exist")
                parent[last] = value
            elif isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last) if last.isdigit() else -1
                if idx < 0 or idx > len(parent) or (kind == "replace" and idx == len(parent)):
                    raise ApiError(422, "Invalid", f"JSON patch: bad index in {path!r}")
                if kind == "add":
                    parent.insert(idx, value)
                else:
                    parent[idx] = value
        elif kind == "remove":
            if isinstance(parent, dict) and last in parent:
                del parent[last]
            elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
                del parent[int(last)]
            else:
                raise ApiError(422, "Invalid", f"JSON patch: path {path!r} does not exist")
        else:
            raise bad_request(f"JSON patch operation {kind!r} is not supported")
    return doc


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> Any:
    ctype = content_type.split(";", maxsplit=1)[0].strip().lower()
    if ctype in (MERGE, STRATEGIC):
        return merge_patch(target, patch)
    if ctype == JSON_PATCH:
        return json_patch(target, patch)
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE}, {STRATEGIC}",
    )
